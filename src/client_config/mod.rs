//! `regmirror client-config`: the exact configuration each client needs to pull through the mirror.
//!
//! Owns: generating (and merging into) client configuration files. Generation is pure text work
//! ([`generate`]); [`run`] only reads the `--merge` file (and [`Request::from_args`] the
//! `--ca-file` and `--password-file`), prints, or writes under `--write`. Must not call the cache,
//! storage or upstreams.
//!
//! One file per client: [`docker`] (daemon.json), [`containerd`] (certs.d hosts.toml), [`podman`]
//! (registries.conf, also read by CRI-O and skopeo), [`kube`] (kubeadm and kubespray); [`trust`]
//! reads the private CA and the credentials for an HTTPS mirror that the first three also place;
//! [`files`] holds the output and writes it (files with credentials 0600).

mod containerd;
mod docker;
mod files;
mod kube;
mod podman;
mod trust;

use files::{hold_then_remove, render_for_stdout, write_files};
pub(crate) use files::{File, Output};
pub(crate) use trust::Trust;

use std::fmt;
use std::path::PathBuf;

/// Arguments of `regmirror client-config`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Which client to configure.
    #[arg(value_enum)]
    pub client: Client,
    /// The mirror's base URL, e.g. http://mirror.example.com:5000
    #[arg(long)]
    pub mirror: String,
    /// Registries to configure, e.g. docker.io, ghcr.io, 127.0.0.1:5101 (repeatable; default: docker.io,
    /// or the registries kubeadm / kubespray use).
    #[arg(long = "registry")]
    pub registries: Vec<String>,
    /// How the mirror learns which registry is meant: `ns` (containerd's `?ns=` query), `prefix`
    /// (`<mirror>/<registry>/<repo>`) or `host` (the mirror URL is a host name that regmirror maps to
    /// one registry through `hosts`). Default: the best style the client supports.
    #[arg(long, value_enum)]
    pub style: Option<Style>,
    /// The mirror speaks plain HTTP or has a certificate the client cannot verify. Not needed for an
    /// https:// mirror whose certificate the client trusts (publicly, or through --ca-file).
    #[arg(long)]
    pub insecure: bool,
    /// PEM file of the private CA that signed an https:// mirror's certificate: written where the
    /// client looks for it (certs.d/<mirror host>/ca.crt for docker and podman, ca = ... in
    /// containerd's hosts.toml).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// User name for a mirror with client authentication (with --password-file): docker
    /// config.json, containerd hosts.toml header, podman auth.json.
    #[arg(long)]
    pub username: Option<String>,
    /// File whose first line is the password for --username.
    #[arg(long, value_name = "PATH")]
    pub password_file: Option<PathBuf>,
    /// Write the files under this directory instead of printing them.
    #[arg(long)]
    pub write: Option<PathBuf>,
    /// With --write: keep running after writing; on SIGTERM or SIGINT remove the files written
    /// (those still as written) and the directories that leaves empty, then exit. For the main
    /// container of a node-configuration DaemonSet, so that uninstalling it undoes it.
    #[arg(long, requires = "write")]
    pub hold: bool,
    /// Merge into this existing file (docker daemon.json, podman registries.conf), keeping its other
    /// settings; a missing file counts as empty.
    #[arg(long)]
    pub merge: Option<PathBuf>,
}

/// The clients `client-config` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Client {
    /// dockerd's daemon.json (`registry-mirrors`); Docker mirrors only docker.io.
    Docker,
    /// containerd's `certs.d/<registry>/hosts.toml`.
    Containerd,
    /// registries.conf for podman, CRI-O, buildah and skopeo.
    Podman,
    /// a kubeadm `ClusterConfiguration` with `imageRepository` and `dns.imageRepository`.
    Kubeadm,
    /// kubespray inventory variables (`kube_image_repo`, ...).
    Kubespray,
}

/// How the mirror is told which registry a request is for (see the server's routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Style {
    /// containerd's `?ns=<registry>` query parameter: one mirror URL for every registry.
    Ns,
    /// The registry is the first path segment: `<mirror>/<registry>/<repo>`.
    Prefix,
    /// The mirror URL itself stands for one registry (its host name is in that upstream's `hosts`).
    Host,
}

impl fmt::Display for Style {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Style::Ns => "ns",
            Style::Prefix => "prefix",
            Style::Host => "host",
        })
    }
}

