//! The HTTP APIs of a cluster, served by process 0.
//!
//! ```text
//!   /v1/jobs…, /v1/cluster, /v1/shutdown   control API (control.rs)      ┐ bearer token
//!   profile and audience endpoints         Profile API (profiles.rs)     ┘ (when configured)
//!   /v1/track, /v1/batch, …                collection API (collect.rs)   write keys, checked there
//!   /metrics, /healthz                     Prometheus metrics (metrics.rs), liveness: no auth
//! ```
//!
//! The server runs on its own tokio runtime and threads ([`serve`]); it
//! never runs on timely worker threads. Handlers talk to the workers only
//! through [`Cluster`]'s command channel and read its shared registry.
//!
//! Errors are JSON, `{"error": "what went wrong"}`, with 400 for malformed
//! input, 401 for a missing or wrong token, 404 for an unknown job or path,
//! 409 when the request does not fit the job's state, 500 for I/O failures
//! and 503 once the cluster has stopped.

pub mod client;
pub mod collect;
pub mod control;
pub mod metrics;
pub mod profiles;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use crate::runtime::{Cluster, ControlError};

/// Where and how the APIs are served.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `host:port` to listen on (port 0: any free port; see [`ApiServer::local_addr`]).
    pub listen: String,
    /// The bearer token the control and profile APIs require; `None` leaves
    /// them open, which [`serve`] allows on a loopback address only.
    pub token: Option<String>,
}

/// An error answered as `{"error": message}` with its status.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the client.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// A 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match &e {
            ControlError::NoSuchJob(_) => StatusCode::NOT_FOUND,
            ControlError::NameInUse(_) | ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::NotLeader(_) => StatusCode::MISDIRECTED_REQUEST,
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Every route of the APIs: the control API and the Profile API behind
/// `token`, the collection API with its own write-key auth, and `/metrics`
/// and `/healthz` open.
pub fn router(cluster: Arc<Cluster>, token: Option<String>) -> Router {
    let protected = control::routes(cluster.clone())
        .merge(profiles::routes(cluster.clone()))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        ));
    Router::new()
        .merge(protected)
        .merge(collect::routes(cluster.clone()))
        .merge(metrics::routes(cluster))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
}

/// Answers 401 unless the request carries `Authorization: Bearer <token>`.
async fn require_token(
    State(token): State<Arc<Option<String>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = token.as_deref() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.trim().as_bytes(), expected.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong token").into_response(),
        None => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing token: send `Authorization: Bearer <token>`",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            r
        }
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The APIs running on their own threads; dropping it stops them.
pub struct ApiServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, lets requests in flight finish, and
    /// waits for the server's threads.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Binds `config.listen` and serves [`router`] on a tokio runtime of its
/// own (threads named `weft-api`); returns once the socket is bound.
pub fn serve(config: ApiConfig, cluster: Arc<Cluster>) -> anyhow::Result<ApiServer> {
    let listener = std::net::TcpListener::bind(&config.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    anyhow::ensure!(
        config.token.is_some() || addr.ip().is_loopback(),
        "refusing to serve the control API on {addr} without a token: set --token or WEFT_TOKEN, or listen on 127.0.0.1"
    );
    listener.set_nonblocking(true)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get().clamp(2, 4))
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("weft-api")
        .enable_all()
        .build()?;
    let app = router(cluster, config.token);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("weft-api-main".into())
        .spawn(move || {
            let result = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await
            });
            if let Err(e) = result {
                tracing::error!("the HTTP API stopped: {e}");
            }
        })?;
    tracing::info!(%addr, "HTTP API listening");
    Ok(ApiServer {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}
