//! The HTTP/1.1 server, bounded so that no client can starve it (axum's `serve` has no
//! timeouts and no limit):
//!
//! - **Header-read timeout** ([`HEADER_READ_TIMEOUT`], 10 s): a client must send a request's
//!   headers within it. hyper starts the same timer when a keep-alive connection goes idle after
//!   a response, so it is also the **idle keep-alive timeout**: a half-sent request line or an
//!   idle connection is closed after 10 s.
//! - **A cap on open connections** (`display.max-connections`, default 512, kept well under the
//!   unit's `LimitNOFILE=4096`): above it a connection gets `503 Service Unavailable` at once and
//!   is closed; a warning is logged at most once a minute with the count refused.
//! - Event streams (screens) are bounded apart by `display.max-screens`, below the cap, so that
//!   `/healthz` and the API stay reachable when every screen is connected.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::DisplayConfig;
use crate::throttle::Throttle;

/// How long a client has to send a request's headers, and how long an idle keep-alive
/// connection is kept.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections being refused (answered 503 and drained) at once, at most; beyond, they are
/// closed without an answer.
const MAX_REFUSING: usize = 64;
/// How long a refused connection's request is read (and discarded) after the 503, so that
/// closing does not reset the connection before the client has read the answer.
const REFUSE_LINGER: Duration = Duration::from_secs(1);
/// Accept errors (out of file descriptors) are retried after this pause.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Counts the open connections against the cap.
#[derive(Debug, Default)]
pub struct ConnectionGate {
    open: AtomicUsize,
    refusing: AtomicUsize,
    refused: AtomicU64,
}

/// What to do with a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Serve it; the guard counts it open until dropped.
    Serve(GateGuard),
    /// Answer 503; the guard counts it as being refused until dropped.
    Refuse(GateGuard),
    /// Too many being refused already: close it at once.
    Close,
}

/// Counts one connection for as long as it lives.
#[derive(Debug)]
pub struct GateGuard {
    gate: Arc<ConnectionGate>,
    refusing: bool,
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        let counter = if self.refusing {
            &self.gate.refusing
        } else {
            &self.gate.open
        };
        counter.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionGate {
    /// Admits a connection if fewer than `max` are open.
    pub fn admit(self: &Arc<Self>, max: usize) -> Admission {
        if increment_below(&self.open, max) {
            return Admission::Serve(GateGuard {
                gate: self.clone(),
                refusing: false,
            });
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        if increment_below(&self.refusing, MAX_REFUSING) {
            return Admission::Refuse(GateGuard {
                gate: self.clone(),
                refusing: true,
            });
        }
        Admission::Close
    }

    /// Connections open now (refused ones not included).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Adds one to `counter` unless it is at `limit` already.
fn increment_below(counter: &AtomicUsize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

/// Serves `router` on `listener` until `shutdown`; then stops accepting, lets open requests
/// finish (event streams end on the same token) and returns when every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    gate: Arc<ConnectionGate>,
    settings: watch::Receiver<DisplayConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    let mut refusals = Throttle::new(LOG_EVERY);
    let mut accept_errors = Throttle::new(LOG_EVERY);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                if let Some(count) = accept_errors.hit(Instant::now()) {
                    log::warn!("HTTP: cannot accept connections ({count} times): {err}");
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let max = settings.borrow().max_connections;
        match gate.admit(max) {
            Admission::Serve(guard) => {
                let service = TowerToHyperService::new(router.clone());
                connections.spawn(serve_connection(stream, service, guard, shutdown.clone()));
            }
            admission => {
                if let Some(count) = refusals.hit(Instant::now()) {
                    log::warn!(
                        "HTTP: {max} connections open (display.max-connections): refused {count} connection(s) with 503 in the last minute"
                    );
                }
                if let Admission::Refuse(guard) = admission {
                    connections.spawn(refuse(stream, max, guard));
                }
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    service: TowerToHyperService<Router>,
    _guard: GateGuard,
    shutdown: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // Timeouts and clients going away: nothing an operator must see.
        log::debug!("HTTP connection ended: {err}");
    }
}

/// Answers 503 without reading the request, then reads (and drops) what the client sends for a
/// moment, so that it sees the answer rather than a reset.
async fn refuse(mut stream: TcpStream, max: usize, _guard: GateGuard) {
    let body = format!(
        "too many connections (display.max-connections = {max}); try again in a few seconds\n"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_serves_up_to_the_cap_then_refuses_then_closes() {
        let gate = Arc::new(ConnectionGate::default());
        let served: Vec<_> = (0..3)
            .map(|_| match gate.admit(3) {
                Admission::Serve(guard) => guard,
                other => panic!("expected to serve, got {other:?}"),
            })
            .collect();
        assert_eq!(gate.open(), 3);
        let refused: Vec<_> = (0..MAX_REFUSING)
            .map(|_| match gate.admit(3) {
                Admission::Refuse(guard) => guard,
                other => panic!("expected a 503, got {other:?}"),
            })
            .collect();
        assert!(matches!(gate.admit(3), Admission::Close));
        assert_eq!(gate.refused(), MAX_REFUSING as u64 + 1);
        drop(refused);
        drop(served);
        assert_eq!(gate.open(), 0);
        let kept = gate.admit(3);
        assert!(matches!(kept, Admission::Serve(_)));
        // A lower cap after a reload applies to new connections.
        assert!(matches!(gate.admit(1), Admission::Refuse(_)));
    }
}
