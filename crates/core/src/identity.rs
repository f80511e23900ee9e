//! Identity and tenancy records: roles, API keys and quotas.
//!
//! API keys are stored by the SHA-256 hash of their raw token; the raw token itself is kept only
//! sealed (encrypted with the server key) for recovery, never in plain text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a caller may do: an admin sees and manages everything, a tenant only its own team+user's
/// objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Tenant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Tenant => "tenant",
        }
    }
}

/// The prefix of every native API key.
pub const API_KEY_PREFIX: &str = "agbx_";
/// The prefix of the E2B-shaped alias of the same key (`e2b_<same 64 hex>`).
pub const E2B_KEY_PREFIX: &str = "e2b_";

/// One stored API key. `key_id` is derived from the token hash (`agbx-<first 16 hex>`), so the same
/// token always has the same id, also when imported by hash on another server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyRecord {
    pub key_id: String,
    /// SHA-256 of the raw `agbx_…` token, lowercase hex (64 chars).
    pub token_hash: String,
    pub namespace: String,
    pub role: Role,
    pub user: String,
    pub team: String,
    #[serde(default)]
    pub quota_url: String,
    #[serde(default)]
    pub description: String,
    /// RFC 3339.
    pub issued_at: String,
    /// RFC 3339; `None` = never expires.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// `global` for keys imported by hash (synced from elsewhere); empty for keys made here.
    #[serde(default)]
    pub sync_source: String,
    /// The raw token sealed with the server key (nonce ‖ ciphertext, hex). `None` for keys
    /// imported by hash, whose raw token this server never saw.
    #[serde(default)]
    pub sealed_token: Option<String>,
}

impl ApiKeyRecord {
    /// The first 16 hex characters of the token hash (the lookup prefix).
    pub fn hash_prefix(&self) -> &str {
        &self.token_hash[..self.token_hash.len().min(16)]
    }
    /// The key id for a token hash.
    pub fn id_for_hash(token_hash: &str) -> String {
        format!("agbx-{}", &token_hash[..token_hash.len().min(16)])
    }
}

/// The scheduling queue a quota feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QuotaQueue {
    /// Guaranteed capacity reserved for the owner.
    #[default]
    Exclusive,
    /// Capacity granted when available.
    Ondemand,
    /// Leftover capacity, may be reclaimed.
    Idle,
}

/// Resource amounts of a quota. `cpu` and `memory` are Kubernetes quantities (`"8"`, `"500m"`,
/// `"16Gi"`); `sandboxes` counts slots. A missing entry means "not limited".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandboxes: Option<u64>,
}

/// An admin-managed quota. `quota_url` is hierarchical and dot-separated (`org.team.user`): a pool
/// charged to `org.team.user` also counts against the quotas `org.team` and `org`, where they exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaRecord {
    pub name: String,
    pub quota_url: String,
    #[serde(default)]
    pub queue: QuotaQueue,
    /// Owner team; empty = any team.
    #[serde(default)]
    pub team: String,
    /// Owner user; empty = any user of the team.
    #[serde(default)]
    pub user: String,
    pub resources: QuotaResources,
    #[serde(default)]
    pub description: String,
    pub created_at: String,
    pub resource_version: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl QuotaRecord {
    /// May (team, user) charge pools to this quota?
    pub fn usable_by(&self, team: &str, user: &str) -> bool {
        (self.team.is_empty() || self.team == team) && (self.user.is_empty() || self.user == user)
    }
}
