//! The terminal side of hardware/PROTOCOL.md: what `votegate simulate` plays, and what the tests
//! and benchmarks drive the gateway with. [`EmulatedTerminal`] is the pure state machine of one
//! terminal (queue, one vote in flight, retransmission); [`simulate`] runs one or more of them on
//! a serial port.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::frame::{
    Frame, Hello, Message, StatusMessage, VoteMessage, POINT_ADDRESS, PROTOCOL_VERSION,
};
use super::link::{Link, LinkError};
use super::port::{self, PortError};

/// Retransmission interval of the protocol (§ 5.1), before the random 0–250 ms.
pub const RETRANSMIT: Duration = Duration::from_millis(1000);
const RETRANSMIT_JITTER_MS: u64 = 250;

/// A vote the gateway answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answered {
    /// Acknowledged: durable at the gateway.
    Acked {
        /// The terminal's label.
        terminal: String,
        /// The vote's number.
        term_seq: u32,
        /// Its button.
        button: u8,
    },
    /// Refused for good (invalid button).
    Refused {
        /// The terminal's label.
        terminal: String,
        /// The vote's number.
        term_seq: u32,
        /// Its button.
        button: u8,
    },
}

#[derive(Debug)]
struct Queued {
    term_seq: u32,
    button: u8,
    pressed_at: Instant,
}

/// One terminal's protocol state.
#[derive(Debug)]
pub struct EmulatedTerminal {
    label: String,
    address: u8,
    hardware_id: [u8; 8],
    next_term_seq: u32,
    queue: VecDeque<Queued>,
    welcomed: bool,
    next_send: Option<Instant>,
    retransmit: Duration,
    rng: fastrand::Rng,
}

impl EmulatedTerminal {
    /// A terminal that numbers its first vote `first_term_seq`.
    pub fn new(
        label: &str,
        address: u8,
        first_term_seq: u32,
        retransmit: Duration,
    ) -> EmulatedTerminal {
        let mut hardware_id = [0u8; 8];
        for (byte, source) in hardware_id
            .iter_mut()
            .zip(label.bytes().chain(std::iter::repeat(0)))
        {
            *byte = source;
        }
        hardware_id[7] = address;
        EmulatedTerminal {
            label: label.to_string(),
            address,
            hardware_id,
            next_term_seq: first_term_seq,
            queue: VecDeque::new(),
            welcomed: false,
            next_send: None,
            retransmit,
            rng: fastrand::Rng::new(),
        }
    }

    /// Its label (what `simulate` prints as `terminal`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its bus address (0 point-to-point).
    pub fn address(&self) -> u8 {
        self.address
    }

    /// Votes not yet answered.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// A button press: queued with the next term_seq, which is returned.
    pub fn press(&mut self, button: u8, now: Instant) -> u32 {
        let term_seq = self.next_term_seq;
        self.next_term_seq = self.next_term_seq.wrapping_add(1);
        self.queue.push_back(Queued {
            term_seq,
            button,
            pressed_at: now,
        });
        term_seq
    }

    fn current(&self, now: Instant) -> Message {
        if !self.welcomed {
            return Message::Hello(Hello {
                hardware_id: self.hardware_id,
                firmware: "sim-1.0".to_string(),
                protocol: PROTOCOL_VERSION,
            });
        }
        match self.queue.front() {
            Some(vote) => Message::Vote(VoteMessage {
                term_seq: vote.term_seq,
                button: vote.button,
                age_ms: u32::try_from(now.duration_since(vote.pressed_at).as_millis())
                    .unwrap_or(u32::MAX),
            }),
            None => self.status(),
        }
    }

    /// Its status report.
    pub fn status(&self) -> Message {
        Message::Status(StatusMessage {
            battery_mv: 0,
            flags: 0,
            queued: u16::try_from(self.queue.len()).unwrap_or(u16::MAX),
        })
    }

