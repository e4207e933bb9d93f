//! The parts of an AdmissionReview the webhook reads, borrowed from the request body: the
//! envelope, the request's uid, kind and namespace, and of the object only its annotations and
//! its pod specs' images. Everything else is skipped unparsed into values (a Pod of 10 containers
//! is read with a handful of allocations).

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;

type Str<'a> = Cow<'a, str>;

#[derive(Debug, Deserialize)]
pub(super) struct Review<'a> {
    #[serde(rename = "apiVersion", borrow, default)]
    pub api_version: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub request: Option<Request<'a>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Request<'a> {
    #[serde(borrow, default)]
    pub uid: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub kind: Option<Gvk<'a>>,
    #[serde(borrow, default)]
    pub namespace: Option<Str<'a>>,
    #[serde(rename = "subResource", borrow, default)]
    pub sub_resource: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub object: Option<Object<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Gvk<'a> {
    #[serde(borrow, default)]
    pub group: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub kind: Option<Str<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Meta<'a> {
    #[serde(borrow, default)]
    pub annotations: Option<HashMap<Str<'a>, Option<Str<'a>>>>,
}

impl Meta<'_> {
    pub(super) fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key)?.as_deref()
    }
}

/// A Pod, a workload or a CronJob: metadata, and a spec that is a pod spec or holds one.
#[derive(Debug, Deserialize)]
pub(super) struct Object<'a> {
    #[serde(borrow, default)]
    pub metadata: Option<Meta<'a>>,
    #[serde(borrow, default)]
    pub spec: Option<Spec<'a>>,
}

/// The union of the specs on the way to a pod spec: a pod spec's container lists, a workload's
/// `template`, a CronJob's `jobTemplate`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Spec<'a> {
    #[serde(borrow, default)]
    pub containers: Option<Vec<Container<'a>>>,
    #[serde(rename = "initContainers", borrow, default)]
    pub init_containers: Option<Vec<Container<'a>>>,
    #[serde(rename = "ephemeralContainers", borrow, default)]
    pub ephemeral_containers: Option<Vec<Container<'a>>>,
    #[serde(borrow, default)]
    pub template: Option<Box<Template<'a>>>,
    #[serde(rename = "jobTemplate", borrow, default)]
    pub job_template: Option<Box<Template<'a>>>,
}

/// A pod template (`metadata` + `spec`) or a CronJob's job template (`spec` holding a template).
#[derive(Debug, Default, Deserialize)]
pub(super) struct Template<'a> {
    #[serde(borrow, default)]
    pub metadata: Option<Meta<'a>>,
    #[serde(borrow, default)]
    pub spec: Option<Spec<'a>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Container<'a> {
    #[serde(borrow, default)]
    pub image: Option<Str<'a>>,
}
