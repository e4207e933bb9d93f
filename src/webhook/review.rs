//! One AdmissionReview (`admission.k8s.io/v1`) in, one AdmissionReview with a JSONPatch out.
//! Pure: bytes in, bytes and counts out; the server records the counts and logs.
//!
//! Where the images are: a Pod's `spec` (also for the `pods/ephemeralcontainers` subresource),
//! a Deployment's, StatefulSet's, DaemonSet's, ReplicaSet's or Job's `spec.template.spec`, a
//! CronJob's `spec.jobTemplate.spec.template.spec`; in each `containers`, `initContainers` and
//! `ephemeralContainers`. Every change is one `replace` of one `image`, so a patch never
//! touches anything else, and a patched object reviewed again yields no patch.
//!
//! A review the webhook cannot read is still answered `allowed: true` (the webhook only ever
//! helps, never blocks), with a warning the client sees and the reason in [`Outcome`].

use base64::Engine as _;
use serde_json::{json, Value};

use super::config::OPT_OUT_ANNOTATION;
use super::rewrite::{Rewriter, Skip};

mod input;

/// The API version this webhook speaks.
pub(crate) const API_VERSION: &str = "admission.k8s.io/v1";

/// Which objects are looked at.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub exclude_namespaces: Vec<String>,
    pub include_namespaces: Vec<String>,
    pub workloads: bool,
}

/// What became of one review (the `result` label of the reviews counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// At least one image rewritten.
    Patched,
    /// Read and left as it is.
    Unchanged,
    /// Not JSON, or not an AdmissionReview with a request and a uid.
    Malformed,
    /// An AdmissionReview of another apiVersion.
    WrongVersion,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Patched => "patched",
            Outcome::Unchanged => "unchanged",
            Outcome::Malformed => "malformed",
            Outcome::WrongVersion => "wrong_version",
        }
    }
}

/// The answer to one review and what to count about it.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The AdmissionReview to send back (JSON).
    pub body: Vec<u8>,
    pub outcome: Outcome,
    /// Registry of every image rewritten.
    pub rewrites: Vec<String>,
    /// Every image (or whole object) left alone, and why.
    pub skips: Vec<Skip>,
    /// For the log: why a review was not understood.
    pub problem: Option<String>,
}

/// Answer the review in `body`.
pub(crate) fn review(body: &[u8], rw: &Rewriter, scope: &Scope) -> Answer {
    let doc: input::Review<'_> = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            // Not JSON, or JSON not shaped as a review (then the uid may still be readable).
            let uid = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| {
                    v.pointer("/request/uid")
                        .and_then(Value::as_str)
                        .map(String::from)
                })
                .unwrap_or_default();
            let what = if e.is_data() {
                "not an AdmissionReview"
            } else {
                "not JSON"
            };
            return refuse(
                API_VERSION,
                &uid,
                Outcome::Malformed,
                format!("the request body is {what} ({e})"),
            );
        }
    };
    let version = doc.api_version.as_deref().unwrap_or("");
    let kind = doc.kind.as_deref().unwrap_or("");
    let request = doc.request.as_ref();
    let uid = request.and_then(|r| r.uid.as_deref()).unwrap_or("");
    if kind != "AdmissionReview" {
        return refuse(
            API_VERSION,
            uid,
            Outcome::Malformed,
            format!("expected kind AdmissionReview, got {kind:?}"),
        );
    }
    if version != API_VERSION {
        // Answer in the version asked (so the API server can read the warning) when it is one.
        let answer_in = if version.starts_with("admission.k8s.io/") {
            version
        } else {
            API_VERSION
        };
        return refuse(
            answer_in,
            uid,
            Outcome::WrongVersion,
            format!("apiVersion {version:?} is not supported: set admissionReviewVersions: [\"v1\"] in the MutatingWebhookConfiguration"),
        );
    }
    let Some(request) = request.filter(|_| !uid.is_empty()) else {
        return refuse(
            API_VERSION,
            uid,
            Outcome::Malformed,
            "the AdmissionReview has no request.uid".into(),
        );
    };
    let mut rewrites = Vec::new();
    let mut skips = Vec::new();
    let patch = match decide(request, scope) {
        Err(skip) => {
            skips.push(skip);
            Vec::new()
        }
        Ok(None) => Vec::new(),
        Ok(Some((spec, base))) => {
            // `pods/ephemeralcontainers` may change only the ephemeral containers.
            let only_ephemeral = request.sub_resource.as_deref() == Some("ephemeralcontainers");
            patch_images(spec, base, only_ephemeral, rw, &mut rewrites, &mut skips)
        }
    };
    let mut response = json!({ "uid": uid, "allowed": true });
    let outcome = if patch.is_empty() {
        Outcome::Unchanged
    } else {
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&patch).unwrap_or_default());
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(encoded);
        Outcome::Patched
    };
    Answer {
        body: envelope(API_VERSION, response),
        outcome,
        rewrites,
        skips,
        problem: None,
    }
}

