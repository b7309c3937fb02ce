//! The Segment-compatible collection API: `POST /v1/track`, `/v1/identify`,
//! `/v1/page`, `/v1/screen`, `/v1/group`, `/v1/alias` and `/v1/batch`, as
//! Segment's HTTP Tracking API, so that Segment's client libraries work
//! pointed at Weft (see `docs/collection-api.md`).
//!
//! A request goes through, in order:
//!
//! 1. **Auth**: HTTP Basic `base64(writeKey:)` (the password is ignored), or
//!    `writeKey` in the body when there is no `Authorization` header. A key
//!    no running job declares → 401.
//! 2. **Door checks** (`weft_connectors::collect::envelope`): encoding, 500 KB
//!    per request, JSON, 2,500 messages per batch, 32 KB per event → 400
//!    (415 for an unknown `Content-Encoding`), nothing stored.
//! 3. **Store**: every event of the request, together, in the source's log
//!    (fsync'd, group commit) or on its Kafka topic (acknowledged by all
//!    in-sync replicas). Then `200 {"success": true}`; if the store fails, or
//!    the job is stopping, `503` and nothing is promised: the client retries.
//!
//! Errors are `{"success": false, "code": …, "message": …}` (the fields
//! Segment's libraries log). These routes are not behind the control token.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use weft_connectors::collect::{
    decode_body, parse_request, Call, Collected, CollectedEvent, Refusal, MAX_REQUEST_BYTES,
};

use crate::collect::{Inbox, Route};
use crate::runtime::{Cluster, JobStatus, Shared};

/// Raw (possibly compressed) bytes read from a request at most: the decoded
/// limit plus room for gzip's overhead on incompressible data.
const MAX_RAW_BODY: usize = MAX_REQUEST_BYTES + MAX_REQUEST_BYTES / 8 + 1024;

/// The collection API's routes.
pub fn routes(cluster: Arc<Cluster>) -> Router {
    let shared = cluster.shared().clone();
    let mut router = Router::new();
    for call in Call::ALL {
        router = router.route(
            &format!("/v1/{}", call.as_str()),
            post(
                move |State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body| {
                    collect(shared, call, headers, body)
                },
            ),
        );
    }
    router
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(shared)
}

/// Handles one request of endpoint `call`.
async fn collect(shared: Arc<Shared>, call: Call, headers: HeaderMap, body: Body) -> Response {
    let received_ms = wall_ms();
    // STEP 1. A key in the header is checked before the body is read.
    let header_key = match basic_write_key(&headers) {
        Ok(k) => k,
        Err(r) => return refuse(r),
    };
    let header_route = match &header_key {
        Some(k) => match shared.collect.route(k) {
            Some(r) => Some(r),
            None => return refuse(unknown_key()),
        },
        None => None,
    };
    // STEP 2. Door checks.
    let collected = match read_request(call, &headers, body, received_ms).await {
        Ok(c) => c,
        Err(r) => {
            if let Some(route) = &header_route {
                route.counters.refused.fetch_add(1, Ordering::Relaxed);
            }
            return refuse(r);
        }
    };
    let route = match header_route {
        Some(r) => r,
        None => match collected
            .write_key
            .as_deref()
            .and_then(|k| shared.collect.route(k))
        {
            Some(r) => r,
            None if collected.write_key.is_none() => return refuse(missing_key()),
            None => return refuse(unknown_key()),
        },
    };
    // STEP 3. Store, then answer.
    if !accepting(&shared, &route) {
        route.counters.failed.fetch_add(1, Ordering::Relaxed);
        return refuse(Refusal {
            status: 503,
            code: "job_stopping",
            message: format!("job {} is stopping; retry later", route.job_name),
        });
    }
    match store(&route, &collected.events, received_ms).await {
        Ok(()) => {
            let c = &route.counters;
            c.requests.fetch_add(1, Ordering::Relaxed);
            c.events
                .fetch_add(collected.events.len() as u64, Ordering::Relaxed);
            (StatusCode::OK, Json(serde_json::json!({ "success": true }))).into_response()
        }
        Err(message) => {
            route.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job = %route.job_name, source = %route.source, "collection request failed: {message}");
            refuse(Refusal {
                status: 503,
                code: "unavailable",
                message: format!("the events were not stored ({message}); retry"),
            })
        }
    }
}

/// The wall clock in ms since the epoch (the receive time).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads, decodes and parses the body (the door checks).
async fn read_request(
    call: Call,
    headers: &HeaderMap,
    body: Body,
    received_ms: i64,
) -> Result<Collected, Refusal> {
    let raw: Bytes = axum::body::to_bytes(body, MAX_RAW_BODY)
        .await
        .map_err(|e| {
            Refusal::bad_request(
                "request_too_large",
                format!(
                    "the request body could not be read within {MAX_RAW_BODY} bytes ({e}); the limit is {MAX_REQUEST_BYTES} bytes (500 KB)"
                ),
            )
        })?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let decoded = decode_body(&raw, encoding)?;
    parse_request(call, &decoded, received_ms)
}

/// Whether the route's job still takes events.
fn accepting(shared: &Shared, route: &Route) -> bool {
    let jobs = shared.jobs.lock().expect("job registry lock");
    jobs.get(&route.job)
        .is_some_and(|s| matches!(s.status, JobStatus::Starting | JobStatus::Running))
}

/// Stores every event of one request in the route's inbox.
async fn store(route: &Route, events: &[CollectedEvent], received_ms: i64) -> Result<(), String> {
    if events.is_empty() {
        return Ok(());
    }
    match &route.inbox {
        Inbox::Log(log) => {
            let mut lines = Vec::with_capacity(events.iter().map(|e| e.json.len() + 1).sum());
            for e in events {
                lines.extend_from_slice(&e.json);
                lines.push(b'\n');
            }
            log.append(lines).await.map_err(|e| e.to_string())
        }
        Inbox::Topic(topic) => topic.send_all(events, received_ms).await,
    }
}

/// The write key of an `Authorization: Basic` header, `None` without one.
fn basic_write_key(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || Refusal {
        status: 401,
        code: "invalid_authorization",
        message: "the Authorization header must be `Basic base64(writeKey:)`".into(),
    };
    let text = value.to_str().map_err(|_| malformed())?.trim();
    let (scheme, encoded) = text.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(malformed());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| malformed())?;
    let user_pass = String::from_utf8(decoded).map_err(|_| malformed())?;
    let key = user_pass.split_once(':').map_or(&user_pass[..], |(k, _)| k);
    if key.is_empty() {
        return Err(malformed());
    }
    Ok(Some(key.to_string()))
}

fn unknown_key() -> Refusal {
    Refusal {
        status: 401,
        code: "invalid_write_key",
        message: "no running job accepts this write key".into(),
    }
}

fn missing_key() -> Refusal {
    Refusal {
        status: 401,
        code: "missing_write_key",
        message:
            "send the write key as HTTP Basic `base64(writeKey:)` or as `writeKey` in the body"
                .into(),
    }
}

/// The JSON answer of a refused request.
fn refuse(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (
        status,
        Json(serde_json::json!({ "success": false, "code": r.code, "message": r.message })),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"weft\""),
        );
    }
    response
}
