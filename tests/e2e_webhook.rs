//! The admission webhook (issue #15) over real HTTPS with a certificate made in the test: a table
//! of `admission.k8s.io/v1` AdmissionReviews (bare names, `library/`, registries with ports,
//! digests, tags with digests, init and ephemeral containers, Deployments and CronJobs, excluded
//! namespaces, already-mirrored images, malformed JSON, a wrong API version). Every JSONPatch is
//! applied by PyPI's `jsonpatch` (not the project's code), the result checked image by image and
//! validated against the Kubernetes schemas of two versions (`kubernetes-validate --strict`); the
//! patched object reviewed again yields no patch. The metrics count reviews, rewrites and skips;
//! a replaced certificate is served to the next connection; a config without TLS is refused.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use support::env::{free_port, wait_http_ready_with, ChildGuard};
use support::faults::{metric, wait_for};
use support::pycheck::{apply_and_validate, python_modules_available};
use support::tls::{issue, make_certs, served_certificate, KeyKind};

const MIRROR: &str = "mirror.example.com:5000";
const K8S_HOST: &str = "k8s.mirror.example.com";

fn digest() -> String {
    format!("sha256:{}", "5e".repeat(32))
}

fn webhook_config(port: u16, cert: &Path, key: &Path) -> String {
    format!(
        r#"listen = "127.0.0.1:{port}"
tls_cert = "{}"
tls_key = "{}"
tls_reload_interval_secs = 1
mirror = "{MIRROR}"
exclude_namespaces = ["kube-system", "regmirror"]
[[registry]]
name = "docker.io"
[[registry]]
name = "ghcr.io"
[[registry]]
name = "127.0.0.1:5101"
prefix = "local"
[[registry]]
name = "registry.k8s.io"
host = "{K8S_HOST}"
"#,
        cert.display(),
        key.display()
    )
}

fn containers(images: &[&str]) -> Value {
    Value::Array(
        images
            .iter()
            .enumerate()
            .map(|(i, im)| json!({"name": format!("c{i}"), "image": im}))
            .collect(),
    )
}

fn pod(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "apps"}, "spec": spec})
}

fn template(spec: Value) -> Value {
    json!({"metadata": {"labels": {"app": "a"}}, "spec": spec})
}

fn deployment(spec: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "apps"},
           "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": template(spec)}})
}

fn cronjob(spec: Value) -> Value {
    let mut spec = spec;
    spec["restartPolicy"] = json!("OnFailure");
    json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "cj", "namespace": "apps"},
           "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template(spec)}}}})
}

/// An AdmissionReview v1 request for `object`.
fn review(uid: &str, namespace: &str, object: &Value, operation: &str, sub: Option<&str>) -> Value {
    let api = object["apiVersion"].as_str().unwrap();
    let (group, version) = api.split_once('/').unwrap_or(("", api));
    let kind = object["kind"].as_str().unwrap();
    let resource = format!("{}s", kind.to_ascii_lowercase());
    let mut req = json!({
        "uid": uid,
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "name": object["metadata"]["name"], "namespace": namespace, "operation": operation,
        "userInfo": {"username": "system:serviceaccount:apps:deployer"},
        "object": object, "oldObject": null, "dryRun": false,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
    });
    if let Some(s) = sub {
        req["subResource"] = json!(s);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
}

/// Every image of a workload object, in the order containers, initContainers, ephemeralContainers.
fn images(object: &Value) -> Vec<String> {
    let spec = [
        "/spec",
        "/spec/template/spec",
        "/spec/jobTemplate/spec/template/spec",
    ]
    .iter()
    .find_map(|p| object.pointer(p).filter(|s| s.get("containers").is_some()))
    .expect("pod spec");
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|f| spec[f].as_array().cloned().unwrap_or_default())
        .map(|c| c["image"].as_str().unwrap().to_string())
        .collect()
}

struct Case {
    name: &'static str,
    namespace: &'static str,
    object: Value,
    operation: &'static str,
    sub: Option<&'static str>,
    /// Images after the patch (containers, then init, then ephemeral).
    want: Vec<String>,
}

