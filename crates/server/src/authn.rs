//! Authentication and the API key service: who is calling, and the keys they own.
//!
//! Order of checks for a request (see ARCHITECTURE.md, "identity"):
//! 1. `Authorization: Bearer <jwt>` when a JWT secret is configured (HS256; claims sub, name, email,
//!    role, team, user; `role` defaults to tenant, `user` to `sub`);
//! 2. `AGENTBOX-API-KEY` (or `Authorization: Bearer agbx_…`): the static admin key (compared in
//!    constant time), else a stored key looked up by the SHA-256 of its token through a short-lived
//!    cache; the `e2b_<same hex>` alias is the same key;
//! 3. no credential: dev mode (no admin key configured) → the anonymous admin; otherwise 401.
//!
//! Then admin impersonation (`X-Impersonate-Team` + `X-Impersonate-User`: the admin acts as that
//! tenant), the client version check for writes (426), and the per-identity rate limit (429).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentbox_core::error::{AppError, ErrorKind};
use agentbox_core::identity::{ApiKeyRecord, Role};
use agentbox_core::store::{Store, StoreError};
use axum::http::{HeaderMap, Method};
use chrono::{DateTime, SecondsFormat, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota as RateQuota, RateLimiter};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::auth::AuthInfo;
use crate::keys::{ServerKey, canonical_token, generate_token, hash_token, is_hex};

/// Header carrying a native API key.
pub const API_KEY_HEADER: &str = "agentbox-api-key";
pub const IMPERSONATE_TEAM: &str = "x-impersonate-team";
pub const IMPERSONATE_USER: &str = "x-impersonate-user";
pub const CLIENT_VERSION_HEADER: &str = "x-agentbox-client-version";
/// Cached key lookups kept at most (oldest dropped first when full).
const KEY_CACHE_MAX: usize = 10_000;

/// Token bucket per identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: u32,
    /// Bucket size (requests allowed at once).
    pub burst: u32,
}

/// How the server authenticates callers.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The static admin key; `None` = dev mode.
    pub admin_key: Option<String>,
    /// HS256 secret for `Authorization: Bearer <jwt>`; `None` = JWTs are not accepted.
    pub jwt_secret: Option<String>,
    /// Seals recoverable raw tokens.
    pub server_key: ServerKey,
    /// How long a key lookup is reused before the store is asked again (deletions on this server
    /// take effect at once; the TTL bounds staleness for other writers of the same store).
    pub key_cache_ttl: Duration,
    /// Writes carrying an API key from an older client than this → 426.
    pub min_client_version: semver::Version,
    /// Per-identity rate limit; `None` = off.
    pub rate_limit: Option<RateLimit>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            admin_key: None,
            jwt_secret: None,
            server_key: ServerKey::ephemeral(),
            key_cache_ttl: Duration::from_secs(60),
            min_client_version: semver::Version::new(0, 0, 0),
            rate_limit: None,
        }
    }
}

struct CachedKey {
    rec: ApiKeyRecord,
    at: Instant,
}

/// Cached lookups, and a generation bumped by every deletion: a lookup that read the store before
/// a deletion finished must not put the deleted key back into the cache.
#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, CachedKey>,
    generation: u64,
}

/// The identity service: authenticates requests and manages API keys.
pub struct Authenticator {
    cfg: AuthConfig,
    store: Arc<dyn Store>,
    admin_key_hash: Option<[u8; 32]>,
    cache: RwLock<KeyCache>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    limiter_checks: AtomicU64,
}

/// The namespace of tenant (team, user): `t-<team>-<user>` when both are plain lower-case
/// alphanumerics (then the dash separates them unambiguously); otherwise the sanitised form
/// (lower-cased, other characters → `-`, shortened) followed by 8 hex of a hash of the exact
/// (team, user), so two different tenants never share a namespace (`a-b`/`c` vs `a`/`b-c`,
/// `Red` vs `red`). `default` when team or user is empty.
pub fn tenant_namespace(team: &str, user: &str) -> String {
    if team.is_empty() || user.is_empty() {
        return "default".into();
    }
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let simple = format!("t-{team}-{user}");
    if plain(team) && plain(user) && simple.len() <= 63 {
        return simple;
    }
    let mut out = String::with_capacity(simple.len());
    for c in simple.to_ascii_lowercase().chars() {
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if c == '-' && out.ends_with('-') {
            continue;
        }
        out.push(c);
    }
    let mut out = out.trim_matches('-').to_string();
    out.truncate(54);
    let digest = Sha256::digest(format!("{team}\0{user}").as_bytes());
    format!("{}-{}", out.trim_end_matches('-'), &hex::encode(digest)[..8])
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(field: &str, v: &str) -> Result<DateTime<Utc>, AppError> {
    DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        AppError::bad_request(format!("{field} {v:?} is not an RFC 3339 time ({e}); use e.g. 2030-01-31T12:00:00Z"))
    })
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

