//! `[[prefetch]]`: image lists `regmirror serve` pulls into its cache on a schedule, so that
//! tags like `:latest` stay warm.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

/// One scheduled prefetch list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefetchSchedule {
    /// Name shown on the status page and in the `schedule` label on `/metrics` (default:
    /// `prefetch[N]`).
    pub name: Option<String>,
    /// Image references, e.g. "registry.k8s.io/pause:3.9", "busybox:latest".
    pub images: Vec<String>,
    /// A file of references, one a line, `#` comments (as `regmirror prefetch -f`); read again
    /// before every run, so edits apply without a restart. Relative to the working directory.
    pub file: Option<PathBuf>,
    /// Seconds between the start of one run and the next (the first run starts with the server).
    pub interval_secs: u64,
    /// Platforms of multi-platform images, e.g. ["linux/amd64", "linux/arm64"]; `["all"]` for
    /// every entry; empty: the server's own platform.
    pub platforms: Vec<String>,
    /// Most blobs fetched at once by one run.
    pub concurrency: usize,
}

/// Default `interval_secs`: hourly.
pub const DEFAULT_PREFETCH_INTERVAL_SECS: u64 = 3600;

impl Default for PrefetchSchedule {
    fn default() -> Self {
        PrefetchSchedule {
            name: None,
            images: Vec::new(),
            file: None,
            interval_secs: DEFAULT_PREFETCH_INTERVAL_SECS,
            platforms: Vec::new(),
            concurrency: 4,
        }
    }
}

impl PrefetchSchedule {
    /// The name it is shown by.
    pub fn display_name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("prefetch[{index}]"))
    }
}

/// Check every entry; the key names the entry, e.g. `prefetch[1].interval_secs`.
pub(crate) fn validate(entries: &[PrefetchSchedule]) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, p) in entries.iter().enumerate() {
        let key = |f: &str| format!("prefetch[{i}].{f}");
        if !names.insert(p.display_name(i)) {
            return Err(invalid(
                key("name"),
                "another [[prefetch]] has the same name",
            ));
        }
        if p.interval_secs == 0 {
            return Err(invalid(
                key("interval_secs"),
                "must be at least 1 (seconds between runs, e.g. 3600 for hourly)",
            ));
        }
        if p.concurrency == 0 {
            return Err(invalid(key("concurrency"), "must be at least 1"));
        }
        if p.images.is_empty() && p.file.is_none() {
            return Err(invalid(
                key("images"),
                "name images to prefetch (`images = [...]`) or a list `file`",
            ));
        }
        for r in &p.images {
            crate::oci::ImageRef::parse(r)
                .map_err(|e| invalid(key("images"), format!("{r:?}: {e}")))?;
        }
        if let Some(f) = &p.file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| invalid(key("file"), format!("cannot read {}: {e}", f.display())))?;
            for r in crate::prefetch::inputs::parse_list(&text) {
                crate::oci::ImageRef::parse(&r)
                    .map_err(|e| invalid(key("file"), format!("{}: {r:?}: {e}", f.display())))?;
            }
        }
        for pl in &p.platforms {
            let parts: Vec<&str> = pl.split('/').collect();
            let ok = pl == "all"
                || (matches!(parts.len(), 2 | 3) && parts.iter().all(|s| !s.trim().is_empty()));
            if !ok {
                return Err(invalid(
                    key("platforms"),
                    format!(
                        "{pl:?} is not os/architecture[/variant] (e.g. linux/amd64) or \"all\""
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<(), String> {
        let c: super::super::Config = toml::from_str(t).map_err(|e| e.to_string())?;
        validate(&c.prefetch).map_err(|e| e.to_string())
    }

    #[test]
    fn entries_are_checked_by_key() {
        assert!(parse("[[prefetch]]\nimages = [\"busybox:1\"]\n").is_ok());
        let cases = [
            ("[[prefetch]]\nimages = [\"busybox\"]\ninterval_secs = 0\n", "prefetch[0].interval_secs"),
            ("[[prefetch]]\ninterval_secs = 5\n", "prefetch[0].images"),
            ("[[prefetch]]\nimages = [\"UPPER/x\"]\n", "prefetch[0].images"),
            ("[[prefetch]]\nimages = [\"a\"]\nplatforms = [\"linux\"]\n", "prefetch[0].platforms"),
            ("[[prefetch]]\nfile = \"/nonexistent/list.txt\"\n", "prefetch[0].file"),
            ("[[prefetch]]\nimages = [\"a\"]\n[[prefetch]]\nimages = [\"b\"]\nname = \"prefetch[0]\"\n", "prefetch[1].name"),
            ("[[prefetch]]\nimages = [\"a\"]\nevery = 3\n", "unknown field `every`"),
        ];
        for (t, want) in cases {
            let err = parse(t).unwrap_err();
            assert!(err.contains(want), "{t}: {err}");
        }
    }
}
