//! Local-disk storage: objects are files under a root directory, written by rename.
//!
//! Small objects are written to `<root>/tmp/` and renamed into place, so a crash leaves at worst a
//! stray temporary file (removed by [`FsStorage::clean_tmp`] at start-up), never a partial object.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use super::{check_key, ByteStream, Error, ObjectMeta, Result, Storage};
use crate::staging::{positional_stream, temp_name};

/// Storage in a directory on local disk.
#[derive(Debug, Clone)]
pub(super) struct FsStorage {
    root: PathBuf,
}

impl FsStorage {
    /// Open (creating if needed) a store rooted at `root`.
    pub(super) async fn open(root: impl Into<PathBuf>) -> Result<FsStorage> {
        let root = root.into();
        let tmp = root.join("tmp");
        super::create_dir(&tmp, &tmp.display().to_string()).await?;
        Ok(FsStorage { root })
    }

    /// Directory for spool and temporary files; on the same filesystem as the objects so that
    /// committing is a rename.
    pub(super) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Remove temporary files left by a previous process (crash or kill). Returns how many.
    pub(super) async fn clean_tmp(&self) -> Result<usize> {
        let dir = self.tmp_dir();
        let mut n = 0;
        let mut entries = tokio::fs::read_dir(&dir).await.map_err(|e| io(&dir, e))?;
        while let Some(entry) = entries.next_entry().await.map_err(|e| io(&dir, e))? {
            if tokio::fs::remove_file(entry.path()).await.is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Open an object for reading, with its length.
    async fn open_object(&self, key: &str) -> Result<(std::fs::File, u64)> {
        let path = self.path(key)?;
        let opened = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&path)?;
            let len = f.metadata()?.len();
            Ok::<_, std::io::Error>((f, len))
        })
        .await
        .map_err(|e| Error::Io {
            key: key.to_string(),
            source: std::io::Error::other(e),
        })?;
        opened.map_err(|e| map_err(key, e))
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    async fn ensure_parent(&self, path: &Path, key: &str) -> Result<()> {
        if let Some(parent) = path.parent() {
            super::create_dir(parent, key).await?;
        }
        Ok(())
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        key: path.display().to_string(),
        source,
    }
}

fn map_err(key: &str, source: std::io::Error) -> Error {
    if source.kind() == std::io::ErrorKind::NotFound {
        Error::NotFound(key.to_string())
    } else {
        Error::Io {
            key: key.to_string(),
            source,
        }
    }
}

fn meta(key: &str, m: &std::fs::Metadata) -> ObjectMeta {
    let modified = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ObjectMeta {
        key: key.to_string(),
        size: m.len(),
        modified,
    }
}

#[async_trait]
impl Storage for FsStorage {
    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        let m = tokio::fs::metadata(&path)
            .await
            .map_err(|e| map_err(key, e))?;
        if !m.is_file() {
            return Err(Error::NotFound(key.to_string()));
        }
        Ok(meta(key, &m))
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        tokio::fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| map_err(key, e))
    }

    async fn get_stream(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
        let (file, len) = self.open_object(key).await?;
        let r = range.unwrap_or(0..len);
        Ok(positional_stream(Arc::new(file), r.start, r.end.min(len)))
    }

    async fn open_file(&self, key: &str) -> Result<Option<(std::fs::File, u64)>> {
        self.open_object(key).await.map(Some)
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(key)?;
        self.ensure_parent(&path, key).await?;
        let tmp = self.tmp_dir().join(temp_name("put"));
        let write = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            f.write_all(&bytes).await?;
            f.flush().await?;
            tokio::fs::rename(&tmp, &path).await
        };
        if let Err(source) = write.await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(Error::Io {
                key: key.to_string(),
                source,
            });
        }
        Ok(())
    }

    async fn put_file(&self, key: &str, file: &Path) -> Result<()> {
        let path = self.path(key)?;
        self.ensure_parent(&path, key).await?;
        match tokio::fs::rename(file, &path).await {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(18) => {
                // EXDEV: the spool is on another filesystem; copy to our tmp, then rename.
                let tmp = self.tmp_dir().join(temp_name("xdev"));
                let copied = async {
                    tokio::fs::copy(file, &tmp).await?;
                    tokio::fs::rename(&tmp, &path).await?;
                    tokio::fs::remove_file(file).await
                };
                copied.await.map_err(|source| {
                    let _ = std::fs::remove_file(&tmp);
                    Error::Io {
                        key: key.to_string(),
                        source,
                    }
                })
            }
            Err(source) => Err(Error::Io {
                key: key.to_string(),
                source,
            }),
        }
    }

    async fn touch(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        let now = std::time::SystemTime::now();
        let done = tokio::task::spawn_blocking(move || {
            std::fs::File::options()
                .write(true)
                .open(&path)?
                .set_modified(now)
        })
        .await;
        match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Ok(Err(source)) => Err(Error::Io {
                key: key.to_string(),
                source,
            }),
            Err(e) => Err(Error::Io {
                key: key.to_string(),
                source: std::io::Error::other(e),
            }),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io {
                key: key.to_string(),
                source,
            }),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || list_blocking(&root, &prefix))
            .await
            .map_err(|e| Error::Io {
                key: "list".into(),
                source: std::io::Error::other(e),
            })?
    }
}

/// Walk the directory holding `prefix` and return matching files (skipping `tmp/`).
fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>> {
    let start_dir = match prefix.rfind('/') {
        Some(i) => root.join(&prefix[..i]),
        None => root.to_path_buf(),
    };
    let mut out = Vec::new();
    let mut stack = vec![start_dir];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io(&dir, e))?;
            let path = entry.path();
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let key = rel.to_string_lossy().to_string();
            if key == "tmp" {
                continue;
            }
            let m = entry.metadata().map_err(|e| io(&path, e))?;
            if m.is_dir() {
                if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                    stack.push(path);
                }
            } else if key.starts_with(prefix) {
                out.push(meta(&key, &m));
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).await.unwrap();
        let spool = s.tmp_dir();
        super::super::conformance::run_all(&s, &spool).await;
    }

    #[tokio::test]
    async fn keys_cannot_escape_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path().join("store")).await.unwrap();
        assert!(matches!(
            s.put("../escape", Bytes::from_static(b"x")).await,
            Err(Error::InvalidKey(_))
        ));
        assert!(!dir.path().join("escape").exists());
    }

    #[tokio::test]
    async fn clean_tmp_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStorage::open(dir.path()).await.unwrap();
        std::fs::write(s.tmp_dir().join("fill-1"), b"partial").unwrap();
        assert_eq!(s.clean_tmp().await.unwrap(), 1);
        assert_eq!(std::fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    }
}