    /// Point-to-point: the frame to send now (a hello until welcomed, else the oldest vote), if
    /// one is due: first sends at once, repeats after the retransmission interval.
    pub fn due(&mut self, now: Instant) -> Option<Frame> {
        if self.welcomed && self.queue.is_empty() {
            return None;
        }
        if self.next_send.is_some_and(|at| now < at) {
            return None;
        }
        let jitter = Duration::from_millis(self.rng.u64(0..=RETRANSMIT_JITTER_MS));
        self.next_send = Some(now + self.retransmit + jitter);
        Some(Frame {
            address: self.address,
            message: self.current(now),
        })
    }

    /// Bus: the one frame that answers a poll.
    pub fn answer_poll(&mut self, now: Instant) -> Frame {
        Frame {
            address: self.address,
            message: self.current(now),
        }
    }

    /// A message from the gateway addressed to this terminal. Returns the vote it answered.
    pub fn receive(&mut self, message: &Message) -> Option<Answered> {
        match message {
            Message::Welcome { .. } => {
                self.welcomed = true;
                self.next_send = None;
                None
            }
            Message::Ack { term_seq } | Message::Nack { term_seq, .. } => {
                if self.queue.front().map(|v| v.term_seq) != Some(*term_seq) {
                    return None; // a late answer to an earlier send
                }
                let vote = self.queue.pop_front()?;
                self.next_send = None;
                let terminal = self.label.clone();
                Some(match message {
                    Message::Ack { .. } => Answered::Acked {
                        terminal,
                        term_seq: vote.term_seq,
                        button: vote.button,
                    },
                    _ => Answered::Refused {
                        terminal,
                        term_seq: vote.term_seq,
                        button: vote.button,
                    },
                })
            }
            _ => None,
        }
    }
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Simulation {
    /// The serial port.
    pub path: PathBuf,
    /// Line speed.
    pub baud: u32,
    /// `(label, address)`: one terminal with address 0 (point-to-point), or bus addresses.
    pub terminals: Vec<(String, u8)>,
    /// Random presses per minute per terminal (Poisson), if any.
    pub presses_per_minute: Option<f64>,
    /// Read presses from stdin: `BUTTON` or `LABEL BUTTON` per line.
    pub stdin: bool,
    /// Stop after this many answered votes.
    pub count: Option<u64>,
    /// The first term_seq of each terminal.
    pub first_term_seq: u32,
    /// Retransmission interval (point-to-point).
    pub retransmit: Duration,
    /// Status interval (point-to-point).
    pub status_interval: Duration,
}

/// Why a simulation stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The port could not be opened.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The port failed during the run.
    #[error("serial port {path} lost: {cause}")]
    Link {
        /// The port.
        path: String,
        /// What happened.
        cause: LinkError,
    },
}

/// Runs the simulation until `count` votes are answered, or stdin ends and every vote is
/// answered. Calls `report` for each answered vote.
pub async fn simulate(
    simulation: &Simulation,
    mut report: impl FnMut(&Answered),
) -> Result<u64, SimulateError> {
    let stream = port::open(&simulation.path, simulation.baud)?;
    let link_error = |cause| SimulateError::Link {
        path: simulation.path.display().to_string(),
        cause,
    };
    run(simulation, Link::new(stream), &mut report)
        .await
        .map_err(link_error)
}