#[derive(Debug, Deserialize)]
struct JwtClaims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    team: String,
    #[serde(default)]
    user: String,
}

/// What `POST /v1/api-keys` and `POST /v1/admin/api-keys` answer. `apiKey` is the raw token, shown
/// here and recoverable later from the list (empty for keys imported by hash).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    pub api_key: String,
    #[serde(flatten)]
    pub key: ApiKeyItem,
}

/// One API key as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyItem {
    pub key_id: String,
    pub namespace: String,
    pub role: Role,
    pub user: String,
    pub team: String,
    #[serde(rename = "quotaURL")]
    pub quota_url: String,
    pub description: String,
    pub issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// `global` for keys imported by hash; empty otherwise.
    pub sync_source: String,
    /// First 16 hex characters of the token's SHA-256.
    pub hash_prefix: String,
    /// The full raw token, for recovery by its owner (absent for keys imported by hash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_token: Option<String>,
    pub expired: bool,
}

/// Input of a key creation (self-service fills team/user/namespace from the caller).
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub namespace: Option<String>,
    pub team: String,
    pub user: String,
    pub quota_url: String,
    pub description: String,
    pub expires_at: Option<String>,
    /// Import mode: the SHA-256 (64 hex) of a token issued elsewhere.
    pub token_hash: Option<String>,
    /// Import mode: must equal the first 16 hex of `token_hash`.
    pub hash_prefix: Option<String>,
    /// Import mode: the original issue time.
    pub issued_at: Option<String>,
}

impl Authenticator {
    pub fn new(cfg: AuthConfig, store: Arc<dyn Store>) -> Authenticator {
        let admin_key_hash = cfg.admin_key.as_deref().map(|k| Sha256::digest(k.as_bytes()).into());
        let limiter = cfg.rate_limit.map(|r| {
            let per = NonZeroU32::new(r.per_second.max(1)).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(r.burst.max(1)).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(RateQuota::per_second(per).allow_burst(burst))
        });
        Authenticator {
            cfg,
            store,
            admin_key_hash,
            cache: RwLock::new(KeyCache::default()),
            limiter,
            limiter_checks: AtomicU64::new(0),
        }
    }

    /// Dev mode: no admin key configured, anonymous callers are admins.
    pub fn is_dev_mode(&self) -> bool {
        self.cfg.admin_key.is_none()
    }

    pub fn config(&self) -> &AuthConfig {
        &self.cfg
    }