/// The pod spec to look at and its JSON pointer; `Ok(None)`: nothing to look at.
fn decide<'r, 'a>(
    request: &'r input::Request<'a>,
    scope: &Scope,
) -> Result<Option<(&'r input::Spec<'a>, &'static str)>, Skip> {
    let namespace = request.namespace.as_deref().unwrap_or("");
    if scope.exclude_namespaces.iter().any(|n| n == namespace)
        || (!scope.include_namespaces.is_empty()
            && !scope.include_namespaces.iter().any(|n| n == namespace))
    {
        return Err(Skip::ExcludedNamespace);
    }
    let Some(object) = request.object.as_ref() else {
        return Ok(None); // DELETE and CONNECT carry no object.
    };
    let gvk = request.kind.as_ref();
    let group = gvk.and_then(|k| k.group.as_deref()).unwrap_or("");
    let kind = gvk.and_then(|k| k.kind.as_deref()).unwrap_or("");
    let spec = object.spec.as_ref();
    let template = |s: Option<&'r input::Spec<'a>>| s.and_then(|s| s.template.as_deref());
    let (pod, template_meta, base) = match (group, kind) {
        ("", "Pod") => (spec, None, "/spec"),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") | ("batch", "Job")
            if scope.workloads =>
        {
            let t = template(spec);
            (
                t.and_then(|t| t.spec.as_ref()),
                t.and_then(|t| t.metadata.as_ref()),
                "/spec/template/spec",
            )
        }
        ("batch", "CronJob") if scope.workloads => {
            let job = spec
                .and_then(|s| s.job_template.as_deref())
                .and_then(|j| j.spec.as_ref());
            let t = template(job);
            (
                t.and_then(|t| t.spec.as_ref()),
                t.and_then(|t| t.metadata.as_ref()),
                "/spec/jobTemplate/spec/template/spec",
            )
        }
        _ => return Err(Skip::UnsupportedKind),
    };
    let opted_out = |m: Option<&input::Meta<'_>>| {
        m.and_then(|m| m.annotation(OPT_OUT_ANNOTATION)) == Some("false")
    };
    if opted_out(object.metadata.as_ref()) || opted_out(template_meta) {
        return Err(Skip::OptedOut);
    }
    Ok(pod.map(|p| (p, base)))
}

/// One `replace` per image that changes.
fn patch_images(
    spec: &input::Spec<'_>,
    base: &str,
    only_ephemeral: bool,
    rw: &Rewriter,
    rewrites: &mut Vec<String>,
    skips: &mut Vec<Skip>,
) -> Vec<Value> {
    let mut patch = Vec::new();
    let lists = [
        ("initContainers", &spec.init_containers),
        ("containers", &spec.containers),
        ("ephemeralContainers", &spec.ephemeral_containers),
    ];
    for (field, list) in lists {
        if only_ephemeral && field != "ephemeralContainers" {
            continue;
        }
        for (i, c) in list.iter().flatten().enumerate() {
            let Some(image) = c.image.as_deref() else {
                continue;
            };
            match rw.rewrite(image) {
                Ok(r) => {
                    patch.push(json!({
                        "op": "replace",
                        "path": format!("{base}/{field}/{i}/image"),
                        "value": r.image,
                    }));
                    rewrites.push(r.registry);
                }
                Err(skip) => skips.push(skip),
            }
        }
    }
    patch
}

fn refuse(version: &str, uid: &str, outcome: Outcome, problem: String) -> Answer {
    let response = json!({
        "uid": uid,
        "allowed": true,
        "warnings": [format!("regmirror webhook: {problem}; no image was rewritten")],
    });
    Answer {
        body: envelope(version, response),
        outcome,
        rewrites: Vec::new(),
        skips: Vec::new(),
        problem: Some(problem),
    }
}

fn envelope(version: &str, response: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": version,
        "kind": "AdmissionReview",
        "response": response,
    }))
    .unwrap_or_default()
}

#[cfg(test)]
mod tests;
