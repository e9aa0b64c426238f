//! The local HTTP API and the in-store display page (CONTRACT.md § Local HTTP API). Read-only.
//! Handlers hold only receivers and snapshots, so a slow screen can never hold up a vote.
//!
//! | path | module |
//! | --- | --- |
//! | `GET /` | [`page`]: the full-screen page, no external assets |
//! | `GET /api/v1/tallies`, `/api/v1/status`, `/healthz` | [`api`] |
//! | `GET /api/v1/events` | [`sse`]: server-sent events with `Last-Event-ID` replay |
//! | `GET /metrics` | [`metrics`]: Prometheus text format |

pub mod api;
pub mod metrics;
pub mod page;
pub mod server;
pub mod sse;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

use crate::config::DisplayConfig;
use crate::status::StatusSource;
use crate::tallies::task::TalliesOutput;
use crate::tallies::TalliesSnapshot;
pub use server::{serve, ConnectionGate};

/// Longest a plain request may take (event streams answer at once and then stream).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A tallies snapshot and its JSON.
type EncodedTallies = (Arc<TalliesSnapshot>, Bytes);

/// What the handlers read.
#[derive(Clone)]
pub struct DisplayState {
    /// Tallies and their live feed.
    pub tallies: TalliesOutput,
    /// The status.
    pub status: StatusSource,
    /// `[display]` as configured now (a reload changes it).
    pub settings: watch::Receiver<DisplayConfig>,
    /// Screens (event streams) connected now.
    pub screens: Arc<AtomicUsize>,
    /// Open HTTP connections, against `max-connections`.
    pub connections: Arc<ConnectionGate>,
    /// Ends event streams on shutdown (axum would keep them open).
    pub shutdown: CancellationToken,
    /// The last tallies snapshot served and its JSON: encoded once per snapshot, not per
    /// request (a screen polling and a burst of requests get the same bytes).
    tallies_json: Arc<Mutex<Option<EncodedTallies>>>,
}

impl DisplayState {
    /// State following `settings`.
    pub fn new(
        tallies: TalliesOutput,
        status: StatusSource,
        settings: watch::Receiver<DisplayConfig>,
        shutdown: CancellationToken,
    ) -> DisplayState {
        DisplayState {
            tallies,
            status,
            settings,
            screens: Arc::new(AtomicUsize::new(0)),
            connections: Arc::new(ConnectionGate::default()),
            shutdown,
            tallies_json: Arc::new(Mutex::new(None)),
        }
    }

    /// The current tallies as JSON, encoded at most once per snapshot.
    pub fn tallies_json(&self) -> Bytes {
        let snapshot = self.tallies.snapshot.borrow().clone();
        let mut cached = self
            .tallies_json
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*cached {
            Some((served, json)) if Arc::ptr_eq(served, &snapshot) => json.clone(),
            _ => {
                let json = Bytes::from(serde_json::to_vec(&*snapshot).unwrap_or_default());
                *cached = Some((snapshot, json.clone()));
                json
            }
        }
    }

    /// Screens connected now.
    pub fn screens_connected(&self) -> usize {
        self.screens.load(Ordering::Relaxed)
    }
}

/// The routes, with CORS (from the current `allowed-origins`) and a request timeout.
pub fn router(state: DisplayState) -> Router {
    Router::new()
        .route("/", get(page::page))
        .route("/api/v1/tallies", get(api::tallies))
        .route("/api/v1/alerts", get(api::alerts))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/events", get(sse::events))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(metrics::metrics))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

/// CORS for a read-only API: `Access-Control-Allow-Origin` for an allowed `Origin` (`*` when
/// any is), and the preflight answered here. Written out rather than taken from tower-http so
/// that the allowed origins follow a reload.
async fn cors(State(state): State<DisplayState>, request: Request, next: Next) -> Response {
    let allowed = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|origin| allow_origin(&state.settings.borrow().allowed_origins, origin));
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        if allowed.is_some() {
            response.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET,HEAD"),
            );
        }
        response
    } else {
        next.run(request).await
    };
    if let Some(value) = allowed {
        let headers = response.headers_mut();
        if value != "*" {
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    response
}

/// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
fn allow_origin(allowed: &[String], origin: &HeaderValue) -> Option<HeaderValue> {
    if allowed.iter().any(|o| o == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    allowed
        .iter()
        .any(|o| o.as_bytes() == origin.as_bytes())
        .then(|| origin.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_allowed_by_the_current_list() {
        let origin = HeaderValue::from_static("http://screen.local:3000");
        assert_eq!(
            allow_origin(&["*".into()], &origin),
            Some(HeaderValue::from_static("*"))
        );
        assert_eq!(
            allow_origin(&["http://screen.local:3000".into()], &origin),
            Some(origin.clone())
        );
        assert_eq!(allow_origin(&["http://other".into()], &origin), None);
    }
}
