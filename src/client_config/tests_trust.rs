//! client-config for an HTTPS mirror: no `insecure` / plain-HTTP settings, the private CA where
//! each client looks for it, and credentials in each client's own file (readable by its owner).

use super::tests::request;
use super::{generate, Client, File, Output, Style, Trust};

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n";

fn trusting(client: Client, mirror: &str, registries: &[&str], style: Option<Style>) -> Output {
    let mut req = request(client, mirror, registries, style, false);
    req.trust = Trust {
        ca_pem: Some(PEM.into()),
        credentials: Some(("alice".into(), "s3cret".into())),
    };
    req.write_dir = Some("/srv/certs.d".into());
    generate(&req, None).unwrap()
}

fn file<'a>(out: &'a Output, path: &str) -> &'a File {
    out.files
        .iter()
        .find(|f| f.path.to_str() == Some(path))
        .unwrap_or_else(|| panic!("no {path} in {:?}", out.files))
}

fn paths(out: &Output) -> Vec<String> {
    out.files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect()
}

#[test]
fn an_https_mirror_needs_no_insecure_setting() {
    for client in [Client::Docker, Client::Containerd, Client::Podman] {
        let out = generate(
            &request(client, "https://mirror.example.com", &[], None, false),
            None,
        )
        .unwrap();
        for f in &out.files {
            for word in ["insecure", "skip_verify", "plain-http", "plain_http"] {
                assert!(
                    !f.contents.contains(word),
                    "{client:?} {}: {}",
                    f.path.display(),
                    f.contents
                );
            }
            assert!(
                !f.contents.contains("http://"),
                "{client:?}: {}",
                f.contents
            );
        }
    }
    // The same over plain HTTP does need it (the check above can fail).
    let out = generate(
        &request(
            Client::Podman,
            "http://mirror.example.com",
            &[],
            None,
            false,
        ),
        None,
    )
    .unwrap();
    assert!(out.files[0].contents.contains("insecure = true"));
}

#[test]
fn docker_gets_the_ca_in_certs_d_and_a_config_json_auth_entry() {
    let out = trusting(Client::Docker, "https://mirror.example.com:8443", &[], None);
    assert_eq!(
        paths(&out),
        [
            "daemon.json",
            "certs.d/mirror.example.com:8443/ca.crt",
            "config.json"
        ]
    );
    assert_eq!(
        file(&out, "certs.d/mirror.example.com:8443/ca.crt").contents,
        PEM
    );
    let daemon: serde_json::Value =
        serde_json::from_str(&file(&out, "daemon.json").contents).unwrap();
    assert_eq!(
        daemon["registry-mirrors"][0],
        "https://mirror.example.com:8443"
    );
    assert!(daemon.get("insecure-registries").is_none());
    let config = file(&out, "config.json");
    assert!(config.private && !file(&out, "daemon.json").private);
    let v: serde_json::Value = serde_json::from_str(&config.contents).unwrap();
    // base64("alice:s3cret")
    assert_eq!(
        v["auths"]["mirror.example.com:8443"]["auth"],
        "YWxpY2U6czNjcmV0"
    );
    assert!(
        out.notes.iter().any(|n| n.contains("index.docker.io")),
        "{:?}",
        out.notes
    );
}

#[test]
fn containerd_hosts_toml_names_the_ca_and_sends_the_credentials() {
    let out = trusting(
        Client::Containerd,
        "https://mirror.example.com",
        &["docker.io", "ghcr.io"],
        Some(Style::Ns),
    );
    assert_eq!(
        paths(&out),
        [
            "docker.io/hosts.toml",
            "docker.io/ca.crt",
            "ghcr.io/hosts.toml",
            "ghcr.io/ca.crt"
        ]
    );
    for r in ["docker.io", "ghcr.io"] {
        let hosts = file(&out, &format!("{r}/hosts.toml"));
        assert!(hosts.private, "it holds the credentials");
        let v: toml::Table = toml::from_str(&hosts.contents).unwrap();
        let host = &v["host"]["https://mirror.example.com"];
        assert_eq!(
            host["ca"].as_str(),
            Some(format!("/srv/certs.d/{r}/ca.crt").as_str())
        );
        assert_eq!(
            host["header"]["Authorization"].as_str(),
            Some("Basic YWxpY2U6czNjcmV0")
        );
        assert!(host.get("skip_verify").is_none());
        assert_eq!(file(&out, &format!("{r}/ca.crt")).contents, PEM);
    }
    let note = out
        .notes
        .iter()
        .find(|n| n.contains("registry.configs"))
        .unwrap();
    assert!(
        note.contains("io.containerd.grpc.v1.cri") && note.contains("io.containerd.cri.v1.images")
    );
    assert!(
        note.contains("\"alice\"") && note.contains("\"s3cret\""),
        "{note}"
    );
}

#[test]
fn containerd_without_write_dir_points_at_etc() {
    let mut req = request(Client::Containerd, "https://m.example", &[], None, false);
    req.trust.ca_pem = Some(PEM.into());
    let out = generate(&req, None).unwrap();
    let hosts = file(&out, "docker.io/hosts.toml");
    assert!(hosts
        .contents
        .contains("ca = \"/etc/containerd/certs.d/docker.io/ca.crt\""));
    assert!(!hosts.private && !hosts.contents.contains("Authorization"));
}

#[test]
fn podman_gets_certs_d_and_auth_json() {
    let out = trusting(
        Client::Podman,
        "https://mirror.example.com",
        &["quay.io"],
        None,
    );
    assert_eq!(
        paths(&out),
        [
            "registries.conf",
            "certs.d/mirror.example.com/ca.crt",
            "auth.json"
        ]
    );
    let conf: toml::Table = toml::from_str(&file(&out, "registries.conf").contents).unwrap();
    let mirror = &conf["registry"][0]["mirror"][0];
    assert_eq!(
        mirror["location"].as_str(),
        Some("mirror.example.com/quay.io")
    );
    assert!(mirror.get("insecure").is_none());
    let auth = file(&out, "auth.json");
    let v: serde_json::Value = serde_json::from_str(&auth.contents).unwrap();
    assert_eq!(v["auths"]["mirror.example.com"]["auth"], "YWxpY2U6czNjcmV0");
    assert!(auth.private);
}

#[test]
fn kube_clients_point_at_the_runtime_config() {
    let out = trusting(Client::Kubeadm, "https://mirror.example.com", &[], None);
    assert!(out
        .notes
        .iter()
        .any(|n| n.contains("client-config containerd")));
    assert!(out.files.iter().all(|f| !f.contents.contains("s3cret")));
}

#[test]
fn private_files_are_written_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = trusting(Client::Podman, "https://mirror.example.com", &[], None);
    // A file that was readable by all before is made private too.
    std::fs::write(dir.path().join("auth.json"), "{}").unwrap();
    std::fs::set_permissions(
        dir.path().join("auth.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    super::write_files(dir.path(), &out.files).unwrap();
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("auth.json"), 0o600);
    let written = std::fs::read_to_string(dir.path().join("auth.json")).unwrap();
    assert_eq!(written, file(&out, "auth.json").contents);
}
