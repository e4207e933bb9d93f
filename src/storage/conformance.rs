//! One conformance suite run against every storage backend: each check is a `pub async fn`.

use bytes::Bytes;
use futures::TryStreamExt;
use std::path::Path;

use super::{Error, Storage};

pub(super) async fn run_all(s: &dyn Storage, spool_dir: &Path) {
    put_get_head(s).await;
    missing_is_not_found(s).await;
    ranges(s).await;
    put_file_moves(s, spool_dir).await;
    replace_and_delete(s).await;
    list_prefix(s).await;
    touch_updates_access_time(s).await;
}

pub(super) async fn touch_updates_access_time(s: &dyn Storage) {
    s.put("c/t", Bytes::from_static(b"t")).await.unwrap();
    let before = s.head("c/t").await.unwrap().modified;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    s.touch("c/t").await.unwrap();
    assert!(s.head("c/t").await.unwrap().modified > before);
    assert_eq!(
        &s.get("c/t").await.unwrap()[..],
        b"t",
        "touch keeps the bytes"
    );
    s.touch("c/never-written").await.unwrap();
}

async fn collect(s: &dyn Storage, key: &str, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let chunks: Vec<Bytes> = s
        .get_stream(key, range)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

pub(super) async fn put_get_head(s: &dyn Storage) {
    s.put("c/a/one", Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert_eq!(&s.get("c/a/one").await.unwrap()[..], b"hello");
    assert_eq!(s.head("c/a/one").await.unwrap().size, 5);
    assert_eq!(collect(s, "c/a/one", None).await, b"hello");
}

pub(super) async fn missing_is_not_found(s: &dyn Storage) {
    assert!(matches!(s.get("c/missing").await, Err(Error::NotFound(_))));
    assert!(matches!(s.head("c/missing").await, Err(Error::NotFound(_))));
    assert!(matches!(
        s.get_stream("c/missing", None).await,
        Err(Error::NotFound(_))
    ));
    assert!(s.delete("c/missing").await.is_ok());
}

pub(super) async fn ranges(s: &dyn Storage) {
    let data: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
    s.put("c/range", Bytes::from(data.clone())).await.unwrap();
    assert_eq!(collect(s, "c/range", Some(10..20)).await, &data[10..20]);
    assert_eq!(
        collect(s, "c/range", Some(1000..(1 << 20))).await,
        &data[1000..]
    );
    assert_eq!(collect(s, "c/range", None).await.len(), 1 << 20);
}

pub(super) async fn put_file_moves(s: &dyn Storage, spool_dir: &Path) {
    let f = spool_dir.join("conformance-spool");
    std::fs::write(&f, b"spooled bytes").unwrap();
    s.put_file("c/blob", &f).await.unwrap();
    assert_eq!(&s.get("c/blob").await.unwrap()[..], b"spooled bytes");
    assert!(!f.exists(), "put_file consumes the spool file");
}

pub(super) async fn replace_and_delete(s: &dyn Storage) {
    s.put("c/r", Bytes::from_static(b"v1")).await.unwrap();
    s.put("c/r", Bytes::from_static(b"version2")).await.unwrap();
    assert_eq!(&s.get("c/r").await.unwrap()[..], b"version2");
    s.delete("c/r").await.unwrap();
    assert!(matches!(s.get("c/r").await, Err(Error::NotFound(_))));
}

pub(super) async fn list_prefix(s: &dyn Storage) {
    for k in ["l/x/1", "l/x/2", "l/y/1", "lz"] {
        s.put(k, Bytes::from_static(b"1")).await.unwrap();
    }
    let keys: Vec<String> = s
        .list("l/x/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["l/x/1", "l/x/2"]);
    let keys: Vec<String> = s
        .list("l/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["l/x/1", "l/x/2", "l/y/1"]);
}
