//! The upstream clients of one cache, by name.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{Error, Result};
use crate::config::{Config, UpstreamConfig};
use crate::upstream::Upstream;

/// Every configured upstream's client; with `allow_any_upstream`, one is made on first use for
/// any other registry host.
pub(crate) struct Upstreams {
    map: RwLock<HashMap<String, Arc<Upstream>>>,
    allow_any: bool,
}

impl Upstreams {
    pub(crate) fn new(config: &Config) -> Result<Upstreams> {
        let mut map = HashMap::new();
        for u in &config.upstreams {
            map.insert(u.name.clone(), Arc::new(Upstream::new(u)?));
        }
        Ok(Upstreams {
            map: RwLock::new(map),
            allow_any: config.allow_any_upstream,
        })
    }

    /// The client for upstream `name`.
    pub(crate) fn get(&self, name: &str) -> Result<Arc<Upstream>> {
        if let Some(u) = self.map.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(u.clone());
        }
        if !self.allow_any {
            return Err(Error::UnknownUpstream(name.to_string()));
        }
        let cfg = UpstreamConfig {
            name: name.to_string(),
            ..Default::default()
        };
        let u = Arc::new(Upstream::new(&cfg)?);
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        Ok(map.entry(name.to_string()).or_insert(u).clone())
    }

    /// The health of every client, by name.
    pub(crate) fn health(&self) -> Vec<crate::upstream::HealthReport> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map.values().map(|u| u.health()).collect();
        all.sort_by(|a, b| a.upstream.cmp(&b.upstream));
        all
    }

    /// Every client made so far, by name.
    pub(crate) fn all(&self) -> Vec<Arc<Upstream>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map.values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// The client for `name` if one exists already (never makes one).
    pub(crate) fn existing(&self, name: &str) -> Option<Arc<Upstream>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}
