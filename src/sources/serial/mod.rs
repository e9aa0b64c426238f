//! Serial terminals (hardware/PROTOCOL.md): point-to-point over USB-serial, or polled on an
//! RS-485 bus. One task per port: [`run_port`] opens the port, runs the [`point`] or [`bus`]
//! session until the port is lost, and reopens it with backoff.
//!
//! A vote is acknowledged to the terminal only after the journal's durable reply; a vote the
//! journal refuses or fails to store is not answered, so the terminal keeps it and sends it again.

pub mod bus;
pub mod emulator;
pub mod frame;
pub mod link;
pub mod point;
pub mod port;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::config::{PortMode, SerialPortConfig};
use crate::health::SourceState;
use crate::model::{Button, TerminalId};
use crate::sources::registry::{Registry, SourceCounters};
use crate::sources::{Intake, PressEvent};
use crate::throttle::Throttle;
use frame::{Message, NackReason, VoteMessage, MAX_FIRMWARE_LEN, PROTOCOL_VERSION};
use link::Link;

/// First delay before reopening a lost port; doubles up to [`REOPEN_CAP`].
const REOPEN_INITIAL: Duration = Duration::from_millis(250);
const REOPEN_CAP: Duration = Duration::from_secs(10);

/// How often at most a port logs a warning about discarded frames.
const DISCARD_WARN_EVERY: Duration = Duration::from_secs(60);

/// Why a received frame was not used (hardware/PROTOCOL.md § 2, § 5.3). Each is counted: noise
/// in `frame_errors`, the others in `unexpected_frames`.
#[derive(Debug)]
pub enum Discarded<'a> {
    /// Bytes that are not a valid frame (bad CRC, unknown version or type, …).
    Noise(&'a frame::FrameError),
    /// A valid frame that makes no sense here: another address, or a gateway's message.
    Unexpected(&'a frame::Frame),
    /// A bus terminal's answer that came after the reply timeout (found before the next poll).
    Late(&'a frame::Frame),
}

impl std::fmt::Display for Discarded<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Discarded::Noise(err) => write!(f, "discarded bytes: {err}"),
            Discarded::Unexpected(frame) => write!(
                f,
                "discarded an unexpected frame from address {}: {:?}",
                frame.address, frame.message
            ),
            Discarded::Late(frame) => write!(
                f,
                "discarded a late answer from address {} (after reply-timeout, or out of turn): {:?}",
                frame.address, frame.message
            ),
        }
    }
}

/// Counts and logs discarded frames of one port: each at DEBUG, and a WARN at most once a
/// minute with how many there were.
#[derive(Debug)]
pub struct Discards {
    throttle: Throttle,
}

impl Default for Discards {
    fn default() -> Discards {
        Discards {
            throttle: Throttle::new(DISCARD_WARN_EVERY),
        }
    }
}

impl Discards {
    /// Counts and logs one discarded frame.
    pub fn record(&mut self, ctx: &PortContext, what: Discarded<'_>) {
        let counters = &ctx.registry.counters;
        let counter = match what {
            Discarded::Noise(_) => &counters.frame_errors,
            Discarded::Unexpected(_) | Discarded::Late(_) => &counters.unexpected_frames,
        };
        SourceCounters::bump(counter);
        log::debug!(port:% = ctx.port; "{what}");
        if let Some(count) = self.throttle.hit(tokio::time::Instant::now()) {
            log::warn!(
                port:% = ctx.port;
                "{count} frame(s) discarded on this port since the last warning (noise, late bus answers or frames for another address; \
                 counted in votegate_serial_frame_errors_total and votegate_serial_unexpected_frames_total), the latest: {what}"
            );
        }
    }
}

/// What a port task needs from the rest of the daemon.
#[derive(Clone)]
pub struct PortContext {
    /// Where votes go.
    pub intake: Arc<Intake>,
    /// Where terminal states and counters go.
    pub registry: Arc<Registry>,
    /// For "last seen" times.
    pub clock: Arc<dyn Clock>,
    /// The port's path, for logs.
    pub port: String,
}

