//! Independent checkers in Python (installed by scripts/test.sh, pinned): PyPI `jsonpatch` applies
//! a JSONPatch (not the project's code), PyPI `kubernetes-validate` checks an object against the
//! OpenAPI schemas of several Kubernetes versions.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Kubernetes versions every object is validated against.
pub const KUBE_VERSIONS: &[&str] = &["1.32.0", "1.37.0"];

/// True when python3 has `jsonpatch` and `kubernetes_validate`; otherwise skips (or, under
/// REGMIRROR_E2E=1, fails).
pub fn python_modules_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import jsonpatch, kubernetes_validate"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    if super::env::e2e_required() {
        panic!("REGMIRROR_E2E=1 but python3 lacks jsonpatch / kubernetes-validate (scripts/test.sh installs them)");
    }
    eprintln!("SKIPPED: python3 lacks jsonpatch / kubernetes-validate; run scripts/test.sh");
    false
}

const SCRIPT: &str = r#"
import json, sys, jsonpatch, kubernetes_validate
out = []
for item in json.load(sys.stdin):
    obj = item["object"]
    if item.get("patch") is not None:
        obj = jsonpatch.apply_patch(obj, item["patch"])
    errors = []
    for v in item["versions"]:
        try:
            kubernetes_validate.validate(obj, v, True)
        except Exception as e:
            errors.append("%s: %s: %s" % (v, type(e).__name__, str(e).splitlines()[0] if str(e) else ""))
    out.append({"object": obj, "errors": errors})
json.dump(out, sys.stdout)
"#;

/// For each (object, optional patch): the object with the patch applied by `jsonpatch`, and the
/// schema errors `kubernetes-validate --strict` finds for each version in [`KUBE_VERSIONS`].
pub fn apply_and_validate(items: &[(Value, Option<Value>)]) -> Vec<(Value, Vec<String>)> {
    let input: Vec<Value> = items
        .iter()
        .map(|(o, p)| serde_json::json!({"object": o, "patch": p, "versions": KUBE_VERSIONS}))
        .collect();
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&input).unwrap())
        .unwrap();
    let out = child.wait_with_output().expect("python3 output");
    assert!(out.status.success(), "python3 checker failed");
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).expect("checker JSON");
    v.into_iter()
        .map(|r| {
            let errors = r["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().to_string())
                .collect();
            (r["object"].clone(), errors)
        })
        .collect()
}

/// Validate whole documents (e.g. a rendered kustomization) against every version; the errors.
pub fn validate_documents(docs: &[Value]) -> Vec<String> {
    let items: Vec<(Value, Option<Value>)> = docs.iter().map(|d| (d.clone(), None)).collect();
    apply_and_validate(&items)
        .into_iter()
        .zip(docs)
        .flat_map(|((_, errs), d)| {
            let what = format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            );
            errs.into_iter().map(move |e| format!("{what}: {e}"))
        })
        .collect()
}
