//! The daemon's HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, `GET /plan` and
//! `POST /reconcile`, served on `--listen`.

use std::sync::Arc;

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::plan::{self, PlanOptions};

use super::{metrics, Readiness, Shared};

/// At most this many connections at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection (keep-alive included) lives at most this long.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The routes, over the state the daemon shares.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/plan", get(plan))
        .route("/reconcile", post(reconcile))
        // Nothing here reads a body: refuse any that is not tiny.
        .layer(axum::extract::DefaultBodyLimit::max(1024))
        .with_state(shared)
}

/// Serves until `down` turns true, then finishes the requests in progress. Each connection
/// must send its headers within [`HEADER_READ_TIMEOUT`] and lives at most
/// [`CONNECTION_LIFETIME`]; beyond [`MAX_CONNECTIONS`] new ones are closed at once.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut down: tokio::sync::watch::Receiver<bool>,
) {
    let app = router(shared);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = GracefulShutdown::new();
    let shutdown = async move {
        let _ = down.wait_for(|down| *down).await;
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "the daemon could not accept a connection");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::debug!("too many connections to the daemon's endpoints: closing one");
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Ok(Err(error)) = tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                        tracing::debug!(%error, "a connection to the daemon closed with an error");
                    }
                    drop(slot);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
}

/// The 401 answer, unless `headers` carry the daemon's bearer token (or it has none). The
/// comparison takes the same time whatever the token: both sides are hashed, then compared.
fn refusal(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let token = shared.listen_token.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if token.matches(given) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required: Authorization: Bearer <the token in --listen-token-env>\n",
        )
            .into_response(),
    )
}

/// The process is up and its loop is running.
async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the last reconcile succeeded and the snapshot is open; 503 with the reason.
async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match shared.readiness() {
        Readiness::Ready => (StatusCode::OK, "ready\n".to_owned()),
        // Like a controller-runtime replica without the lease: healthy and serving reads.
        Readiness::Standby(holder) => (
            StatusCode::OK,
            format!("standby: another attrsync{holder} is the active one\n"),
        ),
        Readiness::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&shared, &headers) {
        return refused;
    }
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        shared.metrics.encode(),
    )
        .into_response()
}

/// The plan as of now: the last valid config's desired state against the snapshot as it was
/// after the last reconcile, so that it shows what is still pending rather than what was just
/// applied. It is computed once per reconcile, by the first request after it; concurrent
/// requests wait for that one and share its result, so they cost no more memory than one.
async fn plan(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&shared, &headers) {
        return refused;
    }
    let Some(current) = shared.current() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no plan yet: the daemon has not loaded a valid config and opened the snapshot\n",
        )
            .into_response();
    };
    let generation = shared.generation();
    let mut cache = shared.plan_cache.lock().await;
    if let Some((cached, json)) = cache.as_ref() {
        if *cached == generation {
            return json_response(json.clone());
        }
    }
    let previous_endpoint = current.store.previous_target();
    let snapshot = match current.store.load().await {
        Ok(snapshot) => snapshot,
        Err(error) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response()
        }
    };
    let computed = tokio::task::spawn_blocking(move || {
        let settings = &current.config.settings;
        let options = PlanOptions {
            sdkappid: settings.sdkappid,
            prune: settings.prune,
            endpoint: settings.target.key(),
            previous_endpoint,
            targets: Vec::new(),
        };
        plan::to_json(&plan::plan(&current.config.desired, &snapshot, options))
    })
    .await;
    match computed {
        Ok(json) => {
            let json = axum::body::Bytes::from(json);
            *cache = Some((generation, json.clone()));
            json_response(json)
        }
        Err(join) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("planning failed: {join}\n"),
        )
            .into_response(),
    }
}

/// The cached plan as a response: the body shares the cache's buffer, so N concurrent
/// requests hold one copy of the plan, not N.
fn json_response(json: axum::body::Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// Queues a reconcile (several requests while one runs coalesce into one more). While the
/// daemon backs off after a failure it answers 429 with `Retry-After`: a request never makes
/// the daemon call the API sooner than its backoff allows.
async fn reconcile(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refusal(&shared, &headers) {
        return refused;
    }
    if let Some(wait) = shared.backing_off() {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, seconds.to_string())],
            format!("the daemon is backing off after a failed reconcile; it retries by itself in {seconds}s\n"),
        )
            .into_response();
    }
    shared.reconcile_now.notify_one();
    (StatusCode::ACCEPTED, "reconcile queued\n").into_response()
}
