//! A point-to-point port: one terminal that talks whenever it has something to say
//! (hardware/PROTOCOL.md § 5).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frame::{Frame, POINT_ADDRESS};
use super::link::{Link, LinkError};
use super::{Discarded, Discards, PortContext};
use crate::model::TerminalId;
use crate::sources::registry::SourceCounters;

/// Serves the terminal until `shutdown` (`Ok`) or until the link fails (`Err`: reopen).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    terminal: &TerminalId,
    offline_after: Duration,
    ctx: &PortContext,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let counters = &ctx.registry.counters;
    let mut discards = Discards::default();
    let mut silence_deadline = Instant::now() + offline_after;
    loop {
        let item = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(silence_deadline) => {
                ctx.went_silent(terminal);
                silence_deadline = Instant::now() + offline_after;
                continue;
            }
            item = link.next() => item?,
        };
        let frame = match item {
            Ok(frame) => frame,
            Err(err) => {
                discards.record(ctx, Discarded::Noise(&err));
                continue;
            }
        };
        if frame.address != POINT_ADDRESS || !frame.message.from_terminal() {
            discards.record(ctx, Discarded::Unexpected(&frame));
            continue;
        }
        SourceCounters::bump(&counters.frames);
        silence_deadline = Instant::now() + offline_after;
        if let Some(reply) = ctx.answer(terminal, frame.message).await {
            link.send(&Frame {
                address: POINT_ADDRESS,
                message: reply,
            })
            .await?;
        }
    }
}
