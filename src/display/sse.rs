//! `GET /api/v1/events`: server-sent events. Each accepted vote is an event `vote` with the
//! vote's seq as id and the new tallies; the windows rolling produce `tallies` events; a screen
//! that connects fresh, or missed more than the replay buffer, first gets a `reset` with the
//! full tallies. `Last-Event-ID` (sent by browsers when they reconnect) replays what was missed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::{broadcast, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::DisplayState;
use crate::model::Seq;
use crate::tallies::feed::{Catchup, LiveEvent};

/// How long a browser waits before reconnecting.
const RETRY: Duration = Duration::from_secs(3);
/// Comment lines keep idle connections (and proxies) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The event stream.
pub async fn events(State(state): State<DisplayState>, headers: HeaderMap) -> Response {
    let Ok(permit) = state.screens.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many screens connected (display.max-screens = {})\n",
                state.max_screens
            ),
        )
            .into_response();
    };
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<Seq>().ok());
    let (catchup, receiver) = state.tallies.feed.subscribe(last_id);
    // Vote events up to `last_sent` are not sent again from the live part.
    let (first, last_sent): (Vec<Event>, Option<Seq>) = match catchup {
        Catchup::Replay(events) => {
            let last = events.last().and_then(|e| e.id).or(last_id);
            (events.iter().map(|e| to_event(e)).collect(), last)
        }
        Catchup::Snapshot => (vec![reset(&state)], None),
    };
    let follow = Follow {
        receiver,
        state: state.clone(),
        last_sent,
        shutdown: state.shutdown.clone(),
        _permit: permit,
    };
    let stream = stream::iter(first.into_iter().map(Ok)).chain(follow.into_stream());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

fn to_event(event: &LiveEvent) -> Event {
    let mut sse = Event::default()
        .event(event.kind)
        .data(&event.data)
        .retry(RETRY);
    if let Some(id) = event.id {
        sse = sse.id(id.to_string());
    }
    sse
}

fn reset(state: &DisplayState) -> Event {
    let snapshot = state.tallies.snapshot.borrow().clone();
    Event::default()
        .event("reset")
        .data(serde_json::to_string(&*snapshot).unwrap_or_default())
        .retry(RETRY)
}

/// The live part of one screen's stream.
struct Follow {
    receiver: broadcast::Receiver<Arc<LiveEvent>>,
    state: DisplayState,
    last_sent: Option<Seq>,
    shutdown: CancellationToken,
    /// Held for as long as the stream lives: one screen.
    _permit: OwnedSemaphorePermit,
}

impl Follow {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        stream::unfold(self, |mut follow| async move {
            loop {
                let received = tokio::select! {
                    _ = follow.shutdown.cancelled() => return None,
                    received = follow.receiver.recv() => received,
                };
                match received {
                    Ok(event) => {
                        if let (Some(id), Some(last)) = (event.id, follow.last_sent) {
                            if id <= last {
                                continue; // already sent in the replay
                            }
                        }
                        if event.id.is_some() {
                            follow.last_sent = event.id;
                        }
                        let sse = to_event(&event);
                        return Some((Ok(sse), follow));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let sse = reset(&follow.state);
                        return Some((Ok(sse), follow));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}