/// The simulation over any stream (tests use in-memory pipes).
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    simulation: &Simulation,
    mut link: Link<S>,
    report: &mut impl FnMut(&Answered),
) -> Result<u64, LinkError> {
    let bus = simulation
        .terminals
        .iter()
        .any(|(_, address)| *address != POINT_ADDRESS);
    let mut terminals: Vec<EmulatedTerminal> = simulation
        .terminals
        .iter()
        .map(|(label, address)| {
            EmulatedTerminal::new(
                label,
                *address,
                simulation.first_term_seq,
                simulation.retransmit,
            )
        })
        .collect();
    let mut rng = fastrand::Rng::new();
    let mut next_press: Vec<Option<Instant>> = terminals
        .iter()
        .map(|_| {
            simulation
                .presses_per_minute
                .map(|rate| Instant::now() + pause(&mut rng, rate))
        })
        .collect();
    let mut stdin = simulation.stdin.then(spawn_stdin_reader);
    let mut stdin_open = simulation.stdin;
    let mut pressed: u64 = 0;
    let mut answered: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut next_status = Instant::now() + simulation.status_interval;
    let limit = simulation.count.unwrap_or(u64::MAX);
    loop {
        let all_answered = terminals.iter().all(|t| t.queued() == 0);
        if answered >= limit
            || (simulation.stdin
                && !stdin_open
                && all_answered
                && simulation.presses_per_minute.is_none())
        {
            return Ok(answered);
        }
        tokio::select! {
            item = link.next() => {
                let mut frames = vec![item?];
                frames.extend(link.take_buffered());
                let frames: Vec<Frame> = frames.into_iter().filter_map(Result::ok).collect();
                for (index, frame) in frames.iter().enumerate() {
                    let Some(terminal) = terminals.iter_mut().find(|t| t.address() == frame.address) else { continue };
                    if bus && frame.message == Message::Poll {
                        // A terminal answers within 10 ms of a poll. One that fell behind (a
                        // busy machine, polls queued while the port was closed) answers only the
                        // newest poll for it: answering each would put every later answer one
                        // poll late.
                        let superseded = frames[index + 1..]
                            .iter()
                            .any(|f| f.address == frame.address && f.message == Message::Poll);
                        if !superseded {
                            let reply = terminal.answer_poll(Instant::now());
                            link.send(&reply).await?;
                        }
                    } else if let Some(outcome) = terminal.receive(&frame.message) {
                        answered += 1;
                        report(&outcome);
                    }
                }
            }
            line = next_line(&mut stdin), if stdin_open => {
                match line {
                    Some(line) => {
                        if let Some((index, button)) = parse_press(&line, &terminals) {
                            terminals[index].press(button, Instant::now());
                            pressed += 1;
                        } else {
                            log::warn!("simulate: ignoring input line {line:?} (expected BUTTON or LABEL BUTTON)");
                        }
                    }
                    None => stdin_open = false,
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for (terminal, next) in terminals.iter_mut().zip(next_press.iter_mut()) {
                    if let (Some(at), Some(rate)) = (*next, simulation.presses_per_minute) {
                        if now >= at && pressed < limit {
                            terminal.press(rng.u8(1..=4), now);
                            pressed += 1;
                            *next = Some(now + pause(&mut rng, rate));
                        }
                    }
                }
                if !bus {
                    for terminal in &mut terminals {
                        if let Some(frame) = terminal.due(now) {
                            link.send(&frame).await?;
                        }
                    }
                    if now >= next_status {
                        next_status = now + simulation.status_interval;
                        for terminal in &terminals {
                            link.send(&Frame { address: terminal.address(), message: terminal.status() }).await?;
                        }
                    }
                }
            }
        }
    }
}

fn pause(rng: &mut fastrand::Rng, presses_per_minute: f64) -> Duration {
    let uniform = 1.0 - rng.f64();
    Duration::from_secs_f64(-uniform.ln() * 60.0 / presses_per_minute)
}

/// `BUTTON` (first terminal) or `LABEL BUTTON`; any number 0–255 is sent as is, so invalid
/// buttons can be tested.
fn parse_press(line: &str, terminals: &[EmulatedTerminal]) -> Option<(usize, u8)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        [button] => Some((0, button.parse().ok()?)),
        [label, button] => Some((
            terminals.iter().position(|t| t.label() == *label)?,
            button.parse().ok()?,
        )),
        _ => None,
    }
}

fn spawn_stdin_reader() -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    rx
}

