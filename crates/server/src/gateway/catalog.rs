//! The cluster catalog: which clusters a gateway knows, and how to reach each one's three planes.
//!
//! The catalog comes from `--clusters-config FILE` (YAML, SPEC §9):
//!
//! ```yaml
//! clusters:
//!   - id: eu
//!     name: Europe
//!     nativeUrl: http://10.0.0.5:8080
//!     e2bUrl: http://10.0.0.5:8090
//!     proxyUrl: http://10.0.0.5:8092
//!     headers: {x-internal-token: "..."}
//! ```
//!
//! The local cluster (`--cluster-id`) is always part of the catalog; an entry with the local id
//! only gives it a name. The file is re-read while the server runs ([`Catalog::watch`]): a change
//! takes effect within the poll interval, and a file that no longer parses is logged and ignored
//! (the last good catalog stays). URLs and headers never leave the server: the public view is
//! [`ClusterSummary`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use serde::Deserialize;

/// One cluster of the catalog, as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterEntry {
    /// The id used in `cluster::pool` and `cluster.uuid` (lowercase letters, digits, `-`).
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Base URL of the cluster's native API (`--listen`), e.g. `http://10.0.0.5:8080`.
    #[serde(default)]
    pub native_url: Option<String>,
    /// Base URL of the cluster's E2B API (`--e2b-listen`).
    #[serde(default)]
    pub e2b_url: Option<String>,
    /// Base URL of the cluster's data plane (`--proxy-listen`).
    #[serde(default)]
    pub proxy_url: Option<String>,
    /// Extra headers sent with every API request forwarded to this cluster (never on the data
    /// plane), e.g. a network-level token. They win over the caller's: a credential here acts for
    /// every caller of the gateway.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    clusters: Vec<ClusterEntry>,
}

/// The three planes a request can be forwarded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    Native,
    E2b,
    Proxy,
}

impl Plane {
    /// The plane's label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Plane::Native => "native",
            Plane::E2b => "e2b",
            Plane::Proxy => "proxy",
        }
    }

    /// The name of the catalog field holding this plane's URL.
    pub fn field(self) -> &'static str {
        match self {
            Plane::Native => "nativeUrl",
            Plane::E2b => "e2bUrl",
            Plane::Proxy => "proxyUrl",
        }
    }
}

impl ClusterEntry {
    /// The base URL of `plane`, without a trailing slash.
    pub fn url(&self, plane: Plane) -> Option<&str> {
        match plane {
            Plane::Native => self.native_url.as_deref(),
            Plane::E2b => self.e2b_url.as_deref(),
            Plane::Proxy => self.proxy_url.as_deref(),
        }
        .map(|u| u.trim_end_matches('/'))
    }
}

/// What `GET /v1/clusters` shows of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSummary {
    pub id: String,
    pub name: String,
    pub local: bool,
}

/// A catalog file that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read the clusters config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the clusters config {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Is `id` usable as a cluster id? It appears in sandbox ids (`id.uuid`) and pool names
/// (`id::pool`), so it must not contain `.`, `:` or `*`.
pub fn valid_cluster_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

/// Parse and check a catalog file's text. `local` is this server's cluster id.
pub fn parse(text: &str, local: &str) -> Result<BTreeMap<String, ClusterEntry>, String> {
    let file: CatalogFile = if text.trim().is_empty() {
        CatalogFile { clusters: vec![] }
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| format!("{e} (expected `clusters: [{{id, name, nativeUrl, e2bUrl, proxyUrl, headers}}]`)"))?
    };
    let mut out = BTreeMap::new();
    for c in file.clusters {
        if !valid_cluster_id(&c.id) {
            return Err(format!(
                "cluster id {:?} is not valid: use 1-63 lowercase letters, digits and '-' (no '.', ':' or '*')",
                c.id
            ));
        }
        for plane in [Plane::Native, Plane::E2b, Plane::Proxy] {
            if let Some(u) = c.url(plane) {
                let parsed: Result<axum::http::Uri, _> = u.parse();
                let ok = parsed
                    .as_ref()
                    .is_ok_and(|p| matches!(p.scheme_str(), Some("http" | "https")) && p.authority().is_some());
                if !ok {
                    return Err(format!(
                        "cluster {:?}: {} {u:?} is not an http(s) URL (e.g. http://10.0.0.5:8080)",
                        c.id,
                        plane.field()
                    ));
                }
            }
        }
        for (k, v) in &c.headers {
            if axum::http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || axum::http::HeaderValue::from_str(v).is_err()
            {
                return Err(format!("cluster {:?}: header {k:?} is not a valid HTTP header", c.id));
            }
        }
        if c.id != local && c.native_url.is_none() && c.e2b_url.is_none() && c.proxy_url.is_none() {
            return Err(format!("cluster {:?} has no nativeUrl, e2bUrl or proxyUrl: give at least one", c.id));
        }
        let id = c.id.clone();
        if out.insert(id.clone(), c).is_some() {
            return Err(format!("cluster id {id:?} appears twice"));
        }
    }
    Ok(out)
}

/// The live catalog of a server.
pub struct Catalog {
    local: String,
    path: Option<PathBuf>,
    entries: RwLock<Arc<BTreeMap<String, ClusterEntry>>>,
    /// The file text the current entries came from (to skip re-parsing an unchanged file).
    source: RwLock<Option<String>>,
}

impl Catalog {
    /// A catalog of the local cluster only (no `--clusters-config`).
    pub fn local_only(local: &str) -> Catalog {
        Catalog {
            local: local.to_owned(),
            path: None,
            entries: RwLock::new(Arc::new(BTreeMap::new())),
            source: RwLock::new(None),
        }
    }

