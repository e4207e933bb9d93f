//! The conformance suite and the upload rules against a real S3 server (`s3s-fs`, SigV4 checked),
//! started on a loopback port. Skipped when `s3s-fs` is not installed, unless `REGMIRROR_E2E=1`
//! (then the test fails); `scripts/test.sh` installs it into `target/tools`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::multipart::MultipartStore;
use sha2::Digest as _;

use super::*;
use crate::config::{ByteSize, S3Config};
use crate::storage::{conformance, Storage};

const KEY_ID: &str = "regmirror-test";
const SECRET: &str = "regmirror-test-secret";

/// An `s3s-fs` on a free loopback port, killed (by PID) on drop.
pub(crate) struct S3Server {
    child: Child,
    #[allow(dead_code)] // kept alive: the bucket directory
    pub(crate) root: tempfile::TempDir,
    pub(crate) port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs() -> Option<PathBuf> {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/s3s-fs");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join("s3s-fs"))
        .find(|p| p.is_file())
}

/// Start `s3s-fs` with bucket `regmirror`, or None (skip) when it is not installed.
pub(crate) async fn s3_server() -> Option<S3Server> {
    let Some(bin) = s3s_fs() else {
        assert!(
            std::env::var("REGMIRROR_E2E").as_deref() != Ok("1"),
            "s3s-fs is not installed (scripts/test.sh installs it into target/tools)"
        );
        eprintln!("skipped: s3s-fs is not installed");
        return None;
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("regmirror")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", KEY_ID, "--secret-key", SECRET])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = S3Server { child, root, port };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some(server);
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("s3s-fs did not start on port {port}");
}

fn config(server: &S3Server) -> S3Config {
    S3Config {
        bucket: "regmirror".into(),
        prefix: "cache/".into(),
        region: Some("us-east-1".into()),
        endpoint: Some(format!("http://127.0.0.1:{}", server.port)),
        path_style: true,
        ..S3Config::default()
    }
}

async fn storage(_server: &S3Server, cfg: &S3Config, data: &Path) -> S3Storage {
    let store = build(cfg, Some((KEY_ID, SECRET))).unwrap();
    S3Storage::new(store, cfg, data).await.unwrap()
}

/// How many multipart uploads `s` has on record in the bucket (`cache/_uploads/`).
async fn upload_records(s: &S3Storage) -> usize {
    s.store
        .list(Some(&ObjPath::from("cache/_uploads")))
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len()
}

/// A blob of `len` patterned bytes (`mul` varies the pattern), its key, and a streaming upload
/// of it with every byte written and nothing committed yet.
async fn streamed(
    s: &S3Storage,
    len: usize,
    mul: usize,
) -> (Vec<u8>, String, Box<dyn crate::storage::Upload>) {
    let big: Vec<u8> = (0..len).map(|i| (i * mul % 251) as u8).collect();
    let key = blob_key(&big);
    let mut up = s
        .begin_upload(&key, Some(len as u64))
        .await
        .unwrap()
        .unwrap();
    for c in big.chunks(1 << 20) {
        up.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    (big, key, up)
}

fn blob_key(data: &[u8]) -> String {
    let hex = hex::encode(sha2::Sha256::digest(data));
    format!("blobs/sha256/{}/{hex}", &hex[..2])
}

async fn read_all(
    s: &dyn Storage,
    key: &str,
    range: Option<Range<u64>>,
) -> std::io::Result<Vec<u8>> {
    let chunks: Vec<Bytes> = s
        .get_stream(key, range)
        .await
        .unwrap()
        .try_collect()
        .await?;
    Ok(chunks.concat())
}

#[tokio::test]
async fn conformance_on_s3s_fs() {
    let Some(server) = s3_server().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let s = storage(&server, &config(&server), data.path()).await;
    conformance::run_all(&s, &s.tmp).await;
    // The same with a local tier in front.
    let cfg = S3Config {
        prefix: "tiered/".into(),
        local_cache_size: Some(ByteSize(64 << 20)),
        ..config(&server)
    };
    let data = tempfile::tempdir().unwrap();
    let s = storage(&server, &cfg, data.path()).await;
    conformance::run_all(&s, &s.tmp).await;
}

#[tokio::test]
async fn wrong_credentials_are_unavailable_not_missing() {
    let Some(server) = s3_server().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let cfg = config(&server);
    let store = build(&cfg, Some((KEY_ID, "wrong-secret"))).unwrap();
    let s = S3Storage::new(store, &cfg, data.path()).await.unwrap();
    let e = s.put("c/x", Bytes::from_static(b"x")).await.unwrap_err();
    assert!(
        matches!(e, Error::Unavailable { .. }),
        "SigV4 is checked: {e}"
    );
}

/// A blob streamed through an upload is invisible until commit; an aborted one never appears;
/// a multi-part one (over 8 MiB) arrives whole, and lands in the local tier.
#[tokio::test]
async fn uploads_commit_or_leave_nothing() {
    let Some(server) = s3_server().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let cfg = S3Config {
        local_cache_size: Some(ByteSize(64 << 20)),
        ..config(&server)
    };
    let s = storage(&server, &cfg, data.path()).await;
    let (big, key, up) = streamed(&s, PART_SIZE * 2 + 12345, 7).await;
    assert!(
        matches!(s.head(&key).await, Err(Error::NotFound(_))),
        "invisible before commit"
    );
    assert_eq!(
        upload_records(&s).await,
        1,
        "a running multipart upload is recorded"
    );
    let local = s.tmp.join("spool");
    std::fs::write(&local, &big).unwrap();
    up.commit(&local).await.unwrap();
    assert_eq!(s.head(&key).await.unwrap().size, big.len() as u64);
    assert!(
        s.open_file(&key).await.unwrap().is_some(),
        "committed into the local tier"
    );
    assert!(
        upload_records(&s).await == 0,
        "the record goes with the upload"
    );
    // From the bucket itself (a fresh process without the tier copy).
    let fresh = tempfile::tempdir().unwrap();
    let other = storage(&server, &config(&server), fresh.path()).await;
    assert_eq!(read_all(&other, &key, None).await.unwrap(), big);
    assert_eq!(
        read_all(
            &other,
            &key,
            Some(PART_SIZE as u64 - 5..PART_SIZE as u64 + 5)
        )
        .await
        .unwrap(),
        &big[PART_SIZE - 5..PART_SIZE + 5]
    );

    let small = b"never committed".to_vec();
    let key = blob_key(&small);
    let mut up = s.begin_upload(&key, None).await.unwrap().unwrap();
    up.write(Bytes::from(small)).await.unwrap();
    up.abort().await;
    assert!(matches!(s.head(&key).await, Err(Error::NotFound(_))));
}

/// A multipart upload aborted under a live fill (a janitor that took it for abandoned, parts
/// lost by the server) does not lose the verified bytes: commit sends the local copy again.
#[tokio::test]
async fn a_multipart_upload_lost_mid_fill_is_committed_from_the_local_copy() {
    let Some(server) = s3_server().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let s = storage(&server, &config(&server), data.path()).await;
    let (big, key, up) = streamed(&s, PART_SIZE * 2 + 777, 11).await;
    // Every record counts as stale at 0 s: the running upload is aborted behind the writer.
    assert_eq!(upload::clean(&s.store, &s.prefix, 0).await.unwrap(), 1);
    let local = s.tmp.join("spool-lost");
    std::fs::write(&local, &big).unwrap();
    up.commit(&local).await.unwrap();
    assert_eq!(read_all(&s, &key, None).await.unwrap(), big);
}

/// A process killed mid-upload leaves an upload and its record; the janitor aborts it once the
/// record is stale, and nothing ever appears under the key.
#[tokio::test]
async fn janitor_aborts_abandoned_uploads() {
    let Some(server) = s3_server().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let s = storage(&server, &config(&server), data.path()).await;
    // What a killed fill leaves: a created upload with a part, and its record.
    let path = s.path("blobs/sha256/ab/abandoned").unwrap();
    let id = s.store.create_multipart(&path).await.unwrap();
    s.store
        .put_part(&path, &id, 0, Bytes::from(vec![1u8; PART_SIZE]).into())
        .await
        .unwrap();
    let rec = ObjPath::from("cache/_uploads/u-dead");
    let body = serde_json::to_vec(&upload::Record {
        path: path.to_string(),
        id: id.clone(),
    })
    .unwrap();
    s.store.put(&rec, Bytes::from(body).into()).await.unwrap();
    assert_eq!(
        upload::clean(&s.store, &s.prefix, 3600).await.unwrap(),
        0,
        "fresh records stay"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(upload::clean(&s.store, &s.prefix, 1).await.unwrap(), 1);
    let again = s
        .store
        .put_part(&path, &id, 1, Bytes::from_static(b"x").into())
        .await;
    assert!(again.is_err(), "the upload is gone");
    assert!(s.store.head(&rec).await.is_err(), "and so is its record");
    assert!(matches!(
        s.head("blobs/sha256/ab/abandoned").await,
        Err(Error::NotFound(_))
    ));
}

/// Bytes changed in the bucket behind the mirror's back are never handed out whole, and the
/// object is removed (with and without the local tier).
#[tokio::test]
async fn corrupt_objects_are_detected_and_removed() {
    let Some(server) = s3_server().await else {
        return;
    };
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let key = blob_key(&blob);
    for tiered in [false, true] {
        let data = tempfile::tempdir().unwrap();
        let cfg = S3Config {
            local_cache_size: tiered.then_some(ByteSize(64 << 20)),
            ..config(&server)
        };
        let s = storage(&server, &cfg, data.path()).await;
        let mut bad = blob.clone();
        bad[1000] ^= 0xff;
        s.put(&key, Bytes::from(bad)).await.unwrap();
        if tiered {
            assert!(matches!(s.open_file(&key).await, Err(Error::NotFound(_))));
        } else {
            let got = read_all(&s, &key, None).await;
            assert!(got.is_err(), "a corrupt blob ends in an error");
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        assert!(
            matches!(s.head(&key).await, Err(Error::NotFound(_))),
            "removed (tiered: {tiered})"
        );
    }
}

/// The bucket down: blobs in the local tier are still read, the rest is `Unavailable`.
#[tokio::test]
async fn local_tier_outlives_the_bucket() {
    let Some(mut server) = s3_server().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let cfg = S3Config {
        local_cache_size: Some(ByteSize(64 << 20)),
        redirect_blobs_over: Some(ByteSize(10)),
        ..config(&server)
    };
    let s = storage(&server, &cfg, data.path()).await;
    let blob = b"kept locally".to_vec();
    let key = blob_key(&blob);
    let spool = s.tmp.join("s");
    std::fs::write(&spool, &blob).unwrap();
    s.put_file(&key, &spool).await.unwrap();
    let url = s
        .redirect_url(&key, 1000)
        .await
        .unwrap()
        .expect("over the threshold");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(s.redirect_url(&key, 5).await.unwrap().is_none());
    s.put("manifests/sha256/ab/abc", Bytes::from_static(b"m"))
        .await
        .unwrap();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert_eq!(s.head(&key).await.unwrap().size, blob.len() as u64);
    assert_eq!(read_all(&s, &key, None).await.unwrap(), blob);
    let e = s.get("manifests/sha256/ab/abc").await.unwrap_err();
    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
}
