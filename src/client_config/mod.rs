//! `regmirror client-config`: the exact configuration each client needs to pull through the mirror.
//!
//! Owns: generating (and merging into) client configuration files. Pure text work; must not call
//! the cache, storage or upstreams.

use std::path::PathBuf;

/// Arguments of `regmirror client-config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which client: docker, containerd, podman, kubeadm, kubespray.
    pub client: String,
    /// The mirror's base URL, e.g. http://mirror.example.com:5000
    #[arg(long)]
    pub mirror: String,
    /// Registries to configure (default: docker.io).
    #[arg(long = "registry")]
    pub registries: Vec<String>,
    /// Routing style: prefix, host or ns.
    #[arg(long, default_value = "ns")]
    pub style: String,
    /// The mirror speaks plain HTTP or has a self-signed certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Write the files under this directory instead of printing them.
    #[arg(long)]
    pub write: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("client-config is not implemented yet")]
    NotImplemented,
}

/// Run the command.
pub fn run(_args: &Args) -> Result<(), Error> {
    Err(Error::NotImplemented)
}
