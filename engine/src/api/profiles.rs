//! The Profile API, and the audience endpoints of running jobs. See
//! `docs/profile-api.md`.
//!
//! | method and path                                   | does                                              | answers |
//! |---------------------------------------------------|---------------------------------------------------|---------|
//! | `GET /v1/jobs/{id}/profiles/{kind}:{value}`        | the profile holding that identifier               | 200 profile, 404 |
//! | `GET /v1/jobs/{id}/audiences`                      | the job's audiences and computed traits           | 200 `{"job","definitions"}` |
//! | `POST /v1/jobs/{id}/audiences`                     | add or replace an audience or computed trait      | 201 added, 200 replaced |
//! | `DELETE /v1/jobs/{id}/audiences/{name}`            | drop one added at runtime (its members exit)      | 200 |
//!
//! **Profiles** are read from the job's profile index
//! ([`crate::profile_index`]) without a round trip through the workers: the
//! answer is the profile at one logical time, returned as `as_of`, which every
//! change at or before it has reached. The identifier is `kind:value`,
//! URL-encoded as one path segment, split at its first `:`. Events come
//! newest first (by event time, then messageId), `events_limit` (default 20,
//! at most 1000) per page; pass an answer's `events_next` as `events_before`
//! for the next page.
//!
//! **Audiences.** A `POST` answers once the definition is checked, persisted
//! in the job's state directory and sequenced: every worker then builds it,
//! it backfills from the job's accumulated state, and its memberships reach
//! the job's sinks and profiles from its switch time on (`docs/audiences.md`).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::ApiError;
use crate::definitions::{Definition, DefinitionError, DefinitionKind};
use crate::profile_index::{EventPage, Lookup};
use crate::runtime::{Cluster, JobId};
use crate::views::ViewError;

/// Events per page unless `events_limit` says otherwise.
pub const DEFAULT_EVENTS_LIMIT: usize = 20;
/// The largest `events_limit`.
pub const MAX_EVENTS_LIMIT: usize = 1000;

/// The Profile API's and audience endpoints' routes (without auth: the
/// caller adds it, as [`super::router`] does for the control API).
pub fn routes(cluster: Arc<Cluster>) -> Router {
    Router::new()
        .route("/v1/jobs/{id}/profiles/{identifier}", get(get_profile))
        .route(
            "/v1/jobs/{id}/audiences",
            get(list_definitions).post(set_definition),
        )
        .route("/v1/jobs/{id}/audiences/{name}", delete(drop_definition))
        .with_state(cluster)
}

impl From<ViewError> for ApiError {
    fn from(e: ViewError) -> Self {
        match e {
            ViewError::Control(c) => c.into(),
            ViewError::Definition(d) => {
                let status = match &d {
                    DefinitionError::Invalid(_) => StatusCode::BAD_REQUEST,
                    DefinitionError::NotFound(_) => StatusCode::NOT_FOUND,
                    DefinitionError::Conflict(_) => StatusCode::CONFLICT,
                };
                ApiError::new(status, d.to_string())
            }
        }
    }
}

/// The query of a profile lookup.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileQuery {
    events_limit: Option<usize>,
    events_before: Option<String>,
}

async fn get_profile(
    State(cluster): State<Arc<Cluster>>,
    path: Result<Path<(JobId, String)>, PathRejection>,
    query: Result<Query<ProfileQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path((id, identifier)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (kind, value) = identifier
        .split_once(':')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "expected an identifier as kind:value (e.g. user_id:u123, URL-encoded), got {identifier:?}"
            ))
        })?;
    let limit = query.events_limit.unwrap_or(DEFAULT_EVENTS_LIMIT);
    if limit > MAX_EVENTS_LIMIT {
        return Err(ApiError::bad_request(format!(
            "events_limit: at most {MAX_EVENTS_LIMIT}, got {limit}"
        )));
    }
    let index = cluster.profile_index(id)?;
    let page = EventPage {
        limit,
        before: query.events_before,
    };
    match index.lookup(kind, value, &page) {
        Lookup::Found(body) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Lookup::NotFound { as_of } => Ok((
            StatusCode::NOT_FOUND,
            Json(json!({
                "error": format!("no profile of job {id} has identifier {kind}:{value}"),
                "as_of": as_of,
            })),
        )
            .into_response()),
        Lookup::BadCursor => Err(ApiError::bad_request(
            "events_before: not a cursor this API gave out (use an answer's events_next)",
        )),
    }
}

/// The body of `POST /v1/jobs/{id}/audiences`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionBody {
    name: String,
    query: String,
    #[serde(default)]
    key: Option<String>,
    /// `audience` (default) or `trait`.
    #[serde(default)]
    kind: Option<DefinitionKind>,
}

async fn set_definition(
    State(cluster): State<Arc<Cluster>>,
    path: Result<Path<JobId>, PathRejection>,
    body: Result<Json<DefinitionBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Path(id) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Json(body) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let definition = Definition {
        name: body.name,
        kind: body.kind.unwrap_or(DefinitionKind::Audience),
        query: body.query,
        key: body.key,
    };
    let (name, kind) = (definition.name.clone(), definition.kind);
    // Persisting fsyncs a small file: off the async threads.
    let outcome = tokio::task::spawn_blocking(move || cluster.set_definition(id, definition))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let status = if outcome.replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(json!({
            "job": id,
            "name": name,
            "kind": kind.as_str(),
            "replaced": outcome.replaced,
            "rebuilt": outcome.rebuilt,
        })),
    ))
}

async fn drop_definition(
    State(cluster): State<Arc<Cluster>>,
    path: Result<Path<(JobId, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path((id, name)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let dropped = name.clone();
    tokio::task::spawn_blocking(move || cluster.drop_definition(id, &dropped))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json!({ "job": id, "name": name, "dropped": true })))
}

async fn list_definitions(
    State(cluster): State<Arc<Cluster>>,
    path: Result<Path<JobId>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let definitions: Vec<Value> = cluster
        .definitions(id)?
        .into_iter()
        .map(|(d, origin)| {
            json!({
                "name": d.name,
                "kind": d.kind.as_str(),
                "query": d.query,
                "key": (d.kind == DefinitionKind::Audience).then(|| d.key().to_string()),
                "origin": origin,
            })
        })
        .collect();
    Ok(Json(json!({ "job": id, "definitions": definitions })))
}
