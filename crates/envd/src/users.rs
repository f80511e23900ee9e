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

    /// The account named by an `Authorization: Basic base64(user:)` header, or by agentbox's
    /// own `X-Agentbox-User: uid[:gid]` (numeric ids, as the native exec API takes them; it
    /// wins over the Basic header).
    pub fn from_headers(&self, headers: &HeaderMap) -> User {
        if let Some(ids) = headers.get(NUMERIC_USER_HEADER).and_then(|v| v.to_str().ok())
            && let Some(user) = self.numeric(ids)
        {
            return user;
        }
        self.resolve(basic_user(headers).as_deref())
    }

    /// `uid` or `uid:gid`: the passwd entry of that uid when there is one (its name and home;
    /// its primary group unless a gid is given), else a nameless account with home `/`.
    pub fn numeric(&self, ids: &str) -> Option<User> {
        let (uid, gid) = match ids.trim().split_once(':') {
            Some((u, g)) => (u.parse::<u32>().ok()?, Some(g.parse::<u32>().ok()?)),
            None => (ids.trim().parse::<u32>().ok()?, None),
        };
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let known = passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| parse_passwd(line, f[0])).flatten()
        });
        let mut user = known.unwrap_or_else(|| User { name: uid.to_string(), uid, gid: uid, home: PathBuf::from("/") });
        if let Some(g) = gid {
            user.gid = g;
        }
        if let Some(home) = &self.home_override {
            user.home = home.clone();
        }
        Some(user)
    }
}

/// Header naming the user by numeric `uid[:gid]` (an agentbox extension for the native API).
pub const NUMERIC_USER_HEADER: &str = "x-agentbox-user";

/// Header asking that a process started without a `cwd` run in the agent's own working
/// directory (the container's, as the native exec API defines it) instead of the user's home.
pub const INHERIT_CWD_HEADER: &str = "x-agentbox-inherit-cwd";

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
    fn numeric_ids_name_known_and_unknown_accounts() {
        let users = Users { default_user: "root".into(), home_override: None };
        let root = users.numeric("0").expect("uid 0");
        assert_eq!((root.name.as_str(), root.uid, root.gid), ("root", 0, 0), "uid 0 is root in /etc/passwd");
        let anon = users.numeric("54321:7").expect("uid:gid");
        assert_eq!((anon.uid, anon.gid, anon.home.as_path()), (54321, 7, Path::new("/")));
        assert!(users.numeric("root").is_none() && users.numeric("1:x").is_none(), "names are not numeric ids");
        let mut h = HeaderMap::new();
        h.insert(NUMERIC_USER_HEADER, "54321".parse().unwrap());
        assert_eq!(users.from_headers(&h).uid, 54321, "the numeric header wins");
    }

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