/// A mistake in the arguments or a file that cannot be read, merged or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("--mirror {given:?}: {message}")]
    Mirror { given: String, message: String },
    #[error("--registry {given:?}: {message}")]
    Registry { given: String, message: String },
    #[error("--style {style} does not work with {client}: {message}")]
    Style {
        style: Style,
        client: &'static str,
        message: String,
    },
    #[error("--merge is not supported for {0}: it writes whole files of its own")]
    MergeUnsupported(&'static str),
    #[error("cannot merge into {path}: {message}")]
    Merge { path: String, message: String },
    #[error("--ca-file {}: {message}", path.display())]
    CaFile { path: PathBuf, message: String },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The mirror's base URL, checked and split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mirror {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]` as clients write it in image names (IPv6 in brackets).
    pub host: String,
}

impl Mirror {
    /// Parse `--mirror`. Only a scheme, a host and a port are allowed: a registry lives at the root.
    pub(crate) fn parse(given: &str) -> Result<Mirror, Error> {
        let err = |message: &str| Error::Mirror {
            given: given.to_string(),
            message: message.to_string(),
        };
        if !given.starts_with("http://") && !given.starts_with("https://") {
            return Err(err("write the scheme: https://HOST[:PORT], or http://HOST[:PORT] for a plain-HTTP mirror"));
        }
        let url = url::Url::parse(given).map_err(|e| err(&format!("not a URL ({e})")))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| err("the URL has no host"))?;
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(err(
                "leave out the path: clients add /v2/ themselves; give only https://HOST[:PORT]",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err(
                "leave out the credentials: clients take them from their own credential stores",
            ));
        }
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Ok(Mirror {
            scheme: url.scheme().to_string(),
            host,
        })
    }

    /// `scheme://host[:port]`, no trailing slash.
    pub(crate) fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }

    pub(crate) fn is_plain_http(&self) -> bool {
        self.scheme == "http"
    }

    /// `host[:port]/<registry>`: where a prefix-style client finds `registry`'s images.
    pub(crate) fn prefixed(&self, registry: &str) -> String {
        format!("{}/{}", self.host, registry)
    }
}

/// Everything the generators need, checked.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub client: Client,
    pub mirror: Mirror,
    /// Registry host names, lower case, in the order given, without duplicates. Empty means the
    /// client's default.
    pub registries: Vec<String>,
    pub style: Option<Style>,
    /// `--insecure` as given (a plain-HTTP mirror is insecure too; generators check both).
    pub insecure: bool,
    /// The private CA and the credentials, when given.
    pub trust: Trust,
    /// `--write DIR`, made absolute: where files that name other files' paths (containerd's `ca`)
    /// will be. None: the client's usual place.
    pub write_dir: Option<PathBuf>,
}

impl Request {
    pub(crate) fn from_args(args: &Args) -> Result<Request, Error> {
        let mut registries: Vec<String> = Vec::new();
        for given in &args.registries {
            let r = normalise_registry(given)?;
            if !registries.contains(&r) {
                registries.push(r);
            }
        }
        let mirror = Mirror::parse(&args.mirror)?;
        let trust = Trust::from_args(args, &mirror)?;
        let write_dir = args
            .write
            .as_ref()
            .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone()));
        Ok(Request {
            client: args.client,
            mirror,
            registries,
            style: args.style,
            insecure: args.insecure,
            trust,
            write_dir,
        })
    }

    /// The registries to configure, `default` when none were given.
    fn registries_or(&self, default: &[&str]) -> Vec<String> {
        if self.registries.is_empty() {
            default.iter().map(|r| r.to_string()).collect()
        } else {
            self.registries.clone()
        }
    }

    /// Whether the client must be told to accept plain HTTP or an unverified certificate.
    fn needs_insecure(&self) -> bool {
        self.insecure || self.mirror.is_plain_http()
    }

    /// The chosen style, checked against what this client supports (the first one is the default).
    fn style_among(
        &self,
        client: &'static str,
        supported: &[Style],
        why: &str,
    ) -> Result<Style, Error> {
        match self.style {
            None => Ok(supported[0]),
            Some(s) if supported.contains(&s) => Ok(s),
            Some(s) => Err(Error::Style {
                style: s,
                client,
                message: why.to_string(),
            }),
        }
    }

    /// Host style maps the mirror URL to one registry, so only one may be named.
    fn check_host_style(&self, registries: &[String]) -> Result<(), Error> {
        if self.style == Some(Style::Host) && registries.len() != 1 {
            return Err(Error::Style {
                style: Style::Host,
                client: "several registries",
                message: "a host-style mirror URL stands for exactly one registry; name one --registry per \
                          mirror host name, or use --style prefix"
                    .to_string(),
            });
        }
        Ok(())
    }
}

