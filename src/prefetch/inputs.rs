//! Image lists: `-f FILE` (one reference a line, `#` comments: the output of `kubeadm config
//! images list` as it is) and `--from-manifests DIR` (every `image:` of the Kubernetes YAML or
//! JSON files under DIR), and `--from-kubeadm VERSION` (the list `kubeadm config images list`
//! prints for that version: kubeadm holds the etcd, CoreDNS and pause versions of each release,
//! which change within a minor, so they are asked of it rather than copied into a table here).
//!
//! The manifests are read with a line scan, not a YAML parser: an `image:` key is one line in
//! every manifest kubectl, Helm or kustomize writes, multi-document files need no special case, and
//! a file a YAML parser refuses (a template) still yields its literal images. Values holding
//! template syntax (`{{`, `${`) are skipped.

use std::ffi::OsStr;
use std::path::Path;

/// The references in a list file's text.
pub(crate) fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The `image:` value on one line of YAML (or `"image": "..."` of JSON), if any.
pub(crate) fn image_on_line(line: &str) -> Option<String> {
    let l = line.trim_start();
    let l = l.strip_prefix("- ").map(str::trim_start).unwrap_or(l);
    let rest = l
        .strip_prefix("image:")
        .or_else(|| l.strip_prefix("\"image\":"))?;
    let mut v = rest.trim();
    if !v.starts_with(['"', '\'']) {
        v = v.split(" #").next().unwrap_or("").trim();
    }
    let v = v
        .trim_end_matches(',')
        .trim()
        .trim_matches(['"', '\''])
        .trim();
    if v.is_empty() || v.contains("{{") || v.contains("${") || v.contains(' ') {
        return None;
    }
    Some(v.to_string())
}

/// Every image named in `*.yaml`, `*.yml` and `*.json` files under `dir`, in file order, each once.
pub(crate) fn scan_manifests(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut out: Vec<String> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        for img in text.lines().filter_map(image_on_line) {
            if !out.contains(&img) {
                out.push(img);
            }
        }
    }
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    if dir.is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

/// The control-plane images of Kubernetes `version` ("v1.31.2", "1.31", "stable-1.31"), as
/// `program` (kubeadm) lists them for `kubeadm init`.
pub(crate) fn kubeadm_images(program: &OsStr, version: &str) -> Result<Vec<String>, String> {
    let ok = !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    if !ok {
        return Err(format!(
            "--from-kubeadm {version:?}: expected a Kubernetes version such as v1.31.2"
        ));
    }
    let out = std::process::Command::new(program)
        .args(["config", "images", "list", "--kubernetes-version", version])
        .output()
        .map_err(|e| {
            format!(
                "--from-kubeadm needs {} on PATH ({e}); on a machine without it, pass -f FILE with \
                 the output of `kubeadm config images list --kubernetes-version {version}`",
                program.to_string_lossy()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "kubeadm config images list --kubernetes-version {version} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let images = parse_list(&String::from_utf8_lossy(&out.stdout));
    if images.is_empty() {
        return Err(format!(
            "kubeadm config images list --kubernetes-version {version} listed no image"
        ));
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadm_list_as_is() {
        let text = "registry.k8s.io/kube-apiserver:v1.28.2\nregistry.k8s.io/pause:3.9\n\n# mine\nbusybox  # trailing\n";
        assert_eq!(
            parse_list(text),
            [
                "registry.k8s.io/kube-apiserver:v1.28.2",
                "registry.k8s.io/pause:3.9",
                "busybox"
            ]
        );
    }

    #[test]
    fn image_lines() {
        let table: &[(&str, Option<&str>)] = &[
            ("        image: nginx:1.25", Some("nginx:1.25")),
            (
                "      - image: \"ghcr.io/o/app:v1\"",
                Some("ghcr.io/o/app:v1"),
            ),
            (
                "  image: 'quay.io/a/b@sha256:00'",
                Some("quay.io/a/b@sha256:00"),
            ),
            ("  image: busybox # the shell", Some("busybox")),
            ("   \"image\": \"redis:7\",", Some("redis:7")),
            ("  image: {{ .Values.image }}", None),
            ("  image: ${IMAGE}", None),
            ("  imagePullPolicy: Always", None),
            ("  # image: old:1", None),
            ("  image:", None),
        ];
        for (line, want) in table {
            assert_eq!(image_on_line(line).as_deref(), *want, "{line}");
        }
    }

    #[test]
    fn scans_a_tree_once_per_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: a\n    image: nginx:1\n---\nkind: Pod\nspec:\n  initContainers:\n  - image: busybox\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sub/b.yml"),
            "    image: nginx:1\n    image: redis\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "image: not-me\n").unwrap();
        assert_eq!(
            scan_manifests(dir.path()).unwrap(),
            ["nginx:1", "busybox", "redis"]
        );
    }

    #[test]
    fn from_kubeadm_names_what_is_missing() {
        let missing = std::ffi::OsStr::new("/nonexistent/kubeadm");
        let err = kubeadm_images(missing, "v1.31.2").unwrap_err();
        assert!(err.contains("needs /nonexistent/kubeadm on PATH"), "{err}");
        assert!(err.contains("-f FILE"), "{err}");
        let err = kubeadm_images(missing, "v1.31; rm -rf /").unwrap_err();
        assert!(err.contains("expected a Kubernetes version"), "{err}");
        // A program that fails is reported with its status and message.
        let err = kubeadm_images(std::ffi::OsStr::new("false"), "v1.31.2").unwrap_err();
        assert!(err.contains("failed"), "{err}");
    }
}
