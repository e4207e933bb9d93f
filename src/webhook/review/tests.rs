use serde_json::{json, Value};

use super::*;
use crate::webhook::config::WebhookConfig;

fn setup() -> (Rewriter, Scope) {
    let c: WebhookConfig = toml::from_str(
        "tls_cert = \"/c\"\ntls_key = \"/k\"\nmirror = \"m.example:5000\"\nexclude_namespaces = [\"kube-system\"]\n[[registry]]\nname = \"docker.io\"\n",
    )
    .unwrap();
    let scope = Scope {
        exclude_namespaces: c.exclude_namespaces.clone(),
        include_namespaces: Vec::new(),
        workloads: true,
    };
    (Rewriter::new(&c), scope)
}

fn review_of(kind: (&str, &str), namespace: &str, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": API_VERSION, "kind": "AdmissionReview",
        "request": {"uid": "u-1", "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
                    "namespace": namespace, "operation": "CREATE", "object": object}
    }))
    .unwrap()
}

/// The JSONPatch of an answer, decoded.
fn patch_of(a: &Answer) -> Vec<Value> {
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["response"]["uid"], "u-1");
    assert_eq!(v["response"]["allowed"], true);
    match v["response"]["patch"].as_str() {
        None => Vec::new(),
        Some(p) => {
            assert_eq!(v["response"]["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
            serde_json::from_slice(&bytes).unwrap()
        }
    }
}

/// Apply `replace` operations (the only kind the webhook emits).
fn apply(mut object: Value, patch: &[Value]) -> Value {
    for op in patch {
        assert_eq!(op["op"], "replace");
        let path = op["path"]
            .as_str()
            .unwrap()
            .strip_prefix("/object")
            .unwrap_or(op["path"].as_str().unwrap());
        *object.pointer_mut(path).expect("path exists") = op["value"].clone();
    }
    object
}

#[test]
fn pods_and_cronjobs_are_patched_once() {
    let (rw, scope) = setup();
    let pod = json!({"spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "quay.io/x/y"}],
                              "initContainers": [{"name": "i", "image": "busybox:1"}]}});
    let cron = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "redis:7"}]}}}}}});
    for (kind, object, want) in [
        (
            ("", "Pod"),
            pod,
            vec![
                (
                    "/spec/initContainers/0/image",
                    "m.example:5000/docker.io/library/busybox:1",
                ),
                (
                    "/spec/containers/0/image",
                    "m.example:5000/docker.io/library/nginx",
                ),
            ],
        ),
        (
            ("batch", "CronJob"),
            cron,
            vec![(
                "/spec/jobTemplate/spec/template/spec/containers/0/image",
                "m.example:5000/docker.io/library/redis:7",
            )],
        ),
    ] {
        let a = review(&review_of(kind, "default", object.clone()), &rw, &scope);
        assert_eq!(a.outcome, Outcome::Patched);
        let patch = patch_of(&a);
        let got: Vec<(&str, &str)> = patch
            .iter()
            .map(|o| (o["path"].as_str().unwrap(), o["value"].as_str().unwrap()))
            .collect();
        assert_eq!(got, want);
        let again = review(
            &review_of(kind, "default", apply(object, &patch)),
            &rw,
            &scope,
        );
        assert_eq!(again.outcome, Outcome::Unchanged);
        assert!(patch_of(&again).is_empty());
    }
}

#[test]
fn excluded_and_unreadable_reviews_are_allowed_unchanged() {
    let (rw, scope) = setup();
    let pod = json!({"spec": {"containers": [{"name": "a", "image": "nginx"}]}});
    let a = review(
        &review_of(("", "Pod"), "kube-system", pod.clone()),
        &rw,
        &scope,
    );
    assert_eq!(
        (a.outcome, a.skips.as_slice()),
        (Outcome::Unchanged, &[Skip::ExcludedNamespace][..])
    );
    let opted = json!({"metadata": {"annotations": {"regmirror.io/rewrite": "false"}}, "spec": pod["spec"]});
    let a = review(&review_of(("", "Pod"), "default", opted), &rw, &scope);
    assert_eq!(a.skips, vec![Skip::OptedOut]);
    for (body, outcome) in [
        (&b"{not json"[..], Outcome::Malformed),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, Outcome::Malformed),
        (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#, Outcome::WrongVersion),
    ] {
        let a = review(body, &rw, &scope);
        assert_eq!(a.outcome, outcome);
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"]["warnings"][0].as_str().unwrap().contains("no image was rewritten"));
        assert!(v["response"].get("patch").is_none());
    }
}