    /// Load `path`; an unreadable or invalid file is an error (the server refuses to start).
    pub fn load(path: &Path, local: &str) -> Result<Catalog, CatalogError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| CatalogError::Read { path: path.to_owned(), source })?;
        let entries = parse(&text, local).map_err(|reason| CatalogError::Invalid { path: path.to_owned(), reason })?;
        Ok(Catalog {
            local: local.to_owned(),
            path: Some(path.to_owned()),
            entries: RwLock::new(Arc::new(entries)),
            source: RwLock::new(Some(text)),
        })
    }

    /// This server's cluster id.
    pub fn local_id(&self) -> &str {
        &self.local
    }

    /// Is `id` this server's cluster?
    pub fn is_local(&self, id: &str) -> bool {
        id == self.local
    }

    /// The entry of a remote cluster (never the local one).
    pub fn remote(&self, id: &str) -> Option<ClusterEntry> {
        if self.is_local(id) {
            return None;
        }
        self.entries.read().get(id).cloned()
    }

    /// Remote clusters, sorted by id.
    pub fn remotes(&self) -> Vec<ClusterEntry> {
        self.entries.read().values().filter(|c| !self.is_local(&c.id)).cloned().collect()
    }

    /// Every known cluster id (local included), sorted.
    pub fn known_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.entries.read().keys().cloned().collect();
        if !ids.contains(&self.local) {
            ids.push(self.local.clone());
        }
        ids.sort();
        ids
    }

    /// The public view: every cluster (local included) sorted by id, without URLs or headers.
    pub fn summaries(&self) -> Vec<ClusterSummary> {
        let entries = self.entries.read().clone();
        let mut out: Vec<ClusterSummary> = entries
            .values()
            .map(|c| ClusterSummary {
                id: c.id.clone(),
                name: c.name.clone().unwrap_or_default(),
                local: self.is_local(&c.id),
            })
            .collect();
        if !entries.contains_key(&self.local) {
            out.push(ClusterSummary { id: self.local.clone(), name: self.local.clone(), local: true });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Re-read the file now. `Ok(true)` when the catalog changed; an invalid file leaves the
    /// catalog as it was and is returned as an error.
    pub fn reload(&self) -> Result<bool, CatalogError> {
        let Some(path) = &self.path else { return Ok(false) };
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read { path: path.clone(), source })?;
        if self.source.read().as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        let entries =
            parse(&text, &self.local).map_err(|reason| CatalogError::Invalid { path: path.clone(), reason })?;
        *self.entries.write() = Arc::new(entries);
        *self.source.write() = Some(text);
        Ok(true)
    }

    /// Poll the file every `interval` and apply changes, until the catalog is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        if self.path.is_none() {
            return;
        }
        let weak: Weak<Catalog> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            loop {
                tokio::time::sleep(interval).await;
                let Some(cat) = weak.upgrade() else { return };
                match cat.reload() {
                    Ok(true) => {
                        last_error = None;
                        tracing::info!(clusters = ?cat.known_ids(), "clusters config reloaded");
                    }
                    Ok(false) => last_error = None,
                    Err(e) => {
                        let msg = e.to_string();
                        if last_error.as_deref() != Some(msg.as_str()) {
                            tracing::warn!(error = %msg, "clusters config not reloaded; keeping the previous catalog");
                            last_error = Some(msg);
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "clusters:\n  - id: eu\n    name: Europe\n    nativeUrl: http://127.0.0.1:1/\n    headers: {x-k: v}\n  - id: us\n    e2bUrl: https://us.example:443\n";

    #[test]
    fn parses_and_sorts_with_the_local_cluster_always_present() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, TWO).unwrap();
        let c = Catalog::load(&p, "home").unwrap();
        let s = c.summaries();
        let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["eu", "home", "us"]);
        assert!(s[1].local && !s[0].local);
        assert_eq!(s[0].name, "Europe");
        assert_eq!(c.remote("eu").unwrap().url(Plane::Native), Some("http://127.0.0.1:1"));
        assert_eq!(c.remote("eu").unwrap().url(Plane::Proxy), None);
        assert!(c.remote("home").is_none());
        assert!(c.remote("nope").is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let bad = [
            ("clusters:\n  - id: Eu.1\n    nativeUrl: http://x\n", "not valid"),
            ("clusters:\n  - id: eu\n    nativeUrl: ftp://x\n", "not an http(s) URL"),
            ("clusters:\n  - id: eu\n", "no nativeUrl"),
            ("clusters:\n  - id: eu\n    nativeUrl: http://x\n  - id: eu\n    nativeUrl: http://y\n", "twice"),
            ("clusters:\n  - id: eu\n    nativeUrl: http://x\n    colour: red\n", "unknown field"),
            ("clusters:\n  - id: eu\n    nativeUrl: http://x\n    headers: {\"bad header\": v}\n", "header"),
        ];
        for (text, want) in bad {
            let e = parse(text, "home").unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // The local cluster may be listed without URLs (to name it).
        assert!(parse("clusters:\n  - id: home\n    name: Home\n", "home").is_ok());
    }

    #[test]
    fn reload_applies_changes_and_keeps_the_last_good_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        std::fs::write(&p, TWO).unwrap();
        let c = Catalog::load(&p, "home").unwrap();
        assert!(!c.reload().unwrap(), "unchanged file");
        std::fs::write(&p, "clusters:\n  - id: ap\n    nativeUrl: http://127.0.0.1:2\n").unwrap();
        assert!(c.reload().unwrap());
        assert_eq!(c.known_ids(), ["ap", "home"]);
        std::fs::write(&p, "clusters: [{id: 'x y'}]").unwrap();
        assert!(c.reload().is_err());
        assert_eq!(c.known_ids(), ["ap", "home"], "an invalid file keeps the previous catalog");
    }
}
