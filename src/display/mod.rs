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
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

use crate::config::DisplayConfig;
use crate::status::StatusSource;
use crate::tallies::task::TalliesOutput;

/// Longest a plain request may take (event streams answer at once and then stream).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers read.
#[derive(Clone)]
pub struct DisplayState {
    /// Tallies and their live feed.
    pub tallies: TalliesOutput,
    /// The status.
    pub status: StatusSource,
    /// One permit per screen (event stream) allowed at once.
    pub screens: Arc<Semaphore>,
    /// How many screens may connect.
    pub max_screens: usize,
    /// Ends event streams on shutdown (axum would keep them open).
    pub shutdown: CancellationToken,
    /// The page, rendered once with the configured title.
    pub page: Arc<str>,
}

impl DisplayState {
    /// State for `config`.
    pub fn new(
        tallies: TalliesOutput,
        status: StatusSource,
        config: &DisplayConfig,
        shutdown: CancellationToken,
    ) -> DisplayState {
        DisplayState {
            tallies,
            status,
            screens: Arc::new(Semaphore::new(config.max_screens)),
            max_screens: config.max_screens,
            shutdown,
            page: Arc::from(page::render(&config.title)),
        }
    }

    /// Screens connected now.
    pub fn screens_connected(&self) -> usize {
        self.max_screens - self.screens.available_permits()
    }
}

/// The routes, with CORS and a request timeout.
pub fn router(state: DisplayState, allowed_origins: &[String]) -> Router {
    let origins = if allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let cors = CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::HEAD]);
    Router::new()
        .route("/", get(page::page))
        .route("/api/v1/tallies", get(api::tallies))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/events", get(sse::events))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(metrics::metrics))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(cors)
        .with_state(state)
}

/// Serves until `shutdown`; event streams end at once, then open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
