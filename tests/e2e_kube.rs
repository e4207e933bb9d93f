//! The Kubernetes packaging (issue #15): every kustomization under deploy/kubernetes renders with
//! `kubectl kustomize`, validates (`kubernetes-validate --strict`) against two Kubernetes
//! versions, and has the shape an operator expects (non-root, read-only root filesystem, no
//! capabilities, probes, the PVC, anti-affinity and HPA, the webhook's failurePolicy and
//! selectors); every ConfigMap's TOML passes `regmirror config check` (the webhook's
//! `regmirror webhook --check`). The node-configuration DaemonSet's own commands, run here into
//! temporary directories, write the files containerd (`ctr --hosts-dir`) and skopeo (CRI-O's
//! registries.conf.d format) then pull through a real mirror with; its `--hold` container removes
//! them on SIGTERM.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::clients::{expect_success, read_dir_layout, skopeo_copy, Containerd};
use support::mirror::{MirrorConfig, Regmirror, UpstreamEntry};
use support::pycheck::{python_modules_available, validate_documents};
use support::registry::Registry;
use support::seed::seed;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const KUSTOMIZATIONS: &[&str] = &[
    "overlays/single",
    "overlays/ha",
    "overlays/node-local",
    "overlays/outbound-proxy",
    "webhook",
    "node-config",
];
/// Kinds of cert-manager (a CRD, not in the Kubernetes schemas): checked by shape only.
const CRD_KINDS: &[&str] = &[
    "cert-manager.io/v1/Issuer",
    "cert-manager.io/v1/Certificate",
];

/// Whether kubectl's kustomize is v4 or later (the manifests use `labels` and `patches`); an older
/// one counts as a missing tool.
fn kustomize_recent() -> bool {
    let out = Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let major = text
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version: v"))
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    if major.is_some_and(|m| m >= 4) {
        return true;
    }
    let why = format!(
        "kubectl's kustomize is older than v4 or unknown ({:?})",
        text.trim()
    );
    if support::env::e2e_required() {
        panic!("REGMIRROR_E2E=1 but {why}: install kubectl 1.21 or later");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// `kubectl kustomize deploy/kubernetes/DIR`, as JSON documents (PyYAML, a kubernetes-validate
/// dependency, reads the YAML).
fn render(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/deploy/kubernetes/{dir}")])
        .output()
        .expect("run kubectl kustomize");
    let yaml = expect_success(&out, &format!("kubectl kustomize {dir}"));
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut py.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind_of(d: &Value) -> String {
    format!(
        "{}/{}",
        d["apiVersion"].as_str().unwrap_or(""),
        d["kind"].as_str().unwrap_or("")
    )
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The pod spec of a workload.
fn pod_spec(d: &Value) -> &Value {
    &d["spec"]["template"]["spec"]
}

fn all_containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|f| spec[f].as_array().into_iter().flatten())
        .collect()
}

/// Hardened containers: read-only root, no capabilities, no privilege escalation, resources set.
fn assert_hardened(what: &str, spec: &Value, non_root: bool) {
    for c in all_containers(spec) {
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}/{}", c["name"]);
        assert_eq!(
            sc["allowPrivilegeEscalation"], false,
            "{what}/{}",
            c["name"]
        );
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{what}/{}",
            c["name"]
        );
        assert!(
            c["resources"]["requests"]["memory"].is_string(),
            "{what}/{} requests",
            c["name"]
        );
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{what}/{} limits",
            c["name"]
        );
    }
    if non_root {
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{what}");
        assert_eq!(spec["securityContext"]["runAsUser"], 10001, "{what}");
    }
}

