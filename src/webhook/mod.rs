//! The mutating admission webhook (`regmirror webhook --config FILE`): rewrites the images of
//! Pods and pod templates to the mirror, so that workloads pull through it unchanged.
//!
//! Owns: its own configuration file ([`config`]), the image rewrite rule ([`rewrite`], pure), the
//! AdmissionReview answer ([`review`], pure) and its HTTPS server ([`serve`], through
//! `edge::tls` for the certificate and its reload). Must not call the cache, storage, upstreams
//! or the mirror's server: it is a separate process that never touches image bytes.

mod config;
mod review;
mod rewrite;
mod serve;

pub(crate) use serve::main;
