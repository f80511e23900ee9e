//! Users (read from `/etc/passwd`, so the static binary needs no NSS) and the envd path
//! rules: relative paths are relative to the user's home.

use std::path::{Component, Path, PathBuf};

use axum::http::HeaderMap;
use base64::Engine as _;

/// A resolved account the agent acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Numeric user id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory (absolute).
    pub home: PathBuf,
}

impl User {
    fn root() -> User {
        User { name: "root".into(), uid: 0, gid: 0, home: PathBuf::from("/root") }
    }
}

/// Finds `name` in a passwd-format text.
pub fn parse_passwd(passwd: &str, name: &str) -> Option<User> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 6 || f[0] != name {
            return None;
        }
        Some(User {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: PathBuf::from(if f[5].is_empty() { "/" } else { f[5] }),
        })
    })
}

/// Name of uid/gid `id` in a passwd- or group-format text (field 3), else the number.
pub fn id_name(db: &str, id: u32) -> String {
    db.lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 3 && f[2].parse::<u32>().ok() == Some(id)).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| id.to_string())
}

/// Resolves users; `home_override` replaces every user's home (tests, odd images).
#[derive(Clone, Debug, Default)]
pub struct Users {
    /// User for requests naming none.
    pub default_user: String,
    /// Replaces every user's home directory when set.
    pub home_override: Option<PathBuf>,
}

impl Users {
    /// The account for `name` (the default user when `None` or empty); root when the name
    /// does not exist in `/etc/passwd`.
    pub fn resolve(&self, name: Option<&str>) -> User {
        let name = name.filter(|n| !n.is_empty()).unwrap_or(&self.default_user);
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let mut user = parse_passwd(&passwd, name).or_else(|| parse_passwd(&passwd, "root")).unwrap_or_else(User::root);
        if let Some(home) = &self.home_override {
            user.home = home.clone();
        }
        user
    }

    /// The account named by an `Authorization: Basic base64(user:)` header.
    pub fn from_headers(&self, headers: &HeaderMap) -> User {
        self.resolve(basic_user(headers).as_deref())
    }
}

/// The user name in a Basic authorization header.
pub fn basic_user(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let b64 = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    Some(text.split(':').next().unwrap_or("").to_string())
}

/// Resolves `path` for `user`: `~` and relative paths are relative to the home; the
/// result is lexically normalized (no `.`/`..`).
pub fn resolve_path(user: &User, path: &str) -> PathBuf {
    let joined = if path.is_empty() || path == "~" {
        user.home.clone()
    } else if let Some(rest) = path.strip_prefix("~/") {
        user.home.join(rest)
    } else if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        user.home.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/sh\n";

    #[test]
    fn passwd_lookup_finds_uid_gid_home() {
        let u = parse_passwd(PASSWD, "user").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_path()), (1000, 1000, Path::new("/home/user")));
        assert!(parse_passwd(PASSWD, "nobody").is_none());
        assert_eq!(id_name(PASSWD, 1000), "user");
        assert_eq!(id_name(PASSWD, 7), "7");
    }

    #[test]
    fn relative_paths_are_relative_to_home() {
        let u = parse_passwd(PASSWD, "user").unwrap();
        assert_eq!(resolve_path(&u, "a/b.txt"), Path::new("/home/user/a/b.txt"));
        assert_eq!(resolve_path(&u, "~/x"), Path::new("/home/user/x"));
        assert_eq!(resolve_path(&u, "/tmp/../etc/./x"), Path::new("/etc/x"));
        assert_eq!(resolve_path(&u, ""), Path::new("/home/user"));
    }

    #[test]
    fn basic_header_names_the_user() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic dXNlcjo=".parse().unwrap());
        assert_eq!(basic_user(&h).as_deref(), Some("user"));
    }
}