fn probes(c: &Value) -> (String, String) {
    let p = |k: &str| {
        c[k]["httpGet"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    (p("livenessProbe"), p("readinessProbe"))
}

#[test]
fn every_kustomization_renders_validates_and_its_config_checks() {
    require_tools!(&["kubectl"]);
    if !kustomize_recent() || !python_modules_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for dir in KUSTOMIZATIONS {
        let docs = render(dir);
        assert!(!docs.is_empty(), "{dir} renders nothing");
        let (crds, core): (Vec<Value>, Vec<Value>) = docs
            .iter()
            .cloned()
            .partition(|d| CRD_KINDS.contains(&kind_of(d).as_str()));
        let errors = validate_documents(&core);
        assert!(
            errors.is_empty(),
            "{dir}: schema errors:\n{}",
            errors.join("\n")
        );
        for c in &crds {
            assert!(
                c["metadata"]["name"].is_string() && c["spec"].is_object(),
                "{dir}: {c}"
            );
        }
        for cm in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
            for (file, text) in cm["data"].as_object().unwrap() {
                let path = tmp.path().join(file);
                std::fs::write(&path, text.as_str().unwrap()).unwrap();
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_regmirror"));
                if file == "webhook.toml" {
                    cmd.args(["webhook", "--check", "--config"]);
                } else {
                    cmd.args(["config", "check", "--config"]);
                    if *dir == "overlays/ha" {
                        // As the ha Deployment sets it per pod.
                        cmd.env("REGMIRROR_REPLICA_URL", "http://10.1.2.3:5000");
                    }
                }
                let out = cmd.arg(&path).output().unwrap();
                expect_success(&out, &format!("config check of {dir} ConfigMap {file}"));
            }
        }
        check_shape(dir, &docs);
    }
}

fn check_shape(dir: &str, docs: &[Value]) {
    match dir {
        "overlays/single" | "overlays/outbound-proxy" | "overlays/ha" => {
            let d = find(docs, "Deployment", "regmirror");
            let spec = pod_spec(d);
            assert_hardened(dir, spec, true);
            assert_eq!(
                probes(&spec["containers"][0]),
                ("/healthz".into(), "/readyz".into()),
                "{dir}"
            );
            find(docs, "Service", "regmirror");
            find(docs, "PodDisruptionBudget", "regmirror");
            find(docs, "NetworkPolicy", "regmirror");
            let data = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "data")
                .unwrap();
            if dir == "overlays/ha" {
                assert!(d["spec"]["replicas"].as_u64().unwrap() >= 2);
                assert!(spec["affinity"]["podAntiAffinity"].is_object());
                let hpa = find(docs, "HorizontalPodAutoscaler", "regmirror");
                assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
                assert!(data["emptyDir"].is_object());
                let env = spec["containers"][0]["env"].as_array().unwrap();
                assert!(env.iter().any(|e| e["name"] == "REGMIRROR_REPLICA_URL"
                    && e["value"] == "http://$(POD_IP):5000"));
            } else {
                assert_eq!(d["spec"]["replicas"], 1);
                assert_eq!(
                    data["persistentVolumeClaim"]["claimName"], "regmirror-data",
                    "{dir}: {data}"
                );
                assert!(data.get("emptyDir").is_none(), "{dir}: {data}");
                find(docs, "PersistentVolumeClaim", "regmirror-data");
            }
            if dir == "overlays/outbound-proxy" {
                let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
                assert!(cm["data"]["config.toml"]
                    .as_str()
                    .unwrap()
                    .contains("proxy = "));
            }
        }
        "overlays/node-local" => {
            let ds = find(docs, "DaemonSet", "regmirror-node");
            assert_eq!(pod_spec(ds)["hostNetwork"], true);
            assert_hardened(dir, pod_spec(ds), false);
            find(docs, "DaemonSet", "regmirror-node-config");
            assert!(
                !docs.iter().any(|d| d["kind"] == "Deployment"),
                "node-local has no Deployment"
            );
        }
        "node-config" => {
            let ds = find(docs, "DaemonSet", "regmirror-node-config");
            assert_hardened(dir, pod_spec(ds), false);
        }
        "webhook" => {
            let d = find(docs, "Deployment", "regmirror-webhook");
            assert_hardened(dir, pod_spec(d), true);
            let mwc = find(docs, "MutatingWebhookConfiguration", "regmirror");
            let w = &mwc["webhooks"][0];
            assert_eq!(w["failurePolicy"], "Ignore");
            assert_eq!(w["sideEffects"], "None");
            assert_eq!(w["reinvocationPolicy"], "IfNeeded");
            assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
            assert_eq!(
                w["clientConfig"]["service"]["namespace"],
                d["metadata"]["namespace"]
            );
            assert!(mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].is_string());
            // The objectSelector excludes the webhook's own pods: their label is the one it names.
            let sel = &w["objectSelector"]["matchExpressions"][0];
            assert_eq!(sel["operator"], "DoesNotExist");
            let key = sel["key"].as_str().unwrap();
            assert!(
                d["spec"]["template"]["metadata"]["labels"]
                    .get(key)
                    .is_some(),
                "webhook pods carry {key}"
            );
            let resources: Vec<&str> = w["rules"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| {
                    r["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap())
                })
                .collect();
            for r in [
                "pods",
                "pods/ephemeralcontainers",
                "deployments",
                "statefulsets",
                "daemonsets",
                "jobs",
                "cronjobs",
            ] {
                assert!(resources.contains(&r), "rules cover {r}");
            }
        }
        _ => unreachable!(),
    }
}

