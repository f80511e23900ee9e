//! `GET/POST/DELETE /api-keys`: the caller's own API keys, in E2B's `TeamAPIKey` shape. The raw
//! key is returned as `key` in the E2B alias form `e2b_<hex>` (the SDK insists on that prefix; the
//! native API accepts both forms).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{E2bError, EJson, EPath, EResult};
use super::{E2bAuth, St};
use crate::auth::AuthInfo;
use crate::authn::{ApiKeyItem, NewKey};

fn owner(auth: &AuthInfo) -> EResult<(&str, &str)> {
    if auth.team.is_empty() || auth.user.is_empty() || auth.auth_method == "admin-key" || auth.auth_method == "dev" {
        return Err(E2bError::bad_request(
            "the admin identity owns no api keys; create keys for a team and user with POST /v1/admin/api-keys \
             on the native API",
        ));
    }
    Ok((&auth.team, &auth.user))
}

fn e2b_form(raw: &str) -> String {
    raw.strip_prefix("agbx_").map(|h| format!("e2b_{h}")).unwrap_or_else(|| raw.to_string())
}

fn key_of(k: &ApiKeyItem) -> Value {
    json!({
        "id": k.key_id,
        "name": k.description,
        "createdAt": k.issued_at,
        "createdBy": null,
        "lastUsed": null,
        "mask": {
            "prefix": "e2b_",
            "valueLength": 64,
            "maskedValuePrefix": &k.hash_prefix[..k.hash_prefix.len().min(4)],
            "maskedValueSuffix": "",
        },
    })
}

/// `GET /api-keys`: the caller's keys (an admin identity owns none: empty list).
pub async fn list(State(st): State<St>, E2bAuth(auth): E2bAuth) -> EResult<Json<Vec<Value>>> {
    let Ok((team, user)) = owner(&auth) else { return Ok(Json(vec![])) };
    Ok(Json(st.app.auth.list_keys(Some((team, user)))?.iter().map(key_of).collect()))
}

/// Body of `POST /api-keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    pub name: String,
}

/// `POST /api-keys` `{name}`: 201 with the raw key in `key`.
pub async fn create(
    State(st): State<St>,
    E2bAuth(auth): E2bAuth,
    EJson(body): EJson<NewKeyBody>,
) -> EResult<(StatusCode, Json<Value>)> {
    let (team, user) = owner(&auth)?;
    let created = st.app.auth.create_key(NewKey {
        namespace: Some(auth.namespace.clone()),
        team: team.into(),
        user: user.into(),
        quota_url: auth.quota_url.clone(),
        description: body.name,
        ..Default::default()
    })?;
    let mut v = key_of(&created.key);
    v["key"] = json!(e2b_form(&created.api_key));
    Ok((StatusCode::CREATED, Json(v)))
}

/// `DELETE /api-keys/{id}`: 204; another tenant's key is 404 or 403 as in the native API.
pub async fn delete(State(st): State<St>, E2bAuth(auth): E2bAuth, EPath(id): EPath<String>) -> EResult<StatusCode> {
    let owner = if auth.is_admin() { None } else { Some((auth.team.as_str(), auth.user.as_str())) };
    st.app.auth.delete_key(&id, owner)?;
    Ok(StatusCode::NO_CONTENT)
}
