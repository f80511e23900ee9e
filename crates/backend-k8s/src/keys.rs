//! API keys stored as Secrets (one per key) in the server's namespace, so that every replica of
//! the server and `kubectl` see the same keys and the raw token is protected by RBAC on Secrets.
//!
//! A key's Secret is named `agentbox-apikey-<first 16 hex of the token hash>` (the key id is
//! `agbx-<the same 16 hex>`), labelled `agentbox.dev/type=api-key` and
//! `agentbox.dev/key-hash=<first 63 hex of the hash>` (a label value holds at most 63 characters;
//! the lookup compares the full hash stored in the data), plus `agentbox.dev/team` and
//! `agentbox.dev/user` for `kubectl get secrets -l`. Data: `record` (the [`ApiKeyRecord`] as JSON,
//! without the sealed token) and `sealed-token` (the raw token sealed with the server key, when the
//! server saw it). The raw token is never stored in plain text.

use std::collections::BTreeMap;

use agentbox_core::identity::ApiKeyRecord;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

use crate::claim::is_label_value;
use crate::error::{KubeError, is_code};
use crate::labels;

/// Label marking the Secret of an API key.
pub const TYPE_LABEL: &str = "agentbox.dev/type";
/// Value of [`TYPE_LABEL`] on key Secrets.
pub const TYPE_API_KEY: &str = "api-key";
/// Label with the first 63 hex characters of the token's SHA-256.
pub const HASH_LABEL: &str = "agentbox.dev/key-hash";
/// Data entry with the record as JSON.
pub const RECORD_KEY: &str = "record";
/// Data entry with the sealed raw token.
pub const SEALED_KEY: &str = "sealed-token";

/// The Secret name of a key, from its token hash.
pub fn secret_name(token_hash: &str) -> String {
    format!("agentbox-apikey-{}", &token_hash[..token_hash.len().min(16)])
}

/// The Secret name of the key with `key_id` (`agbx-<16 lowercase hex>`); `None` for anything
/// else, so that a key id from a request never reaches a URL unchecked.
fn secret_of_key_id(key_id: &str) -> Option<String> {
    let hex = key_id.strip_prefix("agbx-")?;
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then(|| secret_name(hex))
}

fn hash_label(token_hash: &str) -> &str {
    &token_hash[..token_hash.len().min(63)]
}

fn check_hash(token_hash: &str) -> Result<(), KubeError> {
    if token_hash.len() == 64 && token_hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(KubeError::Invalid(format!("token hash {token_hash:?} is not 64 lowercase hex characters")))
    }
}

/// The Secret of `k` (pure; see the module docs for the layout).
pub fn key_secret(namespace: &str, k: &ApiKeyRecord) -> Result<Secret, KubeError> {
    check_hash(&k.token_hash)?;
    let mut record = k.clone();
    let sealed = record.sealed_token.take();
    let mut l = BTreeMap::from([
        (TYPE_LABEL.to_owned(), TYPE_API_KEY.to_owned()),
        (HASH_LABEL.to_owned(), hash_label(&k.token_hash).to_owned()),
        (labels::MANAGED_BY.to_owned(), labels::MANAGED_BY_VALUE.to_owned()),
    ]);
    // Team and user only when they are valid label values (the record has them anyway).
    for (key, v) in [(labels::TEAM, &k.team), (labels::USER, &k.user)] {
        if !v.is_empty() && is_label_value(v) {
            l.insert(key.to_owned(), v.clone());
        }
    }
    let mut data = BTreeMap::from([(
        RECORD_KEY.to_owned(),
        ByteString(serde_json::to_vec(&record).expect("a record serializes")),
    )]);
    if let Some(s) = sealed {
        data.insert(SEALED_KEY.to_owned(), ByteString(s.into_bytes()));
    }
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&k.token_hash)),
            namespace: Some(namespace.to_owned()),
            labels: Some(l),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        immutable: None,
        data: Some(data),
        string_data: None,
    })
}

/// The record in a key Secret.
pub fn record_of(s: &Secret) -> Result<ApiKeyRecord, KubeError> {
    let name = s.metadata.name.clone().unwrap_or_default();
    let bad = |m: String| KubeError::BadObject(format!("secret {name}: {m}"));
    let data = s.data.as_ref().ok_or_else(|| bad("no data".into()))?;
    let raw = data.get(RECORD_KEY).ok_or_else(|| bad(format!("no {RECORD_KEY} entry")))?;
    let mut record: ApiKeyRecord = serde_json::from_slice(&raw.0).map_err(|e| bad(e.to_string()))?;
    record.sealed_token = match data.get(SEALED_KEY) {
        Some(b) => Some(String::from_utf8(b.0.clone()).map_err(|e| bad(e.to_string()))?),
        None => None,
    };
    Ok(record)
}

/// API keys as Secrets in one namespace.
pub struct SecretKeyStore {
    api: Api<Secret>,
    namespace: String,
}