/// `docker.io`, `ghcr.io`, `127.0.0.1:5101`: a registry host, lower case. Docker Hub's other names
/// become `docker.io`.
fn normalise_registry(given: &str) -> Result<String, Error> {
    let err = |message: &str| Error::Registry {
        given: given.to_string(),
        message: message.to_string(),
    };
    let r = given
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let r = r.to_ascii_lowercase();
    if r.is_empty() {
        return Err(err("empty registry name"));
    }
    if r.contains('/') {
        return Err(err(
            "give only the registry host (e.g. ghcr.io or 127.0.0.1:5101), not a repository",
        ));
    }
    if !r
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
    {
        return Err(err("not a registry host name"));
    }
    Ok(match r.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => r,
    })
}

/// Generate the configuration for `req`; `existing` is the text of the `--merge` file.
pub(crate) fn generate(req: &Request, existing: Option<&str>) -> Result<Output, Error> {
    let mut out = generate_for_client(req, existing)?;
    let trusting = req.trust.ca_pem.is_some() || req.trust.credentials.is_some();
    if trusting && matches!(req.client, Client::Kubeadm | Client::Kubespray) {
        out.notes.push(
            "kubeadm and kubespray only name the images: the CA and the credentials belong in the container \
             runtime's configuration (regmirror client-config containerd, or podman for CRI-O, with the same \
             --ca-file / --username / --password-file)"
                .to_string(),
        );
    }
    Ok(out)
}

fn generate_for_client(req: &Request, existing: Option<&str>) -> Result<Output, Error> {
    match req.client {
        Client::Docker => docker::generate(req, existing),
        Client::Containerd if existing.is_some() => Err(Error::MergeUnsupported("containerd")),
        Client::Containerd => containerd::generate(req),
        Client::Podman => podman::generate(req, existing),
        Client::Kubeadm if existing.is_some() => Err(Error::MergeUnsupported("kubeadm")),
        Client::Kubeadm => kube::kubeadm(req),
        Client::Kubespray if existing.is_some() => Err(Error::MergeUnsupported("kubespray")),
        Client::Kubespray => kube::kubespray(req),
    }
}

/// Run the command: read the `--merge` file, generate, then print or write.
pub(crate) fn run(args: &Args) -> Result<(), Error> {
    let req = Request::from_args(args)?;
    // A missing --merge file is an empty one: the first run on a fresh machine just creates it.
    let existing = match &args.merge {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(Error::Read {
                    path: path.clone(),
                    source,
                })
            }
        },
        None => None,
    };
    let out = generate(&req, existing.as_deref()).map_err(|e| match (e, &args.merge) {
        (Error::Merge { message, .. }, Some(path)) => Error::Merge {
            path: path.display().to_string(),
            message,
        },
        (e, _) => e,
    })?;
    for note in &out.notes {
        eprintln!("note: {note}");
    }
    match &args.write {
        Some(dir) if args.hold => {
            write_files(dir, &out.files)?;
            hold_then_remove(dir, &out.files)
        }
        Some(dir) => write_files(dir, &out.files),
        None => {
            print!("{}", render_for_stdout(&out.files));
            Ok(())
        }
    }
}

