//! Caller identity and what it may see. Issue #3 adds API keys and JWT; until then the server runs
//! in dev mode, where every caller is the anonymous admin of namespace `default`.

use agentbox_core::store::SandboxFilter;
use serde::Serialize;
use utoipa::ToSchema;

pub use agentbox_core::identity::Role;

/// The authenticated caller.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthInfo {
    pub namespace: String,
    pub role: Role,
    pub user: String,
    pub team: String,
    /// The quota URL the caller's key names by default (may be empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub quota_url: String,
    /// `apikey`, `jwt`, `admin-key` or `dev` (no admin key configured).
    pub auth_method: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub email: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl AuthInfo {
    /// The identity of every caller in dev mode (no admin key configured).
    pub fn dev_admin() -> Self {
        AuthInfo {
            namespace: "default".into(),
            role: Role::Admin,
            user: "anonymous-admin".into(),
            team: String::new(),
            quota_url: String::new(),
            auth_method: "dev".into(),
            email: String::new(),
            name: String::new(),
        }
    }
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
    /// An admin acting as itself (not impersonating a team+user): it owns no quotas and must
    /// impersonate (`X-Impersonate-Team` + `X-Impersonate-User`) to act as a tenant.
    pub fn is_bare_admin(&self) -> bool {
        self.is_admin()
            && (self.team.is_empty()
                || self.user.is_empty()
                || self.auth_method == "dev"
                || self.auth_method == "admin-key")
    }
    /// May the caller claim from / manage a pool owned by (team, user)?
    pub fn may_use(&self, team: &str, user: &str) -> bool {
        self.is_admin() || (self.team == team && self.user == user)
    }
    /// May the caller see an object in `namespace` owned by (team, user)?
    pub fn may_see(&self, namespace: &str, team: &str, user: &str) -> bool {
        self.is_admin() || (self.namespace == namespace && self.team == team && self.user == user)
    }
    /// Restrict a list filter to what the caller may see. Admins see every namespace and may filter
    /// by team/user; tenants see only their own.
    pub fn scope_filter(&self, f: &mut SandboxFilter) {
        if !self.is_admin() {
            f.namespace = Some(self.namespace.clone());
            f.team = Some(self.team.clone());
            f.user = Some(self.user.clone());
        }
    }
}
