//! `GET /api/v1/events`: server-sent events. Each accepted vote is an event `vote` with the
//! vote's seq as id and the new tallies; the windows rolling produce `tallies` events (only when
//! a count changed); a screen
//! that connects fresh, missed more than the replay buffer, or names a `Last-Event-ID` this
//! gateway never sent (ahead of its journal: data folder wiped, gateway swapped) first gets a
//! `reset` with the full tallies. `Last-Event-ID` (sent by browsers when they reconnect) replays
//! the vote events missed, then a `tallies` event with the tallies as they are now. A `ping` event every [`KEEP_ALIVE`] lets a page tell a live stream from a
//! dead one (comments are invisible to `EventSource`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::DisplayState;
use crate::model::Seq;
use crate::tallies::feed::{Catchup, LiveEvent};

/// How long a browser waits before reconnecting a dropped stream (the `retry:` field).
const RETRY: Duration = Duration::from_secs(3);
/// A `ping` event this often keeps idle connections (and proxies) alive and shows the page that
/// the stream is.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One connected screen, counted until dropped.
struct Screen(Arc<AtomicUsize>);

impl Screen {
    /// Counts a screen in if fewer than `max` are connected.
    fn connect(screens: &Arc<AtomicUsize>, max: usize) -> Option<Screen> {
        screens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Screen(screens.clone()))
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The event stream.
pub async fn events(State(state): State<DisplayState>, headers: HeaderMap) -> Response {
    let max_screens = state.settings.borrow().max_screens;
    let Some(screen) = Screen::connect(&state.screens, max_screens) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "5")],
            format!("too many screens connected (display.max-screens = {max_screens})\n"),
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
            // Rolls are not replayed: the tallies as they are now close the catch-up, or a
            // screen away while a vote left a window would show it until the next change.
            let mut first: Vec<Event> = events.iter().map(|e| to_event(e)).collect();
            first.push(snapshot_event(&state, "tallies"));
            (first, last)
        }
        Catchup::Snapshot => (vec![snapshot_event(&state, "reset")], None),
    };
    let follow = Follow {
        receiver,
        state: state.clone(),
        last_sent,
        shutdown: state.shutdown.clone(),
        _screen: screen,
    };
    let stream = stream::iter(first.into_iter().map(Ok)).chain(follow.into_stream());
    let ping = Event::default().event("ping").data("{}");
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).event(ping))
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

/// The current tallies as a `reset` or `tallies` event.
fn snapshot_event(state: &DisplayState, kind: &'static str) -> Event {
    let snapshot = state.tallies.snapshot.borrow().clone();
    Event::default()
        .event(kind)
        .data(serde_json::to_string(&*snapshot).unwrap_or_default())
        .retry(RETRY)
}

/// The live part of one screen's stream.
struct Follow {
    receiver: broadcast::Receiver<Arc<LiveEvent>>,
    state: DisplayState,
    last_sent: Option<Seq>,
    shutdown: CancellationToken,
    /// Counted for as long as the stream lives.
    _screen: Screen,
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
                        let sse = snapshot_event(&follow.state, "reset");
                        return Some((Ok(sse), follow));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}
