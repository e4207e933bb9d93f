//! A real S3 server for `storage = "s3"` tests: `s3s-fs` (SigV4 checked) on a loopback port,
//! one bucket (`regmirror`) in its own temp dir, and the credentials regmirror children read from
//! the environment.
//!
//! `scripts/test.sh` builds `s3s-fs` into `target/tools/bin`; one on PATH is used otherwise.
//! Without it a test skips (fails under `REGMIRROR_E2E=1`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::mirror::MirrorConfig;

/// The access key every test S3 server accepts.
pub const KEY_ID: &str = "regmirror-e2e";
/// Its secret.
pub const SECRET: &str = "regmirror-e2e-secret";
/// The bucket the server is started with.
pub const BUCKET: &str = "regmirror";
/// The prefix regmirror's config puts every key under.
pub const PREFIX: &str = "cache/";

/// A running `s3s-fs`; killed (by PID) and reaped on drop.
pub struct S3Server {
    child: Option<Child>,
    /// The server's root: `<root>/regmirror` is the bucket.
    pub root: tempfile::TempDir,
    pub port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `s3s-fs` binary: the one scripts/test.sh built, else one on PATH.
pub fn s3s_fs() -> Option<PathBuf> {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/s3s-fs");
    if local.is_file() {
        return Some(local);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

impl S3Server {
    /// Start on a free port with an empty bucket; None (after saying why) when `s3s-fs` is
    /// missing and the e2e run is optional.
    pub async fn start() -> Option<S3Server> {
        let Some(bin) = s3s_fs() else {
            assert!(
                !super::env::e2e_required(),
                "REGMIRROR_E2E=1 but s3s-fs is missing (scripts/test.sh installs it into target/tools)"
            );
            eprintln!("SKIPPED: s3s-fs is not installed; run scripts/test.sh");
            return None;
        };
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = super::env::free_port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", KEY_ID, "--secret-key", SECRET])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Killed and reaped by its guard's drop, also when it never comes up.
        let server = S3Server {
            child: Some(child),
            root,
            port,
        };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some(server);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("s3s-fs did not start");
    }

    /// Kill the server (by its PID) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory holding every key under [`PREFIX`] (`blobs/`, `manifests/`, `_uploads/`...).
    pub fn cache_dir(&self) -> PathBuf {
        self.root.path().join(BUCKET).join(PREFIX)
    }

    /// Where the blob `digest` is stored in the bucket.
    pub fn blob_object(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.cache_dir()
            .join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
    }

    /// Multipart uploads the server itself holds (s3s-fs keeps one `.upload-<id>.json` each).
    pub fn server_uploads(&self) -> usize {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.starts_with(".upload-") && n.ends_with(".json")
            })
            .count()
    }

    /// Upload records regmirror keeps under `_uploads/` (one per multipart upload it runs).
    pub fn upload_records(&self) -> usize {
        count_entries(&self.cache_dir().join("_uploads"))
    }

    /// The `[s3]` table pointing at this server (bucket, prefix, region, endpoint, path style),
    /// with `more` keys added.
    pub fn table(&self, more: toml::Table) -> toml::Table {
        let mut table = toml::Table::new();
        table.insert("bucket".into(), BUCKET.into());
        table.insert("prefix".into(), PREFIX.into());
        table.insert("region".into(), "us-east-1".into());
        table.insert("endpoint".into(), self.endpoint().into());
        table.insert("path_style".into(), true.into());
        table.extend(more);
        table
    }

    /// `config` with `storage = "s3"` on this server (and `more` keys in `[s3]`).
    pub fn configure(&self, mut config: MirrorConfig, more: toml::Table) -> MirrorConfig {
        config.extra = config
            .extra
            .top("storage", "s3")
            .top("s3", toml::Value::Table(self.table(more)));
        config
    }
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| rd.count())
}

/// The credentials every regmirror child reads from its environment (as on a real host).
/// Multipart uploads whose record is not refreshed for 2 s count as abandoned.
pub fn credentials_in_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", KEY_ID);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
        std::env::set_var("REGMIRROR_S3_STALE_UPLOAD_SECS", "2");
    });
}