fn cases() -> Vec<Case> {
    let d = digest();
    let m = MIRROR;
    let case = |name, object: Value, want: Vec<String>| Case {
        name,
        namespace: "apps",
        object,
        operation: "CREATE",
        sub: None,
        want,
    };
    vec![
        case(
            "bare names and library/",
            pod(
                "p1",
                json!({"containers": containers(&["nginx", "library/redis:7", "bitnami/redis", "docker.io/library/alpine:3.19"])}),
            ),
            vec![
                format!("{m}/docker.io/library/nginx"),
                format!("{m}/docker.io/library/redis:7"),
                format!("{m}/docker.io/bitnami/redis"),
                format!("{m}/docker.io/library/alpine:3.19"),
            ],
        ),
        case(
            "registries with ports, host alias, not mirrored",
            pod(
                "p2",
                json!({"containers": containers(&["127.0.0.1:5101/team/app:2", "registry.k8s.io/pause:3.9", "quay.io/prometheus/node-exporter:v1"])}),
            ),
            vec![
                format!("{m}/local/team/app:2"),
                format!("{K8S_HOST}/pause:3.9"),
                "quay.io/prometheus/node-exporter:v1".into(),
            ],
        ),
        case(
            "digests and tags with digests",
            pod(
                "p3",
                json!({"containers": containers(&[&format!("busybox@{d}"), &format!("ghcr.io/org/tool:v1.2@{d}"), &format!("registry.k8s.io/coredns/coredns:v1.11.1@{d}")])}),
            ),
            vec![
                format!("{m}/docker.io/library/busybox@{d}"),
                format!("{m}/ghcr.io/org/tool:v1.2@{d}"),
                format!("{K8S_HOST}/coredns/coredns:v1.11.1@{d}"),
            ],
        ),
        case(
            "init containers",
            pod(
                "p4",
                json!({"containers": containers(&["nginx:1.25"]), "initContainers": [{"name": "init", "image": "ghcr.io/org/migrate:1"}]}),
            ),
            vec![
                format!("{m}/docker.io/library/nginx:1.25"),
                format!("{m}/ghcr.io/org/migrate:1"),
            ],
        ),
        Case {
            // The subresource may change only the ephemeral containers: the pod's own stay.
            name: "ephemeral containers (pods/ephemeralcontainers update)",
            namespace: "apps",
            object: pod(
                "p5",
                json!({"containers": containers(&["nginx:1.25"]),
                                     "ephemeralContainers": [{"name": "debug", "image": "busybox:1.36", "targetContainerName": "c0"}]}),
            ),
            operation: "UPDATE",
            sub: Some("ephemeralcontainers"),
            want: vec![
                "nginx:1.25".into(),
                format!("{m}/docker.io/library/busybox:1.36"),
            ],
        },
        case(
            "deployment template",
            deployment(
                json!({"containers": containers(&["nginx", "registry.k8s.io/pause"]), "initContainers": [{"name": "i", "image": "alpine"}]}),
            ),
            vec![
                format!("{m}/docker.io/library/nginx"),
                format!("{K8S_HOST}/pause"),
                format!("{m}/docker.io/library/alpine"),
            ],
        ),
        case(
            "cronjob template",
            cronjob(
                json!({"containers": containers(&["ghcr.io/org/report:2024", "curlimages/curl:8.5.0"])}),
            ),
            vec![
                format!("{m}/ghcr.io/org/report:2024"),
                format!("{m}/docker.io/curlimages/curl:8.5.0"),
            ],
        ),
        Case {
            name: "excluded namespace",
            namespace: "kube-system",
            object: pod("p6", json!({"containers": containers(&["nginx"])})),
            operation: "CREATE",
            sub: None,
            want: vec!["nginx".into()],
        },
        case(
            "already mirrored",
            pod(
                "p7",
                json!({"containers": containers(&[&format!("{m}/docker.io/library/nginx:1"), &format!("{K8S_HOST}/pause:3.9")])}),
            ),
            vec![
                format!("{m}/docker.io/library/nginx:1"),
                format!("{K8S_HOST}/pause:3.9"),
            ],
        ),
    ]
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Value {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /mutate");
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().await.expect("body")).expect("AdmissionReview JSON")
}