impl SecretKeyStore {
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        let namespace = namespace.into();
        SecretKeyStore { api: Api::namespaced(client, &namespace), namespace }
    }

    /// Store a new key; `Ok(false)` when a key with the same token hash exists (nothing changed).
    pub async fn create(&self, k: &ApiKeyRecord) -> Result<bool, KubeError> {
        match self.api.create(&PostParams::default(), &key_secret(&self.namespace, k)?).await {
            Ok(_) => Ok(true),
            Err(e) if is_code(&e, 409) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Create or overwrite the key (server-side apply; idempotent).
    pub async fn put(&self, k: &ApiKeyRecord) -> Result<(), KubeError> {
        let secret = key_secret(&self.namespace, k)?;
        let pp = PatchParams::apply(crate::backend::FIELD_MANAGER).force();
        self.api.patch(&secret_name(&k.token_hash), &pp, &Patch::Apply(&secret)).await?;
        Ok(())
    }

    /// The key whose token hashes to `token_hash`: Secrets listed by the hash label, then the
    /// full hash compared (the label holds 63 of the 64 characters).
    pub async fn find_by_hash(&self, token_hash: &str) -> Result<Option<ApiKeyRecord>, KubeError> {
        check_hash(token_hash)?;
        let lp = ListParams::default()
            .labels(&format!("{TYPE_LABEL}={TYPE_API_KEY},{HASH_LABEL}={}", hash_label(token_hash)));
        for s in self.api.list(&lp).await?.items {
            let record = record_of(&s)?;
            if record.token_hash == token_hash {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Every key, ordered by key id. A Secret that does not decode is skipped with a warning.
    pub async fn list(&self) -> Result<Vec<ApiKeyRecord>, KubeError> {
        let lp = ListParams::default().labels(&format!("{TYPE_LABEL}={TYPE_API_KEY}"));
        let mut out: Vec<ApiKeyRecord> = Vec::new();
        for s in self.api.list(&lp).await?.items {
            match record_of(&s) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(error = %e, "skipping an api key secret that does not decode"),
            }
        }
        out.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        Ok(out)
    }

    /// The key with `key_id` (`agbx-<16 hex>`), read from its Secret; `None` when there is none.
    pub async fn get(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, KubeError> {
        let Some(name) = secret_of_key_id(key_id) else { return Ok(None) };
        match self.api.get_opt(&name).await? {
            Some(s) => Ok(Some(record_of(&s)?).filter(|r| r.key_id == key_id)),
            None => Ok(None),
        }
    }

    /// Delete the key with `key_id` (`agbx-<16 hex>`); `Ok(false)` when there was none.
    pub async fn delete(&self, key_id: &str) -> Result<bool, KubeError> {
        let Some(name) = secret_of_key_id(key_id) else { return Ok(false) };
        match self.api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(e) if is_code(&e, 404) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentbox_core::identity::Role;

    pub(crate) fn record(hash_char: char) -> ApiKeyRecord {
        let token_hash = hash_char.to_string().repeat(64);
        ApiKeyRecord {
            key_id: ApiKeyRecord::id_for_hash(&token_hash),
            token_hash,
            namespace: "t-a-u".into(),
            role: Role::Tenant,
            user: "u".into(),
            team: "a".into(),
            quota_url: String::new(),
            description: "ci".into(),
            issued_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
            sync_source: String::new(),
            sealed_token: Some("00ff".into()),
        }
    }

    #[test]
    fn a_key_secret_round_trips_and_keeps_the_sealed_token_apart() {
        let k = record('a');
        let s = key_secret("agentbox-system", &k).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("agentbox-apikey-aaaaaaaaaaaaaaaa"));
        let l = s.metadata.labels.as_ref().unwrap();
        assert_eq!(l[HASH_LABEL], "a".repeat(63));
        assert_eq!(l[TYPE_LABEL], "api-key");
        assert_eq!(l[labels::TEAM], "a");
        let json: serde_json::Value = serde_json::from_slice(&s.data.as_ref().unwrap()[RECORD_KEY].0).unwrap();
        assert!(json.get("sealedToken").is_none_or(|v| v.is_null()), "the sealed token is a separate entry");
        assert_eq!(s.data.as_ref().unwrap()[SEALED_KEY].0, b"00ff");
        assert_eq!(record_of(&s).unwrap(), k);
    }

    #[test]
    fn only_well_formed_key_ids_name_a_secret() {
        assert_eq!(secret_of_key_id("agbx-0123456789abcdef").as_deref(), Some("agentbox-apikey-0123456789abcdef"));
        for bad in ["0123456789abcdef", "agbx-0123", "agbx-../../secrets/x", "agbx-0123456789ABCDEF"] {
            assert_eq!(secret_of_key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_malformed_hash_is_refused() {
        let mut k = record('a');
        k.token_hash = "ABC".into();
        assert!(matches!(key_secret("ns", &k), Err(KubeError::Invalid(_))));
    }
}