async fn next_line(stdin: &mut Option<tokio::sync::mpsc::Receiver<String>>) -> Option<String> {
    match stdin {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_terminal_says_hello_then_sends_one_vote_at_a_time_and_retransmits() {
        let mut terminal = EmulatedTerminal::new("entrance", 0, 10, RETRANSMIT);
        let now = Instant::now();
        terminal.press(4, now);
        terminal.press(1, now);
        assert!(matches!(
            terminal.due(now).map(|f| f.message),
            Some(Message::Hello(_))
        ));
        assert_eq!(
            terminal.due(now),
            None,
            "nothing before the retransmission interval"
        );
        assert_eq!(terminal.receive(&Message::Welcome { protocol: 1 }), None);
        let first = terminal.due(now).map(|f| f.message);
        assert_eq!(
            first,
            Some(Message::Vote(VoteMessage {
                term_seq: 10,
                button: 4,
                age_ms: 0
            }))
        );
        let later = now + Duration::from_millis(1300);
        let again = terminal.due(later).map(|f| f.message);
        assert_eq!(
            again,
            Some(Message::Vote(VoteMessage {
                term_seq: 10,
                button: 4,
                age_ms: 1300
            }))
        );
        assert_eq!(
            terminal.receive(&Message::Ack { term_seq: 99 }),
            None,
            "not the vote in flight"
        );
        assert_eq!(
            terminal.receive(&Message::Ack { term_seq: 10 }),
            Some(Answered::Acked {
                terminal: "entrance".into(),
                term_seq: 10,
                button: 4
            })
        );
        assert!(matches!(
            terminal.due(later).map(|f| f.message),
            Some(Message::Vote(VoteMessage { term_seq: 11, .. }))
        ));
    }

    #[test]
    fn input_lines_name_a_button_and_optionally_a_terminal() {
        let terminals = vec![
            EmulatedTerminal::new("a", 1, 1, RETRANSMIT),
            EmulatedTerminal::new("b", 2, 1, RETRANSMIT),
        ];
        assert_eq!(parse_press("3", &terminals), Some((0, 3)));
        assert_eq!(parse_press("b 7", &terminals), Some((1, 7)));
        assert_eq!(parse_press("c 1", &terminals), None);
        assert_eq!(parse_press("x", &terminals), None);
    }

    #[tokio::test]
    async fn a_terminal_that_fell_behind_answers_only_the_newest_poll() {
        let (gateway_side, terminal_side) = tokio::io::duplex(4096);
        let simulation = Simulation {
            path: PathBuf::from("/dev/test"),
            baud: 115_200,
            terminals: vec![("gate-1".into(), 1)],
            presses_per_minute: Some(6000.0),
            stdin: false,
            count: Some(1),
            first_term_seq: 1,
            retransmit: RETRANSMIT,
            status_interval: Duration::from_secs(60),
        };
        let terminal = tokio::spawn(async move {
            let mut answered = Vec::new();
            let result = run(
                &simulation,
                Link::new(terminal_side),
                &mut |a: &Answered| answered.push(a.clone()),
            )
            .await;
            (result.ok(), answered)
        });
        let mut gateway = Link::new(gateway_side);
        // Five polls queued up while the terminal was busy, arriving at once.
        let poll = super::super::frame::encode(&Frame {
            address: 1,
            message: Message::Poll,
        });
        gateway.send_raw(&poll.repeat(5)).await.expect("send");
        let first = gateway.next().await.expect("link").expect("frame");
        assert!(matches!(first.message, Message::Hello(_)), "{first:?}");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), gateway.next())
                .await
                .is_err(),
            "one answer for five stale polls"
        );
        for message in [Message::Welcome { protocol: 1 }, Message::Poll] {
            gateway
                .send(&Frame {
                    address: 1,
                    message,
                })
                .await
                .expect("send");
        }
        let vote = gateway.next().await.expect("link").expect("frame");
        let Message::Vote(vote) = vote.message else {
            panic!("expected the vote, got {vote:?}")
        };
        gateway
            .send(&Frame {
                address: 1,
                message: Message::Ack {
                    term_seq: vote.term_seq,
                },
            })
            .await
            .expect("send");
        let (answered_count, answered) = terminal.await.expect("task");
        assert_eq!(answered_count, Some(1));
        assert_eq!(answered.len(), 1);
    }
}
