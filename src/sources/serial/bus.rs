//! An RS-485 bus: the gateway polls each address in turn and the addressed terminal answers with
//! one frame (hardware/PROTOCOL.md § 5.3).
//!
//! Frames carry no poll number, so an answer that comes after the reply timeout would be taken
//! for the answer to the next poll of that terminal, and every answer after it would be one
//! poll late: repeated hellos, votes stored from a stale answer and sent again (duplicates),
//! latency growing with the backlog. Before every poll the gateway therefore discards whatever
//! arrived since the last answer (counted as unexpected frames): a late answer is never used, and
//! its terminal answers the next poll afresh.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frame::{Frame, Message};
use super::link::{Link, LinkError};
use super::{Discarded, Discards, PortContext};
use crate::config::SerialPortConfig;
use crate::sources::registry::SourceCounters;

/// At most this many pending frames are discarded before a poll (a line full of noise must not
/// keep the gateway from polling).
const MAX_DISCARDED_BEFORE_POLL: usize = 64;

/// Unanswered polls in a row after which a terminal is offline.
pub const OFFLINE_AFTER_MISSES: u32 = 5;
/// Offline terminals are polled only every this many rounds.
const OFFLINE_POLL_EVERY: u64 = 10;
/// A terminal that answered with a vote is polled again at once, up to this many times.
const DRAIN_POLLS: usize = 8;

/// Polls the bus until `shutdown` (`Ok`) or until the link fails (`Err`: reopen).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    port: &SerialPortConfig,
    ctx: &PortContext,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let mut missed: HashMap<u8, u32> = HashMap::new();
    let mut discards = Discards::default();
    let mut round: u64 = 0;
    loop {
        let round_start = Instant::now();
        for (address, terminal) in &port.terminals {
            let misses = missed.entry(*address).or_default();
            if *misses >= OFFLINE_AFTER_MISSES && round % OFFLINE_POLL_EVERY != 0 {
                continue;
            }
            for _ in 0..DRAIN_POLLS {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                discard_pending(link, ctx, &mut discards).await?;
                link.send(&Frame {
                    address: *address,
                    message: Message::Poll,
                })
                .await?;
                let reply = wait_reply(link, *address, port.reply_timeout, ctx, &mut discards);
                let Some(message) = reply.await? else {
                    *misses += 1;
                    if *misses == OFFLINE_AFTER_MISSES {
                        ctx.went_silent(terminal);
                    }
                    break;
                };
                *misses = 0;
                let was_vote = matches!(message, Message::Vote(_));
                if let Some(reply) = ctx.answer(terminal, message).await {
                    link.send(&Frame {
                        address: *address,
                        message: reply,
                    })
                    .await?;
                }
                if !was_vote {
                    break;
                }
            }
        }
        round += 1;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(round_start + port.poll_interval) => {}
        }
    }
}

/// Discards what arrived since the last answer: late answers, noise. The gateway's own frames
/// (echoed by some adapters) are skipped silently.
async fn discard_pending<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    ctx: &PortContext,
    discards: &mut Discards,
) -> Result<(), LinkError> {
    for _ in 0..MAX_DISCARDED_BEFORE_POLL {
        // A zero timeout still polls the read once: only what is there already.
        let Ok(item) = tokio::time::timeout(Duration::ZERO, link.next()).await else {
            return Ok(());
        };
        match item? {
            Err(err) => discards.record(ctx, Discarded::Noise(&err)),
            Ok(frame) if !frame.message.from_terminal() => {}
            Ok(frame) => discards.record(ctx, Discarded::Late(&frame)),
        }
    }
    Ok(())
}

/// The polled terminal's answer, or `None` after `timeout`. Frames from other addresses and
/// noise are counted and skipped; the gateway's own frames (echoed by some adapters) are skipped.
async fn wait_reply<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    address: u8,
    timeout: Duration,
    ctx: &PortContext,
    discards: &mut Discards,
) -> Result<Option<Message>, LinkError> {
    let counters = &ctx.registry.counters;
    let deadline = Instant::now() + timeout;
    loop {
        let item = match tokio::time::timeout_at(deadline, link.next()).await {
            Err(_elapsed) => return Ok(None),
            Ok(item) => item?,
        };
        match item {
            Err(err) => discards.record(ctx, Discarded::Noise(&err)),
            Ok(frame) if !frame.message.from_terminal() => {}
            Ok(frame) if frame.address == address => {
                SourceCounters::bump(&counters.frames);
                return Ok(Some(frame.message));
            }
            Ok(frame) => discards.record(ctx, Discarded::Late(&frame)),
        }
    }
}
