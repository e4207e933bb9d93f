//! Verified reads of content-addressed blobs (`blobs/sha256/<xx>/<hex>`): the bucket is outside
//! the mirror's control, so every byte read from it is hashed against the key.
//!
//! Two forms: into a local file ([`to_file`], for the local tier: nothing is served before the
//! whole blob matched, and a mismatch is found before any answer is sent, so the caller fetches
//! the blob again at once), and as a stream ([`stream`], without a tier: bytes flow as they
//! arrive but the last piece is held back until the digest matched, so a client of a corrupt
//! object gets a cut-off transfer, never a complete wrong one).

use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::staging::ByteStream;

/// Why a verified read failed.
pub(super) enum Failure {
    /// Reading the object or writing the file failed.
    Io(std::io::Error),
    /// The bytes hash to this digest, not the key's.
    Mismatch(String),
}

/// The hex sha256 a blob key names, or None for keys that are not content-addressed blobs.
pub(super) fn blob_hex(key: &str) -> Option<String> {
    let rest = key.strip_prefix("blobs/sha256/")?;
    let (shard, hex) = rest.split_once('/')?;
    let ok = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && hex.starts_with(shard)
        && shard.len() == 2;
    ok.then(|| hex.to_string())
}

/// Write `body` to `file` while hashing; `hex`: the digest it must have (None: any).
pub(super) async fn to_file(
    mut body: ByteStream,
    file: &Path,
    hex: Option<String>,
) -> Result<u64, Failure> {
    let mut f = tokio::fs::File::create(file).await.map_err(Failure::Io)?;
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(Failure::Io)?;
        hasher.update(&chunk);
        n += chunk.len() as u64;
        f.write_all(&chunk).await.map_err(Failure::Io)?;
    }
    f.flush().await.map_err(Failure::Io)?;
    let actual = hex::encode(hasher.finalize());
    match hex {
        Some(h) if h != actual => Err(Failure::Mismatch(format!("sha256:{actual}"))),
        _ => Ok(n),
    }
}

struct State {
    body: ByteStream,
    hasher: Sha256,
    expected: String,
    /// Offset in the object of the next byte of `body`.
    pos: u64,
    window: std::ops::Range<u64>,
    /// The last piece of the window, sent only once the digest matched.
    held: Option<Bytes>,
    on_mismatch: Option<Box<dyn FnOnce(String) + Send>>,
    done: bool,
}

/// The bytes of `window` out of the whole object `body`, hashed against `hex`. The last piece
/// is held back until the end of the object; on a mismatch the stream ends with an error
/// instead, and `on_mismatch` gets the actual digest.
pub(super) fn stream(
    body: ByteStream,
    hex: String,
    window: std::ops::Range<u64>,
    on_mismatch: impl FnOnce(String) + Send + 'static,
) -> ByteStream {
    let state = State {
        body,
        hasher: Sha256::new(),
        expected: hex,
        pos: 0,
        window,
        held: None,
        on_mismatch: Some(Box::new(on_mismatch)),
        done: false,
    };
    futures::stream::try_unfold(state, |mut s| async move {
        if s.done {
            return Ok(None);
        }
        loop {
            match s.body.next().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    s.hasher.update(&chunk);
                    let (start, end) = (s.pos, s.pos + chunk.len() as u64);
                    s.pos = end;
                    let (a, b) = (start.max(s.window.start), end.min(s.window.end));
                    if a < b {
                        let piece = chunk.slice((a - start) as usize..(b - start) as usize);
                        if let Some(prev) = s.held.replace(piece) {
                            return Ok(Some((prev, s)));
                        }
                    }
                }
                None => {
                    s.done = true;
                    let actual = hex::encode(std::mem::take(&mut s.hasher).finalize());
                    if actual != s.expected {
                        if let Some(f) = s.on_mismatch.take() {
                            f(format!("sha256:{actual}"));
                        }
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "stored blob sha256:{} is corrupt (its bytes hash to sha256:{actual}); removed",
                                s.expected
                            ),
                        ));
                    }
                    return Ok(s.held.take().map(|last| (last, s)));
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    fn body(data: &[u8], chunk: usize) -> ByteStream {
        let chunks: Vec<std::io::Result<Bytes>> = data
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(chunks).boxed()
    }

    #[tokio::test]
    async fn windows_and_mismatch() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let hex = hex::encode(Sha256::digest(&data));
        for (w, chunk) in [
            (0..10_000, 999),
            (10..20, 7),
            (9_990..10_000, 4096),
            (0..1, 1),
        ] {
            let got: Vec<Bytes> = stream(body(&data, chunk), hex.clone(), w.clone(), |_| {})
                .try_collect()
                .await
                .unwrap();
            assert_eq!(got.concat(), &data[w.start as usize..w.end as usize]);
        }
        let mut bad = data.clone();
        bad[5_000] ^= 1;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let s2 = seen.clone();
        let mut out = Vec::new();
        let mut s = stream(body(&bad, 1000), hex.clone(), 0..10_000, move |a| {
            *s2.lock().unwrap() = Some(a)
        });
        let mut failed = false;
        while let Some(c) = s.next().await {
            match c {
                Ok(c) => out.extend_from_slice(&c),
                Err(_) => failed = true,
            }
        }
        assert!(failed, "a corrupt object ends in an error");
        assert!(out.len() < bad.len(), "the last piece is never sent");
        assert!(seen.lock().unwrap().is_some());
        assert_eq!(
            blob_hex(&format!("blobs/sha256/{}/{hex}", &hex[..2])),
            Some(hex.clone())
        );
        assert_eq!(blob_hex("manifests/sha256/ab/abc"), None);
    }
}
