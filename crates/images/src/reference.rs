//! Parsing and normalising image references.
//!
//! Rules (a subset of the distribution reference grammar, enough for what agentbox accepts):
//! - `host` and `pause` (optionally `:latest`) are the built-in images;
//! - a first path component holding a `.` or a `:`, or equal to `localhost`, is a registry
//!   host (`127.0.0.1:5000/scout/busybox:1.0`);
//! - no tag and no digest means `:latest`;
//! - `repo@sha256:<hex>` pins a manifest digest;
//! - Docker Hub names are canonicalised without the registry (`docker.io/library/busybox` ==
//!   `busybox`), so an imported `foo:1` and `docker.io/library/foo:1` are the same image;
//! - `localhost/<name>` (no port) is a local-only namespace: it resolves from the cache, never
//!   from the network.

use std::fmt;

use crate::error::ImageError;

/// Docker Hub as written in references.
const DOCKER_HUB: &str = "docker.io";

/// One of the images the store provides without any pull or import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// The host's own userland, bind-mounted read-only.
    Host,
    /// A static `/pause` binary, the PID 1 of pod sandboxes.
    Pause,
}

impl Builtin {
    /// The reference the built-in is registered under.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Host => "host",
            Builtin::Pause => "pause",
        }
    }
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// `host` or `pause`.
    Builtin(Builtin),
    /// Anything else.
    Named(NamedRef),
}

/// A registry or locally-imported image name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedRef {
    /// Registry host (`127.0.0.1:5000`, `ghcr.io`, `localhost`); `None` means Docker Hub.
    pub registry: Option<String>,
    /// Repository path (`scout/busybox`).
    pub repository: String,
    /// Tag; `None` only when a digest is given.
    pub tag: Option<String>,
    /// Manifest digest `sha256:<hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses and normalises `reference`.
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        let bad =
            |reason: &str| ImageError::InvalidReference { reference: reference.to_owned(), reason: reason.to_owned() };
        let s = reference.trim();
        if s.is_empty() {
            return Err(bad("it is empty; give a name such as busybox:latest"));
        }
        match s {
            "host" | "host:latest" => return Ok(ImageRef::Builtin(Builtin::Host)),
            "pause" | "pause:latest" => return Ok(ImageRef::Builtin(Builtin::Pause)),
            _ => {}
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => {
                validate_digest(d).map_err(|r| bad(&r))?;
                (n, Some(d.to_owned()))
            }
            None => (s, None),
        };
        let last_slash = name.rfind('/');
        let (name, tag) = match name.rfind(':') {
            Some(colon) if last_slash.is_none_or(|sl| colon > sl) => {
                (&name[..colon], Some(name[colon + 1..].to_owned()))
            }
            _ => (name, None),
        };
        if let Some(t) = &tag {
            validate_tag(t).map_err(|r| bad(&r))?;
        }
        let (registry, mut repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (Some(first.to_owned()), rest.to_owned())
            }
            _ => (None, name.to_owned()),
        };
        if let Some(r) = &registry {
            validate_registry(r).map_err(|r| bad(&r))?;
        }
        validate_repository(&repository).map_err(|r| bad(&r))?;
        let registry = match registry {
            Some(r) if is_docker_hub(&r) => None,
            other => other,
        };
        if registry.is_none()
            && let Some(rest) = repository.strip_prefix("library/")
            && !rest.contains('/')
        {
            repository = rest.to_owned();
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (t, _) => t,
        };
        Ok(ImageRef::Named(NamedRef { registry, repository, tag, digest }))
    }

    /// The canonical string form, used as the cache key.
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Builtin(b) => f.write_str(b.name()),
            ImageRef::Named(n) => n.fmt(f),
        }
    }
}

impl fmt::Display for NamedRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl NamedRef {
    /// Whether a cache miss may go to the network (`localhost/…` never does).
    pub fn pullable(&self) -> bool {
        self.registry.as_deref() != Some("localhost")
    }

    /// The registry host to contact (`docker.io` for Docker Hub names).
    pub fn registry_host(&self) -> &str {
        self.registry.as_deref().unwrap_or(DOCKER_HUB)
    }

    /// The repository as the registry API wants it (`library/` prefix on Docker Hub).
    pub fn remote_repository(&self) -> String {
        if self.registry.is_none() && !self.repository.contains('/') {
            format!("library/{}", self.repository)
        } else {
            self.repository.clone()
        }
    }

    /// Whether the registry is on this machine and so is spoken to over plain HTTP.
    pub fn is_loopback_registry(&self) -> bool {
        self.registry.as_deref().is_some_and(is_loopback_host)
    }

    /// The same reference with the digest replaced (tag kept).
    pub fn with_digest(&self, digest: &str) -> NamedRef {
        NamedRef { digest: Some(digest.to_owned()), ..self.clone() }
    }
}

/// `127.0.0.0/8`, `localhost` and `[::1]`, with or without a port.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.split(':').next().unwrap_or("")
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// Normalises a credential's registry field (`https://127.0.0.1:5000/`, `index.docker.io`) to
/// the host form references use.
pub fn normalize_registry_host(registry: &str) -> String {
    let r = registry.trim();
    let r = r.strip_prefix("https://").or_else(|| r.strip_prefix("http://")).unwrap_or(r);
    let r = r.split('/').next().unwrap_or("").to_ascii_lowercase();
    if is_docker_hub(&r) { DOCKER_HUB.to_owned() } else { r }
}