/// A TOML basic string, quoted and escaped.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yaml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests_trust;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_urls() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("http://127.0.0.1:5000", Some(("http", "127.0.0.1:5000"))),
            ("http://127.0.0.1:5000/", Some(("http", "127.0.0.1:5000"))),
            (
                "https://mirror.example.com",
                Some(("https", "mirror.example.com")),
            ),
            (
                "https://mirror.example.com:443",
                Some(("https", "mirror.example.com")),
            ),
            (
                "https://Mirror.Example.com:8443",
                Some(("https", "mirror.example.com:8443")),
            ),
            ("http://[::1]:5000", Some(("http", "[::1]:5000"))),
            ("mirror.example.com:5000", None),
            ("ftp://mirror.example.com", None),
            ("https://mirror.example.com/v2", None),
            ("https://mirror.example.com/?ns=docker.io", None),
            ("https://user:pw@mirror.example.com", None),
            ("http://", None),
        ];
        for (given, want) in cases {
            let got = Mirror::parse(given).ok().map(|m| (m.scheme, m.host));
            let want = want.map(|(s, h)| (s.to_string(), h.to_string()));
            assert_eq!(got, want, "{given}");
        }
    }

    #[test]
    fn registry_names() {
        let cases: &[(&str, Option<&str>)] = &[
            ("docker.io", Some("docker.io")),
            ("Docker.IO", Some("docker.io")),
            ("index.docker.io", Some("docker.io")),
            ("registry-1.docker.io", Some("docker.io")),
            ("https://ghcr.io/", Some("ghcr.io")),
            ("127.0.0.1:5101", Some("127.0.0.1:5101")),
            ("ghcr.io/owner/repo", None),
            ("", None),
            ("a b", None),
        ];
        for (given, want) in cases {
            assert_eq!(normalise_registry(given).ok().as_deref(), *want, "{given}");
        }
    }

    pub(super) fn request(
        client: Client,
        mirror: &str,
        registries: &[&str],
        style: Option<Style>,
        insecure: bool,
    ) -> Request {
        Request {
            client,
            mirror: Mirror::parse(mirror).unwrap(),
            registries: registries.iter().map(|r| r.to_string()).collect(),
            style,
            insecure,
            trust: Trust::default(),
            write_dir: None,
        }
    }

    #[test]
    fn several_files_are_labelled_on_stdout() {
        let files = vec![
            File {
                path: "a/hosts.toml".into(),
                contents: "x = 1\n".into(),
                private: false,
            },
            File {
                path: "b/hosts.toml".into(),
                contents: "y = 2\n".into(),
                private: false,
            },
        ];
        assert_eq!(
            render_for_stdout(&files),
            "# a/hosts.toml\nx = 1\n\n# b/hosts.toml\ny = 2\n"
        );
        assert_eq!(render_for_stdout(&files[..1]), "x = 1\n");
    }

    /// `client-config ARGS` as the command line would parse it.
    fn parse(line: &str) -> Args {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let words = std::iter::once("client-config").chain(line.split_whitespace());
        <Cli as clap::Parser>::try_parse_from(words)
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .args
    }

    /// Every `$ regmirror client-config ...` example in README.md that prints (no --write)
    /// shows exactly what the command prints.
    #[test]
    fn docs_show_the_real_output() {
        let doc = include_str!("../../README.md");
        let mut checked = 0;
        for block in doc.split("```console\n").skip(1) {
            let block = block.split("```").next().unwrap_or_default();
            for example in block.split("$ ").skip(1) {
                let (command, printed) = example.split_once('\n').unwrap_or((example, ""));
                let Some(line) = command.strip_prefix("regmirror client-config ") else {
                    continue;
                };
                if line.contains("--write") || line.contains("--merge") {
                    continue;
                }
                let req = Request::from_args(&parse(line)).unwrap();
                let out = generate(&req, None).unwrap();
                assert_eq!(printed, render_for_stdout(&out.files), "README.md: {line}");
                checked += 1;
            }
        }
        assert!(checked >= 4, "only {checked} examples found");
    }

    #[test]
    fn run_writes_files_and_merges_a_missing_file_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let line = format!("containerd --mirror http://127.0.0.1:5000 --registry docker.io --registry 127.0.0.1:5101 --write {d}");
        run(&parse(&line)).unwrap();
        for r in ["docker.io", "127.0.0.1:5101"] {
            let text = std::fs::read_to_string(dir.path().join(r).join("hosts.toml")).unwrap();
            assert!(text.contains("[host.\"http://127.0.0.1:5000\"]"), "{text}");
        }
        let line =
            format!("docker --mirror https://m.example --merge {d}/absent.json --write {d}/docker");
        run(&parse(&line)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("docker/daemon.json")).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            serde_json::json!({"registry-mirrors": ["https://m.example"]})
        );
        let err = run(&parse(&format!(
            "docker --mirror https://m.example --merge {d}"
        )))
        .unwrap_err();
        assert!(
            matches!(err, Error::Read { .. }),
            "a directory cannot be merged: {err}"
        );
    }

    #[test]
    fn merge_is_refused_where_files_are_whole() {
        for client in [Client::Containerd, Client::Kubeadm, Client::Kubespray] {
            let req = request(client, "https://m.example", &[], None, false);
            assert!(
                matches!(generate(&req, Some("")), Err(Error::MergeUnsupported(_))),
                "{client:?}"
            );
        }
    }
}
