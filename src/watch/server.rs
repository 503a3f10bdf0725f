//! The daemon's HTTP endpoints: `/healthz`, `/readyz`, `/metrics`, `GET /plan` and
//! `POST /reconcile`, served on `--listen`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::plan::{self, PlanOptions};

use super::{metrics, Readiness, Shared};

/// The routes, over the state the daemon shares.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/plan", get(plan))
        .route("/reconcile", post(reconcile))
        .with_state(shared)
}

/// Serves until `down` turns true, then finishes the requests in progress.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut down: tokio::sync::watch::Receiver<bool>,
) {
    let shutdown = async move {
        let _ = down.wait_for(|down| *down).await;
    };
    if let Err(error) = axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(%error, "the HTTP server stopped");
    }
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

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        shared.metrics.encode(),
    )
        .into_response()
}

/// The plan as of now: the last valid config's desired state against the snapshot as it is
/// at this moment, so that it shows what is still pending rather than what was just applied.
async fn plan(State(shared): State<Arc<Shared>>) -> Response {
    let Some(current) = shared.current() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no plan yet: the daemon has not loaded a valid config and opened the snapshot\n",
        )
            .into_response();
    };
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
        };
        plan::to_json(&plan::plan(&current.config.desired, &snapshot, options))
    })
    .await;
    match computed {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(join) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("planning failed: {join}\n"),
        )
            .into_response(),
    }
}

/// Queues a reconcile (several requests while one runs coalesce into one more).
async fn reconcile(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    shared.reconcile_now.notify_one();
    (StatusCode::ACCEPTED, "reconcile queued\n")
}