fn is_docker_hub(r: &str) -> bool {
    matches!(r, "docker.io" | "index.docker.io" | "registry-1.docker.io")
}

/// Checks `sha256:<64 lowercase hex>`.
pub fn validate_digest(d: &str) -> Result<(), String> {
    let Some(hex) = d.strip_prefix("sha256:") else {
        return Err(format!("digest {d:?} is not of the form sha256:<64 hex digits>"));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("digest {d:?} is not of the form sha256:<64 hex digits>"));
    }
    Ok(())
}

fn validate_tag(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && (b == b'.' || b == b'-')));
    if ok {
        Ok(())
    } else {
        Err(format!("tag {t:?} must be 1-128 letters, digits, '_', '.' or '-' and not start with '.' or '-'"))
    }
}

fn validate_registry(r: &str) -> Result<(), String> {
    let ok =
        !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if ok { Ok(()) } else { Err(format!("registry host {r:?} is not a valid host[:port]")) }
}

fn validate_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("the repository name is empty".to_owned());
    }
    for comp in repo.split('/') {
        let b = comp.as_bytes();
        let ok = !b.is_empty()
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(format!(
                "repository component {comp:?} must be lowercase letters, digits and separators (. _ -), starting and ending with a letter or digit"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(s: &str) -> NamedRef {
        match ImageRef::parse(s).unwrap() {
            ImageRef::Named(n) => n,
            ImageRef::Builtin(b) => panic!("{s} parsed as builtin {b:?}"),
        }
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn builtins() {
        assert_eq!(ImageRef::parse("host").unwrap(), ImageRef::Builtin(Builtin::Host));
        assert_eq!(ImageRef::parse("host:latest").unwrap(), ImageRef::Builtin(Builtin::Host));
        assert_eq!(ImageRef::parse(" pause ").unwrap(), ImageRef::Builtin(Builtin::Pause));
        // A tag other than latest is not the builtin.
        assert!(matches!(ImageRef::parse("pause:3.9").unwrap(), ImageRef::Named(_)));
    }

    #[test]
    fn default_tag_is_latest() {
        let n = named("busybox");
        assert_eq!(n.registry, None);
        assert_eq!(n.repository, "busybox");
        assert_eq!(n.tag.as_deref(), Some("latest"));
        assert_eq!(n.to_string(), "busybox:latest");
        assert_eq!(n.remote_repository(), "library/busybox");
        assert!(n.pullable());
    }

    #[test]
    fn registry_with_port() {
        let n = named("127.0.0.1:5000/scout/busybox:1.0");
        assert_eq!(n.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(n.repository, "scout/busybox");
        assert_eq!(n.tag.as_deref(), Some("1.0"));
        assert!(n.is_loopback_registry());
        assert!(n.pullable());
        assert_eq!(n.to_string(), "127.0.0.1:5000/scout/busybox:1.0");
        let n = named("localhost:5000/x");
        assert_eq!(n.registry.as_deref(), Some("localhost:5000"));
        assert!(n.is_loopback_registry());
        assert!(n.pullable());
        let n = named("ghcr.io/a/b");
        assert!(!n.is_loopback_registry());
        assert_eq!(n.to_string(), "ghcr.io/a/b:latest");
    }

    #[test]
    fn localhost_is_local_only() {
        let n = named("localhost/foo");
        assert_eq!(n.registry.as_deref(), Some("localhost"));
        assert_eq!(n.to_string(), "localhost/foo:latest");
        assert!(!n.pullable());
    }

    #[test]
    fn docker_hub_is_canonicalised() {
        assert_eq!(named("docker.io/library/foo:1").to_string(), "foo:1");
        assert_eq!(named("index.docker.io/foo").to_string(), "foo:latest");
        assert_eq!(named("docker.io/me/foo:1").to_string(), "me/foo:1");
        assert_eq!(named("foo:1").to_string(), "foo:1");
        // A port-less "foo:1" is a tag, not a registry.
        assert_eq!(named("foo:1").registry, None);
    }

    #[test]
    fn digests() {
        let n = named(&format!("127.0.0.1:5000/x/y@{D}"));
        assert_eq!(n.tag, None);
        assert_eq!(n.digest.as_deref(), Some(D));
        assert_eq!(n.to_string(), format!("127.0.0.1:5000/x/y@{D}"));
        let n = named(&format!("x/y:1@{D}"));
        assert_eq!(n.tag.as_deref(), Some("1"));
        assert!(ImageRef::parse("x@sha256:abc").is_err());
        assert!(ImageRef::parse("x@md5:0123").is_err());
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "  ", "UPPER/case", "a//b", "a/b:", "a:-x", "-a", "a b", "x/../y"] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(matches!(err, ImageError::InvalidReference { .. }), "{bad:?} gave {err}");
        }
    }

    #[test]
    fn registry_host_normalisation() {
        assert_eq!(normalize_registry_host("https://127.0.0.1:5000/"), "127.0.0.1:5000");
        assert_eq!(normalize_registry_host("index.docker.io"), "docker.io");
        assert_eq!(normalize_registry_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize_registry_host("GHCR.io"), "ghcr.io");
        assert!(is_loopback_host("[::1]:5000"));
        assert!(is_loopback_host("127.1.2.3"));
        assert!(!is_loopback_host("128.0.0.1:5000"));
    }
}