impl PortContext {
    fn seen(&self, terminal: &TerminalId) {
        if self.registry.seen(terminal, self.clock.now().wall_ms) {
            log::info!(terminal:% = terminal, port:% = self.port; "terminal online");
        }
    }

    fn went_silent(&self, terminal: &TerminalId) {
        if self.registry.offline(terminal) {
            log::warn!(terminal:% = terminal, port:% = self.port; "terminal offline: no answer");
        }
    }

    /// Handles a message from `terminal` and returns the answer to send, if any.
    async fn answer(&self, terminal: &TerminalId, message: Message) -> Option<Message> {
        self.seen(terminal);
        match message {
            Message::Hello(mut hello) => {
                if hello.firmware.len() > MAX_FIRMWARE_LEN {
                    let mut cut = MAX_FIRMWARE_LEN;
                    while !hello.firmware.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    log::warn!(
                        terminal:% = terminal, port:% = self.port;
                        "the terminal's firmware string is {} bytes, over the protocol's 16: keeping {:?}",
                        hello.firmware.len(), &hello.firmware[..cut]
                    );
                    hello.firmware.truncate(cut);
                }
                log::info!(
                    terminal:% = terminal, port:% = self.port, firmware:% = hello.firmware, protocol = hello.protocol;
                    "terminal said hello"
                );
                self.registry.hello(terminal, &hello);
                Some(Message::Welcome {
                    protocol: PROTOCOL_VERSION,
                })
            }
            Message::Vote(vote) => self.answer_vote(terminal, vote).await,
            Message::Status(status) => {
                self.registry.status(terminal, &status);
                None
            }
            _ => {
                SourceCounters::bump(&self.registry.counters.unexpected_frames);
                None
            }
        }
    }

    async fn answer_vote(&self, terminal: &TerminalId, vote: VoteMessage) -> Option<Message> {
        let Ok(button) = Button::try_from(vote.button) else {
            SourceCounters::bump(&self.registry.counters.invalid_buttons);
            log::warn!(
                terminal:% = terminal, port:% = self.port, term_seq = vote.term_seq;
                "vote with invalid button {} refused", vote.button
            );
            return Some(Message::Nack {
                term_seq: vote.term_seq,
                reason: NackReason::InvalidButton,
            });
        };
        let event = PressEvent {
            terminal: terminal.clone(),
            button,
            term_seq: Some(u64::from(vote.term_seq)),
            age_ms: u64::from(vote.age_ms),
        };
        match self.intake.submit(event).await {
            Ok(outcome) => match outcome.seq() {
                Some(_) => Some(Message::Ack {
                    term_seq: vote.term_seq,
                }),
                None => {
                    log::debug!(terminal:% = terminal, term_seq = vote.term_seq; "journal full: vote left with the terminal");
                    None
                }
            },
            Err(err) => {
                log::warn!(
                    terminal:% = terminal, port:% = self.port, term_seq = vote.term_seq;
                    "vote not journaled, not acknowledged (the terminal will resend it): {err}"
                );
                None
            }
        }
    }
}