/// The decoded patch of a v1 answer (None when it has none), after checking the envelope.
fn patch_of(answer: &Value, uid: &str) -> Option<Value> {
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], uid);
    assert_eq!(answer["response"]["allowed"], true);
    let p = answer["response"]["patch"].as_str()?;
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(p)
        .expect("base64 patch");
    Some(serde_json::from_slice(&bytes).expect("patch JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_rewrites_pod_images_over_https() {
    require_tools!(&["openssl"]);
    if !python_modules_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let certs = make_certs(tmp.path());
    let port = free_port();
    let cfg = tmp.path().join("webhook.toml");
    std::fs::write(&cfg, webhook_config(port, &certs.cert, &certs.key)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(["webhook", "--config"])
        .arg(&cfg)
        .env("REGMIRROR_LOG", "info")
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start regmirror webhook");
    let mut guard = ChildGuard::new(child, "regmirror webhook");
    let base = format!("https://127.0.0.1:{port}");
    let client = certs.client();
    wait_http_ready_with(
        &client,
        &format!("{base}/healthz"),
        &[200],
        &mut guard,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    // Plain HTTP is not served.
    assert!(support::env::probe_client()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_err());

    let url = format!("{base}/mutate");
    let table = cases();
    let mut patched = Vec::new();
    for (i, c) in table.iter().enumerate() {
        let uid = format!("uid-{i}");
        let answer = post(
            &client,
            &url,
            serde_json::to_vec(&review(&uid, c.namespace, &c.object, c.operation, c.sub)).unwrap(),
        )
        .await;
        let patch = patch_of(&answer, &uid);
        // Patches name `/spec/...` of the object; every op replaces one image.
        if let Some(ops) = patch.as_ref().and_then(Value::as_array) {
            for op in ops {
                assert_eq!(op["op"], "replace", "{}: {op}", c.name);
                assert!(
                    op["path"].as_str().unwrap().ends_with("/image"),
                    "{}: {op}",
                    c.name
                );
            }
        }
        patched.push((c.object.clone(), patch));
    }
    let results = apply_and_validate(&patched);
    let mut rewrites = 0;
    for ((c, (after, errors)), (_, patch)) in table.iter().zip(&results).zip(&patched) {
        assert!(
            errors.is_empty(),
            "{}: schema errors after the patch: {errors:?}",
            c.name
        );
        assert_eq!(images(after), c.want, "{}", c.name);
        assert_eq!(
            patch.is_none(),
            images(&c.object) == c.want,
            "{}: a patch exactly when something changes",
            c.name
        );
        rewrites += images(&c.object)
            .iter()
            .zip(&c.want)
            .filter(|(a, b)| a != b)
            .count();
        // Everything but the images is untouched.
        let mut expected = c.object.clone();
        let mut i = 0;
        for p in [
            "/spec",
            "/spec/template/spec",
            "/spec/jobTemplate/spec/template/spec",
        ] {
            if let Some(spec) = expected
                .pointer_mut(p)
                .filter(|s| s.get("containers").is_some())
            {
                for f in ["containers", "initContainers", "ephemeralContainers"] {
                    for ctr in spec
                        .get_mut(f)
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        ctr["image"] = json!(c.want[i]);
                        i += 1;
                    }
                }
            }
        }
        assert_eq!(after, &expected, "{}", c.name);
        // Idempotent: the patched object reviewed again gets no patch.
        let again = post(
            &client,
            &url,
            serde_json::to_vec(&review("again", c.namespace, after, c.operation, c.sub)).unwrap(),
        )
        .await;
        assert_eq!(patch_of(&again, "again"), None, "{}: second review", c.name);
    }

    // Unreadable reviews are allowed, unchanged, with a warning saying what to fix.
    let bad: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "malformed JSON",
            b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": ".to_vec(),
            "admission.k8s.io/v1",
            "not JSON",
        ),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "admission.k8s.io/v1",
            "request.uid",
        ),
        (
            "wrong API version",
            serde_json::to_vec(&{
                let mut r = review("old", "apps", &table[0].object, "CREATE", None);
                r["apiVersion"] = json!("admission.k8s.io/v1beta1");
                r
            })
            .unwrap(),
            "admission.k8s.io/v1beta1",
            "admissionReviewVersions",
        ),
    ];
    for (name, body, version, says) in &bad {
        let answer = post(&client, &url, body.clone()).await;
        assert_eq!(answer["apiVersion"], *version, "{name}: {answer}");
        assert_eq!(answer["response"]["allowed"], true, "{name}");
        assert!(answer["response"].get("patch").is_none(), "{name}");
        let warning = answer["response"]["warnings"][0]
            .as_str()
            .unwrap_or_default();
        assert!(warning.contains(says), "{name}: {warning}");
    }
    let wrong = post(&client, &url, bad[2].1.clone()).await;
    assert_eq!(wrong["response"]["uid"], "old");

    // Counters: every review, each rewrite, skips by reason.
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count =
        |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels).unwrap_or(0.0) as usize;
    let with_patch = patched.iter().filter(|(_, p)| p.is_some()).count();
    assert_eq!(
        count("regmirror_webhook_reviews_total", &[("result", "patched")]),
        with_patch,
        "{text}"
    );
    assert_eq!(
        count(
            "regmirror_webhook_reviews_total",
            &[("result", "unchanged")]
        ),
        2 * table.len() - with_patch
    );
    assert_eq!(
        count(
            "regmirror_webhook_reviews_total",
            &[("result", "malformed")]
        ),
        2
    );
    assert_eq!(
        count(
            "regmirror_webhook_reviews_total",
            &[("result", "wrong_version")]
        ),
        2
    );
    let total_rewrites: usize = ["docker.io", "ghcr.io", "127.0.0.1:5101", "registry.k8s.io"]
        .iter()
        .map(|r| count("regmirror_webhook_rewrites_total", &[("registry", r)]))
        .sum();
    assert_eq!(total_rewrites, rewrites);
    assert_eq!(
        count(
            "regmirror_webhook_skips_total",
            &[("reason", "registry_not_mirrored")]
        ),
        2
    );
    assert_eq!(
        count(
            "regmirror_webhook_skips_total",
            &[("reason", "excluded_namespace")]
        ),
        2
    );
    assert!(
        count(
            "regmirror_webhook_skips_total",
            &[("reason", "already_mirrored")]
        ) >= rewrites
    );

    // cert-manager rotates the certificate: the next connection gets the new one.
    let before = served_certificate(&format!("127.0.0.1:{port}"), "127.0.0.1");
    let (cert2, key2) = issue(
        tmp.path(),
        Some(&certs),
        "rotated",
        "rotated",
        "IP:127.0.0.1",
        2,
        KeyKind::Rsa,
    );
    std::fs::copy(&key2, &certs.key).unwrap();
    std::fs::copy(&cert2, &certs.cert).unwrap();
    let after = wait_for("the rotated certificate", Duration::from_secs(15), || {
        let now = served_certificate(&format!("127.0.0.1:{port}"), "127.0.0.1");
        (now != before && now.contains("rotated")).then_some(now)
    })
    .await;
    assert!(after.contains("rotated"), "{after}");
    let answer = post(
        &client,
        &url,
        serde_json::to_vec(&review(
            "after-rotation",
            "apps",
            &table[0].object,
            "CREATE",
            None,
        ))
        .unwrap(),
    )
    .await;
    assert!(patch_of(&answer, "after-rotation").is_some());
}

#[test]
fn webhook_without_tls_or_registries_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("mirror = \"m:5000\"\n[[registry]]\nname = \"docker.io\"\n", "tls_cert"),
        ("tls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\nmirror = \"m:5000\"\n", "registry"),
        ("tls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\nmirror = \"m:5000\"\n[[registry]]\nname = \"docker.io\"\n", "/nonexistent/c.pem"),
    ] {
        let cfg = tmp.path().join("w.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .args(["webhook", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
    }
}