/// The args of a container of the node-config DaemonSet, with the node paths and the mirror
/// replaced by the test's.
fn node_config_args(
    docs: &[Value],
    field: &str,
    name: &str,
    target: &Path,
    mirror: &str,
) -> Vec<String> {
    let ds = find(docs, "DaemonSet", "regmirror-node-config");
    let c = pod_spec(ds)[field]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"));
    let mount = c["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(
        args.iter().any(|a| a == mount),
        "{name} writes into its mount {mount}: {args:?}"
    );
    args.into_iter()
        .map(|a| {
            if a == mount {
                target.display().to_string()
            } else if a == "http://127.0.0.1:5000" {
                mirror.to_string()
            } else {
                a
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_config_files_are_what_containerd_and_crio_pull_through() {
    require_tools!(&["kubectl", "docker-registry", "containerd", "ctr", "skopeo"]);
    if !kustomize_recent() {
        return;
    }
    let docs = render("overlays/node-local");
    let hub = Registry::plain().await;
    let seeded = seed(&hub, "library/busybox", "library/single", "node config").await;
    let mirror = Regmirror::start(MirrorConfig::new(vec![UpstreamEntry::new(
        "docker.io",
        &hub.url(),
    )]))
    .await;
    let mirror_url = format!("http://{}", mirror.addr());
    let tmp = tempfile::tempdir().unwrap();

    // The init containers' commands, as the DaemonSet runs them.
    let certs_d = tmp.path().join("etc/containerd/certs.d");
    let conf_d = tmp.path().join("etc/containers/registries.conf.d");
    for (name, dir) in [("containerd", &certs_d), ("crio", &conf_d)] {
        let args = node_config_args(&docs, "initContainers", name, dir, &mirror_url);
        let out = Command::new(env!("CARGO_BIN_EXE_regmirror"))
            .args(&args)
            .output()
            .unwrap();
        expect_success(
            &out,
            &format!("init container {name}: regmirror {}", args.join(" ")),
        );
    }
    for r in [
        "docker.io",
        "registry.k8s.io",
        "ghcr.io",
        "quay.io",
        "gcr.io",
    ] {
        assert!(
            certs_d.join(r).join("hosts.toml").is_file(),
            "certs.d/{r}/hosts.toml"
        );
    }

    // containerd pulls through the mirror with those files (registry-1.docker.io is unreachable).
    let containerd = tokio::task::spawn_blocking(Containerd::start)
        .await
        .unwrap();
    let out = containerd.pull("k8s", &certs_d, "docker.io/library/busybox:v1");
    expect_success(&out, "ctr pull --hosts-dir <node-config output>");
    assert_eq!(
        containerd
            .image_digest("k8s", "docker.io/library/busybox:v1")
            .as_deref(),
        Some(seeded.index.manifest.digest.as_str())
    );
    // CRI-O's drop-in (the registries.conf format skopeo reads too) sends docker.io to the mirror.
    let conf = std::fs::read_dir(&conf_d)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "conf"))
        .expect("a .conf drop-in");
    let dest = tmp.path().join("skopeo");
    let out = skopeo_copy(&conf, "docker.io/library/busybox:v2", &dest, false);
    expect_success(&out, "skopeo copy with the CRI-O drop-in");
    assert!(!read_dir_layout(&dest).files.is_empty());

    // The main container: writes, holds, and on SIGTERM removes what it wrote.
    let held = tmp.path().join("held/certs.d");
    std::fs::create_dir_all(held.join("operator.example")).unwrap();
    std::fs::write(
        held.join("operator.example/hosts.toml"),
        "server = \"https://operator.example\"\n",
    )
    .unwrap();
    let args = node_config_args(&docs, "containers", "containerd-hold", &held, &mirror_url);
    assert!(args.iter().any(|a| a == "--hold"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_regmirror"))
        .args(&args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hosts = held.join("docker.io/hosts.toml");
    support::faults::wait_for("the held files", Duration::from_secs(20), || {
        hosts.is_file().then_some(())
    })
    .await;
    // An operator edit after writing is kept.
    std::fs::write(
        held.join("quay.io/hosts.toml"),
        "# edited by the operator\n",
    )
    .unwrap();
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "--hold exits 0 on SIGTERM");
    let mut left: Vec<String> = support::env::files_under(&held)
        .iter()
        .map(|p| p.strip_prefix(&held).unwrap().display().to_string())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec!["operator.example/hosts.toml", "quay.io/hosts.toml"],
        "only others' files remain"
    );
    assert!(
        !held.join("docker.io").exists(),
        "emptied directories are removed"
    );
}
