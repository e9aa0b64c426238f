//! The JSON endpoints and the health check.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::DisplayState;

/// `GET /api/v1/tallies`: per terminal and for the site, today / last 60 min / last 15 min.
pub async fn tallies(State(state): State<DisplayState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        state.tallies_json(),
    )
        .into_response()
}

/// `GET /api/v1/alerts`: open alerts and those closed in the last 24 hours.
pub async fn alerts(State(state): State<DisplayState>) -> Response {
    let snapshot = state.tallies.alerts.borrow().clone();
    json(&*snapshot)
}

/// `GET /api/v1/status`.
pub async fn status(State(state): State<DisplayState>) -> Response {
    json(&state.status.snapshot())
}

/// `GET /healthz`: 200 `ok`, or 503 with one line per reason.
pub async fn healthz(State(state): State<DisplayState>) -> Response {
    let status = state.status.snapshot();
    let code = if status.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [(header::CACHE_CONTROL, "no-store")],
        status.health_text(),
    )
        .into_response()
}

fn json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode: {err}\n"),
        )
            .into_response(),
    }
}
