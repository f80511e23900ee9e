//! API key material: token format, hashing, and sealing of the recoverable raw token.
//!
//! A key is `agbx_` + 64 lowercase hex (32 random bytes). The store keeps its SHA-256 (hex) for
//! authentication, and the raw token sealed with ChaCha20-Poly1305 under the *server key* — 32
//! random bytes in a file of the data directory (mode 0600, created on first start) — so that the
//! owner can recover it later. Losing the server key file loses only recoverability, never access.
//! The alias `e2b_<same 64 hex>` authenticates as the same key.

use std::io::Write;
use std::path::Path;

use agentbox_core::identity::{API_KEY_PREFIX, E2B_KEY_PREFIX};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Length of the hex part of a token.
const TOKEN_HEX_LEN: usize = 64;
const NONCE_LEN: usize = 12;

/// A fresh random raw token (`agbx_<64 hex>`).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{API_KEY_PREFIX}{}", hex::encode(bytes))
}

/// The canonical (`agbx_…`) form of a presented token, accepting the `e2b_` alias. `None` when the
/// string is not shaped like one of our keys.
pub fn canonical_token(presented: &str) -> Option<String> {
    let hex_part = presented.strip_prefix(API_KEY_PREFIX).or_else(|| presented.strip_prefix(E2B_KEY_PREFIX))?;
    if hex_part.len() != TOKEN_HEX_LEN || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("{API_KEY_PREFIX}{}", hex_part.to_ascii_lowercase()))
}

/// SHA-256 of the canonical token, lowercase hex.
pub fn hash_token(canonical: &str) -> String {
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// Is `s` a lowercase or uppercase hex string of exactly `len` characters?
pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The server key: seals and opens recoverable raw tokens.
#[derive(Clone)]
pub struct ServerKey {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerKey(..)")
    }
}

impl ServerKey {
    pub fn from_bytes(bytes: [u8; 32]) -> ServerKey {
        ServerKey { cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)) }
    }

    /// A random key that lives only in memory (tests, or a server without a data dir).
    pub fn ephemeral() -> ServerKey {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        ServerKey::from_bytes(b)
    }

    /// Load the key file at `path`, creating it (32 random bytes, mode 0600) if it does not exist.
    /// Creation is atomic and never replaces an existing file: the bytes go to a uniquely named
    /// temporary file in the same directory, which is then linked into place only if no file is
    /// there yet (two servers starting on one data dir end up with the same key), and the directory
    /// is synced so the key survives a crash right after creation.
    pub fn load_or_create(path: &Path) -> std::io::Result<ServerKey> {
        loop {
            match std::fs::read(path) {
                Ok(bytes) => {
                    let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "server key file {} must hold exactly 32 bytes (it has {}); restore it from a backup, or \
                                 move it away to create a new one (stored API keys then lose their recoverable raw token)",
                                path.display(),
                                bytes.len()
                            ),
                        )
                    })?;
                    use std::os::unix::fs::PermissionsExt;
                    if let Ok(m) = std::fs::metadata(path)
                        && m.permissions().mode() & 0o077 != 0
                    {
                        tracing::warn!(path = %path.display(), "the server key file is readable by others; chmod 600 it");
                    }
                    return Ok(ServerKey::from_bytes(arr));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                    std::fs::create_dir_all(dir)?;
                    let mut b = [0u8; 32];
                    rand::rngs::OsRng.fill_bytes(&mut b);
                    let mut tmp = tempfile::Builder::new().prefix(".server-key-").tempfile_in(dir)?;
                    {
                        use std::os::unix::fs::PermissionsExt;
                        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
                    }
                    tmp.write_all(&b)?;
                    tmp.as_file().sync_all()?;
                    match tmp.persist_noclobber(path) {
                        Ok(_) => {
                            std::fs::File::open(dir)?.sync_all()?;
                            return Ok(ServerKey::from_bytes(b));
                        }
                        // Someone else created it first: use theirs.
                        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(e.error),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Seal `plaintext` bound to `context` (the key id: a sealed token copied onto another key
    /// does not open), with a fresh random nonce per call: hex of nonce ‖ ciphertext+tag.
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: context.as_bytes() })
            .expect("chacha20poly1305 encryption of a short message cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        hex::encode(out)
    }

    /// Open what [`ServerKey::seal`] produced for `context`; `None` if it was sealed under another
    /// key or context, or altered.
    pub fn open(&self, sealed: &str, context: &str) -> Option<String> {
        let raw = hex::decode(sealed).ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let pt = self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: context.as_bytes() }).ok()?;
        String::from_utf8(pt).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_documented_shape_and_the_alias_maps_to_the_same_hash() {
        let t = generate_token();
        assert!(t.starts_with("agbx_") && t.len() == 5 + 64, "{t}");
        assert_ne!(t, generate_token());
        let alias = format!("e2b_{}", &t[5..]);
        assert_eq!(canonical_token(&alias).as_deref(), Some(t.as_str()));
        assert_eq!(hash_token(&canonical_token(&alias).unwrap()), hash_token(&t));
        assert_eq!(canonical_token("agbx_123"), None);
        assert_eq!(canonical_token(&format!("xyz_{}", &t[5..])), None);
        assert_eq!(canonical_token(&format!("agbx_{}", "g".repeat(64))), None);
    }

    #[test]
    fn sealed_tokens_open_only_with_the_same_key_and_never_contain_the_plaintext() {
        let k = ServerKey::ephemeral();
        let t = generate_token();
        let s1 = k.seal(&t, "agbx-1");
        let s2 = k.seal(&t, "agbx-1");
        assert_ne!(s1, s2, "fresh nonce per seal");
        assert!(!s1.contains(&t[5..]));
        assert_eq!(k.open(&s1, "agbx-1").as_deref(), Some(t.as_str()));
        assert_eq!(k.open(&s1, "agbx-2"), None, "bound to its key id");
        assert_eq!(ServerKey::ephemeral().open(&s1, "agbx-1"), None);
        let mut tampered = s1.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(k.open(std::str::from_utf8(&tampered).unwrap(), "agbx-1"), None);
        assert_eq!(k.open("zz", "agbx-1"), None);
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/server.key");
        let k1 = ServerKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = k1.seal("x", "c");
        let k2 = ServerKey::load_or_create(&path).unwrap();
        assert_eq!(k2.open(&sealed, "c").as_deref(), Some("x"));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        std::fs::write(&path, b"short").unwrap();
        let err = ServerKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
    }
}