    /// Authenticate a native API request (credentials, impersonation, version check, rate limit).
    pub fn authenticate(&self, method: &Method, headers: &HeaderMap) -> Result<AuthInfo, AppError> {
        let bearer = header(headers, "authorization")
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let api_key = header(headers, API_KEY_HEADER);
        let mut auth = match (bearer, api_key) {
            (Some(b), None) if canonical_token(b).is_none() && !self.is_admin_key(b) => self.authenticate_jwt(b)?,
            (Some(b), None) => self.authenticate_key(b)?,
            (_, Some(k)) => self.authenticate_key(k)?,
            (None, None) if self.is_dev_mode() => AuthInfo::dev_admin(),
            (None, None) => {
                return Err(AppError::unauthorized(
                    "missing api key: send it in the AGENTBOX-API-KEY header (or Authorization: Bearer <jwt>)",
                ));
            }
        };
        if auth.is_admin() {
            let team = header(headers, IMPERSONATE_TEAM);
            let user = header(headers, IMPERSONATE_USER);
            if let (Some(team), Some(user)) = (team, user) {
                auth = self.impersonate(&auth, team, user);
            }
        }
        let by_key = matches!(auth.auth_method.as_str(), "apikey" | "admin-key");
        if by_key && matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
            self.check_client_version(headers)?;
        }
        self.check_rate(&auth)?;
        Ok(auth)
    }

    /// Is `presented` the static admin key? SHA-256 digests compared in constant time, so neither
    /// the key's content nor its length leaks through timing.
    fn is_admin_key(&self, presented: &str) -> bool {
        self.admin_key_hash.as_ref().is_some_and(|admin| {
            let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
            bool::from(h.ct_eq(admin))
        })
    }

    /// Authenticate a bare API key value (used for `X-API-Key` of the E2B API too).
    pub fn authenticate_key(&self, presented: &str) -> Result<AuthInfo, AppError> {
        {
            if self.is_admin_key(presented) {
                return Ok(AuthInfo {
                    namespace: "default".into(),
                    role: Role::Admin,
                    user: "admin".into(),
                    team: "admin".into(),
                    quota_url: String::new(),
                    auth_method: "admin-key".into(),
                    email: String::new(),
                    name: String::new(),
                });
            }
        }
        let Some(canonical) = canonical_token(presented) else {
            return Err(AppError::unauthorized("invalid api key: expected agbx_ followed by 64 hex characters"));
        };
        let hash = hash_token(&canonical);
        let rec = self.lookup(&hash)?.ok_or_else(|| AppError::unauthorized("invalid api key"))?;
        if let Some(exp) = &rec.expires_at
            && DateTime::parse_from_rfc3339(exp).map(|t| t.with_timezone(&Utc) <= Utc::now()).unwrap_or(true)
        {
            return Err(AppError::unauthorized(format!(
                "api key {} expired at {exp}; create a new one with POST /v1/api-keys",
                rec.key_id
            )));
        }
        if rec.team.is_empty() || rec.user.is_empty() {
            return Err(AppError::unauthorized("api key is missing team or user metadata; ask an admin to reissue it"));
        }
        Ok(AuthInfo {
            namespace: rec.namespace.clone(),
            role: rec.role,
            user: rec.user.clone(),
            team: rec.team.clone(),
            quota_url: rec.quota_url.clone(),
            auth_method: "apikey".into(),
            email: String::new(),
            name: String::new(),
        })
    }

    fn authenticate_jwt(&self, token: &str) -> Result<AuthInfo, AppError> {
        let Some(secret) = &self.cfg.jwt_secret else {
            return Err(AppError::unauthorized(
                "bearer token is not an api key and this server accepts no JWTs (no --jwt-secret); \
                 send an api key in AGENTBOX-API-KEY",
            ));
        };
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims = ["exp".to_string()].into_iter().collect();
        v.validate_aud = false;
        v.leeway = 5;
        let data =
            jsonwebtoken::decode::<JwtClaims>(token, &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()), &v)
                .map_err(|e| {
                    tracing::debug!(error = %e, "jwt rejected");
                    AppError::unauthorized("invalid or expired jwt token")
                })?;
        let c = data.claims;
        let role = match c.role.as_str() {
            "admin" => Role::Admin,
            "" | "tenant" => Role::Tenant,
            other => {
                return Err(AppError::unauthorized(format!("jwt role {other:?} is unknown; use admin or tenant")));
            }
        };
        let user = if c.user.is_empty() { c.sub.clone() } else { c.user };
        if role == Role::Tenant && (user.is_empty() || c.team.is_empty()) {
            return Err(AppError::unauthorized("jwt must carry team and user (or sub) claims"));
        }
        let namespace = if role == Role::Admin && c.team.is_empty() {
            "default".to_string()
        } else {
            tenant_namespace(&c.team, &user)
        };
        Ok(AuthInfo {
            namespace,
            role,
            user,
            team: c.team,
            quota_url: String::new(),
            auth_method: "jwt".into(),
            email: c.email,
            name: c.name,
        })
    }

    /// The admin acting as tenant (team, user): scoped exactly like that tenant.
    /// Namespace and default quota URL come from the tenant's newest key when it has one (an admin
    /// may have given it another namespace), else the derived namespace.
    fn impersonate(&self, admin: &AuthInfo, team: &str, user: &str) -> AuthInfo {
        tracing::debug!(admin = %admin.user, team, user, "impersonation");
        let newest = self
            .store
            .list_api_keys()
            .unwrap_or_default()
            .into_iter()
            .filter(|k| k.team == team && k.user == user)
            .max_by(|a, b| a.issued_at.cmp(&b.issued_at));
        AuthInfo {
            namespace: newest.as_ref().map_or_else(|| tenant_namespace(team, user), |k| k.namespace.clone()),
            role: Role::Tenant,
            user: user.into(),
            team: team.into(),
            quota_url: newest.map(|k| k.quota_url).unwrap_or_default(),
            auth_method: "impersonation".into(),
            email: String::new(),
            name: String::new(),
        }
    }

    fn check_client_version(&self, headers: &HeaderMap) -> Result<(), AppError> {
        let min = &self.cfg.min_client_version;
        if *min == semver::Version::new(0, 0, 0) {
            return Ok(());
        }
        let raw = header(headers, CLIENT_VERSION_HEADER).unwrap_or("0.0.0");
        let ok = semver::Version::parse(raw.trim_start_matches('v')).map(|v| v >= *min).unwrap_or(false);
        if ok {
            return Ok(());
        }
        Err(AppError::new(
            ErrorKind::UpgradeRequired,
            format!(
                "client version {raw} is older than the minimum {min} this server accepts; upgrade the agentbox client"
            ),
        )
        .with_detail(&serde_json::json!({"clientVersion": raw, "minClientVersion": min.to_string()})))
    }

    fn check_rate(&self, auth: &AuthInfo) -> Result<(), AppError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        if auth.auth_method == "admin-key" || auth.auth_method == "dev" {
            return Ok(());
        }
        let key = format!("{}/{}", auth.team, auth.user);
        if self.limiter_checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            limiter.retain_recent();
        }
        match limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                Err(AppError::too_many(format!(
                    "rate limit exceeded for {key}; retry after {secs}s or lower the request rate"
                ))
                .with_retry_after(secs))
            }
        }
    }

    fn lookup(&self, hash: &str) -> Result<Option<ApiKeyRecord>, AppError> {
        let generation = {
            let cache = self.cache.read();
            if let Some(c) = cache.keys.get(hash)
                && c.at.elapsed() < self.cfg.key_cache_ttl
            {
                return Ok(Some(c.rec.clone()));
            }
            cache.generation
        };
        let rec = self.store.find_api_key_by_hash(hash)?;
        let mut cache = self.cache.write();
        match &rec {
            Some(r) if cache.generation == generation => {
                if cache.keys.len() >= KEY_CACHE_MAX {
                    let ttl = self.cfg.key_cache_ttl;
                    cache.keys.retain(|_, c| c.at.elapsed() < ttl);
                    if cache.keys.len() >= KEY_CACHE_MAX {
                        cache.keys.clear();
                    }
                }
                cache.keys.insert(hash.to_string(), CachedKey { rec: r.clone(), at: Instant::now() });
            }
            _ => {
                cache.keys.remove(hash);
            }
        }
        Ok(rec)
    }

    /// Forget a key (after it was deleted or changed in the store).
    fn evict(&self, hash: &str) {
        let mut cache = self.cache.write();
        cache.generation += 1;
        cache.keys.remove(hash);
    }

    fn item(&self, rec: &ApiKeyRecord) -> ApiKeyItem {
        let raw_token = rec.sealed_token.as_deref().and_then(|s| {
            let t = self.cfg.server_key.open(s, &rec.key_id);
            if t.is_none() {
                tracing::warn!(key_id = %rec.key_id, "cannot open the sealed raw token: the server key changed?");
            }
            t
        });
        let expired = rec
            .expires_at
            .as_deref()
            .map(|e| DateTime::parse_from_rfc3339(e).map(|t| t.with_timezone(&Utc) <= Utc::now()).unwrap_or(true))
            .unwrap_or(false);
        ApiKeyItem {
            key_id: rec.key_id.clone(),
            namespace: rec.namespace.clone(),
            role: rec.role,
            user: rec.user.clone(),
            team: rec.team.clone(),
            quota_url: rec.quota_url.clone(),
            description: rec.description.clone(),
            issued_at: rec.issued_at.clone(),
            expires_at: rec.expires_at.clone(),
            sync_source: rec.sync_source.clone(),
            hash_prefix: rec.hash_prefix().to_string(),
            raw_token,
            expired,
        }
    }

    /// Issue a new key, or (import mode) register a key by its hash. Import is idempotent: the same
    /// hash again returns the existing key, marked `global`.
    pub fn create_key(&self, input: NewKey) -> Result<CreatedApiKey, AppError> {
        if input.team.trim().is_empty() || input.user.trim().is_empty() {
            return Err(AppError::bad_request("team and user are required for an api key"));
        }
        if input.description.len() > 1024 {
            return Err(AppError::bad_request("description is too long: at most 1024 characters"));
        }
        let expires_at = match input.expires_at.as_deref().filter(|s| !s.is_empty()) {
            Some(e) => {
                let t = parse_time("expiresAt", e)?;
                if t <= Utc::now() {
                    return Err(AppError::bad_request("expiresAt must be in the future"));
                }
                Some(t.to_rfc3339_opts(SecondsFormat::Secs, true))
            }
            None => None,
        };
        let namespace = match input.namespace.as_deref().filter(|s| !s.is_empty()) {
            Some(ns) => {
                agentbox_core::validate::dns_label("namespace", ns)?;
                ns.to_string()
            }
            None => tenant_namespace(&input.team, &input.user),
        };
        let (token, token_hash, sync_source, issued_at) = match &input.token_hash {
            Some(h) => {
                if !is_hex(h, 64) {
                    return Err(AppError::bad_request("tokenHash must be the 64-hex SHA-256 of the token"));
                }
                let h = h.to_ascii_lowercase();
                match input.hash_prefix.as_deref() {
                    Some(p) if is_hex(p, 16) && h.starts_with(&p.to_ascii_lowercase()) => {}
                    Some(_) => {
                        return Err(AppError::bad_request(
                            "hashPrefix must be the first 16 hex characters of tokenHash",
                        ));
                    }
                    None => return Err(AppError::bad_request("import mode needs hashPrefix next to tokenHash")),
                }
                let issued = match input.issued_at.as_deref() {
                    Some(t) => parse_time("issuedAt", t)?.to_rfc3339_opts(SecondsFormat::Secs, true),
                    None => now_rfc3339(),
                };
                (None, h, "global".to_string(), issued)
            }
            None => {
                if input.hash_prefix.is_some() || input.issued_at.is_some() {
                    return Err(AppError::bad_request(
                        "hashPrefix and issuedAt are only for import mode (with tokenHash)",
                    ));
                }
                let t = generate_token();
                let h = hash_token(&t);
                (Some(t), h, String::new(), now_rfc3339())
            }
        };
        let key_id = ApiKeyRecord::id_for_hash(&token_hash);
        let sealed_token = token.as_deref().map(|t| self.cfg.server_key.seal(t, &key_id));
        let rec = ApiKeyRecord {
            key_id,
            token_hash,
            namespace,
            role: Role::Tenant,
            user: input.user.trim().to_string(),
            team: input.team.trim().to_string(),
            quota_url: input.quota_url,
            description: input.description,
            issued_at,
            expires_at,
            sync_source,
            sealed_token,
        };
        match self.store.create_api_key(&rec) {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) if token.is_none() => {
                // Import of a hash we already know: idempotent.
                let mut existing =
                    self.store.get_api_key(&rec.key_id)?.filter(|k| k.token_hash == rec.token_hash).ok_or_else(
                        || AppError::conflict(format!("key id {} is taken by another token", rec.key_id)),
                    )?;
                if (&existing.team, &existing.user, &existing.namespace) != (&rec.team, &rec.user, &rec.namespace) {
                    return Err(AppError::conflict(
                        "this token hash is already imported for another team, user or namespace; delete that key first",
                    ));
                }
                if existing.sync_source != "global" {
                    existing.sync_source = "global".into();
                    self.store.put_api_key(&existing)?;
                }
                self.evict(&existing.token_hash);
                return Ok(CreatedApiKey { api_key: String::new(), key: self.item(&existing) });
            }
            Err(StoreError::Conflict(_)) => {
                return Err(AppError::internal("api key id collision", "random token collided; retry"));
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(key_id = %rec.key_id, team = %rec.team, user = %rec.user, "api key created");
        Ok(CreatedApiKey { api_key: token.unwrap_or_default(), key: self.item(&rec) })
    }

    /// Keys, all (admin) or of one team+user, with their recoverable raw tokens.
    pub fn list_keys(&self, owner: Option<(&str, &str)>) -> Result<Vec<ApiKeyItem>, AppError> {
        Ok(self
            .store
            .list_api_keys()?
            .iter()
            .filter(|k| owner.is_none_or(|(t, u)| k.team == t && k.user == u))
            .map(|k| self.item(k))
            .collect())
    }

    /// Does (team, user) own at least one unexpired key? With `recoverable`, one whose raw token
    /// this server can still show (returned).
    pub fn first_key_of(&self, team: &str, user: &str, recoverable: bool) -> Result<Option<ApiKeyItem>, AppError> {
        Ok(self
            .list_keys(Some((team, user)))?
            .into_iter()
            .find(|k| !k.expired && (!recoverable || k.raw_token.is_some())))
    }

    /// Delete a key. `owner` = the tenant deleting its own key (403 for another's key).
    pub fn delete_key(&self, key_id: &str, owner: Option<(&str, &str)>) -> Result<(), AppError> {
        let rec = self.store.get_api_key(key_id)?.ok_or_else(|| {
            AppError::not_found(format!("api key {key_id} not found; list your keys with GET /v1/api-keys"))
        })?;
        if let Some((team, user)) = owner
            && (rec.team != team || rec.user != user)
        {
            return Err(AppError::forbidden("forbidden: you can only delete your own api keys"));
        }
        self.store.delete_api_key(key_id)?;
        self.evict(&rec.token_hash);
        tracing::info!(key_id, "api key deleted");
        Ok(())
    }

    /// Distinct teams (from keys), sorted.
    pub fn teams(&self) -> Result<Vec<String>, AppError> {
        let mut v: Vec<String> = self.store.list_api_keys()?.into_iter().map(|k| k.team).collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    /// Distinct users of a team (from keys), sorted.
    pub fn users_of(&self, team: &str) -> Result<Vec<String>, AppError> {
        let mut v: Vec<String> =
            self.store.list_api_keys()?.into_iter().filter(|k| k.team == team).map(|k| k.user).collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    /// Namespaces that keys point at.
    pub fn key_namespaces(&self) -> Result<Vec<String>, AppError> {
        Ok(self.store.list_api_keys()?.into_iter().map(|k| k.namespace).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentbox_core::fake_store::MemoryStore;

    fn auth(cfg: AuthConfig) -> Authenticator {
        Authenticator::new(cfg, Arc::new(MemoryStore::new()))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn namespaces_are_sanitised_and_never_shared_by_two_tenants() {
        assert_eq!(tenant_namespace("red", "alice"), "t-red-alice");
        let ns = tenant_namespace("Team A", "bob@x.io");
        assert!(ns.starts_with("t-team-a-bob-x-io-") && ns.len() == "t-team-a-bob-x-io-".len() + 8, "{ns}");
        assert_eq!(tenant_namespace("", "bob"), "default");
        // Different tenants whose sanitised names would coincide get different namespaces.
        let pairs = [
            (("a-b", "c"), ("a", "b-c")),
            (("red", "bob@x.io"), ("red", "bob.x.io")),
            (("Red", "u"), ("red", "u")),
            (("t", &"x".repeat(80) as &str), ("t", &"x".repeat(81) as &str)),
        ];
        for ((t1, u1), (t2, u2)) in pairs {
            assert_ne!(tenant_namespace(t1, u1), tenant_namespace(t2, u2), "{t1}/{u1} vs {t2}/{u2}");
        }
        for (t, u) in [("__", "!!"), (&"a".repeat(40) as &str, &"b".repeat(40) as &str), ("Z", "Ü")] {
            let ns = tenant_namespace(t, u);
            assert!(ns.len() <= 63, "{ns}");
            assert!(agentbox_core::validate::dns_label("namespace", &ns).is_ok(), "{ns}");
        }
    }

    #[test]
    fn dev_mode_admits_anonymous_callers_as_admin_and_production_refuses_them() {
        let dev = auth(AuthConfig::default());
        let a = dev.authenticate(&Method::GET, &HeaderMap::new()).unwrap();
        assert!(a.is_admin());
        let prod = auth(AuthConfig { admin_key: Some("sekret".into()), ..Default::default() });
        let e = prod.authenticate(&Method::GET, &HeaderMap::new()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthorized);
        let a = prod.authenticate(&Method::GET, &headers(&[("agentbox-api-key", "sekret")])).unwrap();
        assert_eq!((a.role, a.auth_method.as_str()), (Role::Admin, "admin-key"));
        assert!(prod.authenticate(&Method::GET, &headers(&[("agentbox-api-key", "sekreT")])).is_err());
    }

    #[test]
    fn keys_authenticate_by_both_prefixes_until_deleted_or_expired() {
        let a = auth(AuthConfig { admin_key: Some("sekret".into()), ..Default::default() });
        let k = a.create_key(NewKey { team: "t1".into(), user: "u1".into(), ..Default::default() }).unwrap();
        let who = a.authenticate_key(&k.api_key).unwrap();
        assert_eq!((who.team.as_str(), who.user.as_str(), who.namespace.as_str()), ("t1", "u1", "t-t1-u1"));
        let alias = format!("e2b_{}", &k.api_key[5..]);
        assert_eq!(a.authenticate_key(&alias).unwrap().user, "u1");
        assert_eq!(a.list_keys(Some(("t1", "u1"))).unwrap()[0].raw_token.as_deref(), Some(k.api_key.as_str()));
        a.delete_key(&k.key.key_id, None).unwrap();
        assert_eq!(a.authenticate_key(&k.api_key).unwrap_err().kind, ErrorKind::Unauthorized);
        // Expiry is checked on every request, also for cached keys.
        let store = Arc::new(MemoryStore::new());
        let a = Authenticator::new(AuthConfig::default(), store.clone());
        let k = a
            .create_key(NewKey {
                team: "t".into(),
                user: "u".into(),
                expires_at: Some((Utc::now() + chrono::Duration::hours(1)).to_rfc3339()),
                ..Default::default()
            })
            .unwrap();
        a.authenticate_key(&k.api_key).unwrap();
        let mut rec = store.get_api_key(&k.key.key_id).unwrap().unwrap();
        rec.expires_at = Some("2020-01-01T00:00:00Z".into());
        store.put_api_key(&rec).unwrap();
        a.cache.write().keys.clear();
        let e = a.authenticate_key(&k.api_key).unwrap_err();
        assert!(e.message.contains("expired"), "{}", e.message);
    }

    #[test]
    fn jwt_claims_map_to_an_identity_and_bad_tokens_are_refused() {
        let a = auth(AuthConfig { admin_key: Some("x".into()), jwt_secret: Some("s3".into()), ..Default::default() });
        let tok = |claims: serde_json::Value, secret: &str| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        let exp = Utc::now().timestamp() + 600;
        let t = tok(serde_json::json!({"sub": "bob", "team": "red", "email": "b@x", "name": "Bob", "exp": exp}), "s3");
        let who = a.authenticate(&Method::GET, &headers(&[("authorization", &format!("Bearer {t}"))])).unwrap();
        assert_eq!((who.user.as_str(), who.team.as_str(), who.role), ("bob", "red", Role::Tenant));
        assert_eq!((who.email.as_str(), who.auth_method.as_str()), ("b@x", "jwt"));
        let bad = tok(serde_json::json!({"sub": "bob", "team": "red", "exp": exp}), "other");
        assert!(a.authenticate(&Method::GET, &headers(&[("authorization", &format!("Bearer {bad}"))])).is_err());
        let expired = tok(serde_json::json!({"sub": "bob", "team": "red", "exp": 1_000_000}), "s3");
        assert!(a.authenticate(&Method::GET, &headers(&[("authorization", &format!("Bearer {expired}"))])).is_err());
        let forever = tok(serde_json::json!({"sub": "bob", "team": "red", "role": "admin"}), "s3");
        assert!(
            a.authenticate(&Method::GET, &headers(&[("authorization", &format!("Bearer {forever}"))])).is_err(),
            "a JWT without exp is refused"
        );
    }

    #[test]
    fn impersonation_needs_both_headers_and_an_admin() {
        let a = auth(AuthConfig { admin_key: Some("adm".into()), ..Default::default() });
        let h = headers(&[("agentbox-api-key", "adm"), (IMPERSONATE_TEAM, "t"), (IMPERSONATE_USER, "u")]);
        let who = a.authenticate(&Method::GET, &h).unwrap();
        assert_eq!((who.role, who.team.as_str(), who.namespace.as_str()), (Role::Tenant, "t", "t-t-u"));
        let h = headers(&[("agentbox-api-key", "adm"), (IMPERSONATE_TEAM, "t")]);
        assert!(a.authenticate(&Method::GET, &h).unwrap().is_admin());
        let k = a.create_key(NewKey { team: "a".into(), user: "b".into(), ..Default::default() }).unwrap();
        let h = headers(&[("agentbox-api-key", &k.api_key), (IMPERSONATE_TEAM, "t"), (IMPERSONATE_USER, "u")]);
        assert_eq!(a.authenticate(&Method::GET, &h).unwrap().team, "a", "tenants cannot impersonate");
    }

    #[test]
    fn old_clients_get_426_on_writes_only() {
        let a = auth(AuthConfig {
            admin_key: Some("adm".into()),
            min_client_version: semver::Version::new(1, 2, 0),
            ..Default::default()
        });
        let old = headers(&[("agentbox-api-key", "adm"), (CLIENT_VERSION_HEADER, "1.1.9")]);
        assert_eq!(a.authenticate(&Method::POST, &old).unwrap_err().kind, ErrorKind::UpgradeRequired);
        assert!(a.authenticate(&Method::GET, &old).is_ok());
        let new = headers(&[("agentbox-api-key", "adm"), (CLIENT_VERSION_HEADER, "1.2.0")]);
        assert!(a.authenticate(&Method::DELETE, &new).is_ok());
        let missing = headers(&[("agentbox-api-key", "adm")]);
        assert_eq!(a.authenticate(&Method::PUT, &missing).unwrap_err().kind, ErrorKind::UpgradeRequired);
    }

    #[test]
    fn the_rate_limit_refuses_with_retry_after_per_identity() {
        let a = auth(AuthConfig { rate_limit: Some(RateLimit { per_second: 1, burst: 2 }), ..Default::default() });
        let k1 = a.create_key(NewKey { team: "t".into(), user: "u1".into(), ..Default::default() }).unwrap();
        let k2 = a.create_key(NewKey { team: "t".into(), user: "u2".into(), ..Default::default() }).unwrap();
        let h1 = headers(&[("agentbox-api-key", &k1.api_key)]);
        assert!(a.authenticate(&Method::GET, &h1).is_ok());
        assert!(a.authenticate(&Method::GET, &h1).is_ok());
        let e = a.authenticate(&Method::GET, &h1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooManyRequests);
        assert!(e.retry_after.unwrap() >= 1);
        assert!(a.authenticate(&Method::GET, &headers(&[("agentbox-api-key", &k2.api_key)])).is_ok());
    }

    #[test]
    fn import_by_hash_is_idempotent_and_keeps_no_raw_token() {
        let a = auth(AuthConfig::default());
        let token = generate_token();
        let h = hash_token(&token);
        let input = NewKey {
            team: "t".into(),
            user: "u".into(),
            token_hash: Some(h.clone()),
            hash_prefix: Some(h[..16].to_string()),
            issued_at: Some("2025-05-01T00:00:00Z".into()),
            ..Default::default()
        };
        let first = a.create_key(input.clone()).unwrap();
        assert_eq!(first.api_key, "");
        assert_eq!(first.key.sync_source, "global");
        assert_eq!(first.key.raw_token, None);
        let again = a.create_key(input.clone()).unwrap();
        assert_eq!(again.key.key_id, first.key.key_id);
        assert_eq!(a.list_keys(None).unwrap().len(), 1);
        assert_eq!(a.authenticate_key(&token).unwrap().user, "u");
        let bad = NewKey { hash_prefix: Some("0".repeat(16)), ..input };
        assert_eq!(a.create_key(bad).unwrap_err().kind, ErrorKind::BadRequest);
    }
}