/// Runs one serial port until `shutdown`: opens it, serves its terminals, reopens it with
/// backoff whenever it is lost (unplugged adapter, vanished device).
pub async fn run_port(port: SerialPortConfig, ctx: PortContext, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(REOPEN_INITIAL, REOPEN_CAP);
    let mut rng = fastrand::Rng::new();
    loop {
        match port::open(&port.path, port.baud) {
            Ok(stream) => {
                log::info!(port:% = ctx.port, baud = port.baud, terminals = port.terminals.len(); "serial port open ({:?} mode)", port.mode);
                backoff.reset();
                for (_, terminal) in &port.terminals {
                    ctx.registry.source(terminal, SourceState::Running);
                }
                let mut link = Link::new(stream);
                let result = match port.mode {
                    PortMode::Point => match port.terminals.first() {
                        Some((_, terminal)) => {
                            point::run(&mut link, terminal, port.offline_after, &ctx, &shutdown)
                                .await
                        }
                        None => return,
                    },
                    PortMode::Bus => bus::run(&mut link, &port, &ctx, &shutdown).await,
                };
                match result {
                    Ok(()) => return,
                    Err(err) => {
                        SourceCounters::bump(&ctx.registry.counters.port_disconnects);
                        for (_, terminal) in &port.terminals {
                            ctx.went_silent(terminal);
                        }
                        log::warn!(port:% = ctx.port; "serial port lost: {err}; reopening");
                    }
                }
            }
            Err(err) => {
                if backoff.failures() % 20 == 0 {
                    log::warn!(port:% = ctx.port; "{err}; retrying");
                }
                for (_, terminal) in &port.terminals {
                    ctx.registry.source(
                        terminal,
                        SourceState::Retrying {
                            error: err.to_string(),
                        },
                    );
                }
            }
        }
        let delay = backoff.next_delay(&mut rng);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::emulator::{Answered, EmulatedTerminal};
    use super::frame::{Frame, Message, VoteMessage};
    use super::*;
    use crate::clock::FakeClock;
    use crate::config::{TerminalConfig, DEFAULT_MIN_INTERVAL};
    use crate::journal::{Journal, JournalService, Limits};
    use tokio::io::DuplexStream;
    use tokio::time::Instant;

    fn id(name: &str) -> TerminalId {
        TerminalId::new(name).expect("valid id")
    }

    fn gateway(dir: &std::path::Path, terminals: &[&str]) -> (JournalService, PortContext) {
        let journal = crate::journal::spawn(Journal::open(dir, Limits::default()).expect("open"))
            .expect("spawn");
        let configs: Vec<TerminalConfig> = terminals
            .iter()
            .map(|t| TerminalConfig {
                id: id(t),
                min_interval: DEFAULT_MIN_INTERVAL,
                source: crate::config::SourceConfig::Serial {
                    port: "/dev/test".into(),
                    address: 0,
                },
            })
            .collect();
        let clock: Arc<dyn Clock> = Arc::new(FakeClock::new(1_795_000_000_000));
        let context = PortContext {
            intake: Arc::new(Intake::new(journal.handle(), clock.clone())),
            registry: Arc::new(Registry::new(&configs)),
            clock,
            port: "/dev/test".to_string(),
        };
        (journal, context)
    }

    /// Plays terminals on the terminal side of a pipe until `want` votes are answered.
    async fn drive(
        link: &mut Link<DuplexStream>,
        terminals: &mut [EmulatedTerminal],
        bus: bool,
        want: usize,
    ) -> Vec<Answered> {
        let mut answered = Vec::new();
        while answered.len() < want {
            if !bus {
                for terminal in terminals.iter_mut() {
                    if let Some(frame) = terminal.due(Instant::now()) {
                        link.send(&frame).await.expect("send");
                    }
                }
            }
            let Ok(item) = tokio::time::timeout(Duration::from_millis(20), link.next()).await
            else {
                continue;
            };
            let Ok(frame) = item.expect("link") else {
                continue;
            };
            let Some(terminal) = terminals.iter_mut().find(|t| t.address() == frame.address) else {
                continue;
            };
            if bus && frame.message == Message::Poll {
                link.send(&terminal.answer_poll(Instant::now()))
                    .await
                    .expect("send");
            } else if let Some(answer) = terminal.receive(&frame.message) {
                answered.push(answer);
            }
        }
        answered
    }

    #[tokio::test]
    async fn point_session_acks_durable_votes_nacks_invalid_buttons_and_dedups_retransmissions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (journal, ctx) = gateway(dir.path(), &["entrance"]);
        let (gateway_side, terminal_side) = tokio::io::duplex(4096);
        let shutdown = CancellationToken::new();
        let session = {
            let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut link = Link::new(gateway_side);
                point::run(
                    &mut link,
                    &id("entrance"),
                    Duration::from_secs(180),
                    &ctx,
                    &shutdown,
                )
                .await
            })
        };
        let mut link = Link::new(terminal_side);
        link.send_raw(&[0x42, 0x13, 0x00, 0x99])
            .await
            .expect("noise"); // garbage first
        let mut terminals = [EmulatedTerminal::new(
            "entrance",
            0,
            1,
            Duration::from_millis(50),
        )];
        for button in [4, 7, 2] {
            terminals[0].press(button, Instant::now());
        }
        let answered = drive(&mut link, &mut terminals, false, 3).await;
        assert_eq!(
            answered,
            [
                Answered::Acked {
                    terminal: "entrance".into(),
                    term_seq: 1,
                    button: 4
                },
                Answered::Refused {
                    terminal: "entrance".into(),
                    term_seq: 2,
                    button: 7
                },
                Answered::Acked {
                    terminal: "entrance".into(),
                    term_seq: 3,
                    button: 2
                },
            ]
        );
        // A retransmission of an acknowledged vote is acknowledged again, not stored again.
        let again = Frame {
            address: 0,
            message: Message::Vote(VoteMessage {
                term_seq: 1,
                button: 4,
                age_ms: 900,
            }),
        };
        link.send(&again).await.expect("send");
        let reply = link.next().await.expect("link").expect("frame");
        assert_eq!(reply.message, Message::Ack { term_seq: 1 });

        let votes = journal.handle().read_after(0, 10).await.expect("read");
        let stored: Vec<(Option<u64>, u8)> = votes
            .iter()
            .map(|v| (v.term_seq, v.button.number()))
            .collect();
        assert_eq!(stored, [(Some(1), 4), (Some(3), 2)]);
        let counters = &ctx.registry.counters;
        assert_eq!(
            counters
                .invalid_buttons
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert!(
            counters
                .frame_errors
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1,
            "the noise was counted"
        );
        let status = ctx.registry.terminal(&id("entrance")).expect("known");
        assert!(status.online);
        assert_eq!(status.firmware.as_deref(), Some("sim-1.0"));
        shutdown.cancel();
        assert!(session.await.expect("task").is_ok());
    }

    #[tokio::test]
    async fn bus_session_polls_every_address_and_marks_the_silent_one_offline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (journal, ctx) = gateway(dir.path(), &["gate-1", "gate-2", "gate-3"]);
        let port = SerialPortConfig {
            path: "/dev/test".into(),
            baud: 115_200,
            mode: PortMode::Bus,
            poll_interval: Duration::from_millis(10),
            reply_timeout: Duration::from_millis(15),
            offline_after: Duration::from_secs(180),
            terminals: vec![(1, id("gate-1")), (2, id("gate-2")), (3, id("gate-3"))],
        };
        let (gateway_side, terminal_side) = tokio::io::duplex(4096);
        let shutdown = CancellationToken::new();
        let session = {
            let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
            tokio::spawn(async move {
                bus::run(&mut Link::new(gateway_side), &port, &ctx, &shutdown).await
            })
        };
        let mut link = Link::new(terminal_side);
        // Address 3 is configured but nobody answers it.
        let mut terminals = [
            EmulatedTerminal::new("gate-1", 1, 100, Duration::from_millis(50)),
            EmulatedTerminal::new("gate-2", 2, 500, Duration::from_millis(50)),
        ];
        for n in 0..3 {
            terminals[0].press(1 + n, Instant::now());
            terminals[1].press(2 + n, Instant::now());
        }
        let answered = drive(&mut link, &mut terminals, true, 6).await;
        assert!(
            answered.iter().all(|a| matches!(a, Answered::Acked { .. })),
            "{answered:?}"
        );
        let votes = journal.handle().read_after(0, 10).await.expect("read");
        assert_eq!(votes.len(), 6);
        assert_eq!(
            votes
                .iter()
                .filter(|v| v.terminal.as_str() == "gate-2")
                .count(),
            3
        );
        assert!(ctx
            .registry
            .terminal(&id("gate-2"))
            .is_some_and(|s| s.online));
        // gate-2 falls silent (unplugged); gate-1 keeps answering. gate-2 must go offline after
        // 5 unanswered polls, gate-1 must stay online.
        let deadline = Instant::now() + Duration::from_secs(5);
        while ctx
            .registry
            .terminal(&id("gate-2"))
            .is_some_and(|s| s.online)
            && Instant::now() < deadline
        {
            let Ok(item) = tokio::time::timeout(Duration::from_millis(50), link.next()).await
            else {
                continue;
            };
            if let Ok(frame) = item.expect("link") {
                if frame.address == 1 && frame.message == Message::Poll {
                    link.send(&terminals[0].answer_poll(Instant::now()))
                        .await
                        .expect("send");
                }
            }
        }
        let gate_1 = ctx.registry.terminal(&id("gate-1")).expect("known");
        let gate_2 = ctx.registry.terminal(&id("gate-2")).expect("known");
        let gate_3 = ctx.registry.terminal(&id("gate-3")).expect("known");
        assert!(gate_1.online, "gate-1 answered every poll");
        assert!(
            !gate_2.online && gate_2.last_seen_ms.is_some(),
            "gate-2 went silent: {gate_2:?}"
        );
        assert!(
            !gate_3.online && gate_3.last_seen_ms.is_none(),
            "gate-3 never answered"
        );
        shutdown.cancel();
        assert!(session.await.expect("task").is_ok());
    }

    #[tokio::test]
    async fn a_bus_answer_after_the_reply_timeout_is_discarded_not_taken_for_the_next() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (journal, ctx) = gateway(dir.path(), &["gate-1", "gate-2"]);
        let port = SerialPortConfig {
            path: "/dev/test".into(),
            baud: 115_200,
            mode: PortMode::Bus,
            poll_interval: Duration::from_millis(100),
            reply_timeout: Duration::from_millis(15),
            offline_after: Duration::from_secs(180),
            terminals: vec![(1, id("gate-1")), (2, id("gate-2"))],
        };
        let (gateway_side, terminal_side) = tokio::io::duplex(4096);
        let shutdown = CancellationToken::new();
        let session = {
            let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
            tokio::spawn(async move {
                bus::run(&mut Link::new(gateway_side), &port, &ctx, &shutdown).await
            })
        };
        let mut link = Link::new(terminal_side);
        let mut terminal = EmulatedTerminal::new("gate-1", 1, 7, Duration::from_millis(50));
        terminal.press(3, Instant::now());
        let mut polls = 0;
        let answered = loop {
            let frame = link.next().await.expect("link").expect("frame");
            if frame.address != 1 {
                continue;
            }
            if frame.message == Message::Poll {
                polls += 1;
                if polls == 1 {
                    // Too late: the gateway gave up after 15 ms and must not use this answer.
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    let late = Frame {
                        address: 1,
                        message: Message::Vote(VoteMessage {
                            term_seq: 99,
                            button: 1,
                            age_ms: 0,
                        }),
                    };
                    link.send(&late).await.expect("send");
                } else {
                    link.send(&terminal.answer_poll(Instant::now()))
                        .await
                        .expect("send");
                }
            } else if let Some(answered) = terminal.receive(&frame.message) {
                break answered;
            }
        };
        assert_eq!(
            answered,
            Answered::Acked {
                terminal: "gate-1".into(),
                term_seq: 7,
                button: 3
            },
            "a hello, then the vote, each answering its own poll"
        );
        let votes = journal.handle().read_after(0, 10).await.expect("read");
        assert_eq!(
            votes.iter().map(|v| v.term_seq).collect::<Vec<_>>(),
            [Some(7)],
            "the late answer (term_seq 99) was not stored"
        );
        assert_eq!(
            ctx.registry
                .counters
                .unexpected_frames
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        shutdown.cancel();
        assert!(session.await.expect("task").is_ok());
    }
}
