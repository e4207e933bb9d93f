//! The output of a generator: files and notes, and how they are printed or written.

use std::path::{Path, PathBuf};

use super::Error;

/// One file of the output, its path relative to `--write DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct File {
    pub path: PathBuf,
    pub contents: String,
    /// Holds credentials: written readable by its owner only (0600).
    pub private: bool,
}

/// What a generator produced: files, and notes for the operator (printed on stderr).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Output {
    pub files: Vec<File>,
    pub notes: Vec<String>,
}

/// One file is printed as it is; several get a `# path` line before each (only TOML and YAML
/// produce several, and `#` starts a comment in both).
pub(super) fn render_for_stdout(files: &[File]) -> String {
    if let [only] = files {
        return only.contents.clone();
    }
    let mut s = String::new();
    for (i, f) in files.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&format!("# {}\n{}", f.path.display(), f.contents));
    }
    s
}

pub(super) fn write_files(dir: &Path, files: &[File]) -> Result<(), Error> {
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| Error::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        write_file(&path, f).map_err(|source| Error::Write {
            path: path.clone(),
            source,
        })?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `--hold`: wait for SIGTERM or SIGINT, then remove each of `files` under `dir` whose contents are
/// still what was written (a file someone changed since is theirs now) and the directories that
/// leaves empty, up to `dir`.
pub(super) fn hold_then_remove(dir: &Path, files: &[File]) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| Error::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        eprintln!("holding; the files are removed on SIGTERM or SIGINT");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        Ok::<(), Error>(())
    })?;
    for f in files {
        let path = dir.join(&f.path);
        match std::fs::read_to_string(&path) {
            Ok(now) if now == f.contents => {
                std::fs::remove_file(&path).map_err(|source| Error::Write {
                    path: path.clone(),
                    source,
                })?;
                eprintln!("removed {}", path.display());
            }
            Ok(_) => eprintln!("kept {} (changed since it was written)", path.display()),
            Err(_) => continue,
        }
        let mut parent = path.parent();
        while let Some(p) = parent.filter(|p| *p != dir && p.starts_with(dir)) {
            if std::fs::remove_dir(p).is_err() {
                break; // not empty (or gone): leave it and everything above it
            }
            parent = p.parent();
        }
    }
    Ok(())
}

/// Write one file; a private one is created 0600 (and made 0600 if it existed).
fn write_file(path: &Path, f: &File) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode = if f.private { 0o600 } else { 0o644 };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    if f.private {
        out.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    out.write_all(f.contents.as_bytes())
}
