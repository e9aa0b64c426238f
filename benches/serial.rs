//! Serial benchmark: frame in → ack out latency at 100 votes/s, and the votes/s one
//! point-to-point port sustains at 115200 baud, against the line's theoretical limits.
//!
//!     cargo bench --bench serial
//!
//! The gateway side is the daemon's own code (tokio-serial on a kernel pty, the point session,
//! the journal with fsync on disk). A pty moves bytes instantly, so the terminal side (this
//! thread) holds every frame for its time on a 115200-baud 8N1 wire, 10 bits per byte, in both
//! directions: latencies and rates below include the wire.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark: failing loudly is right

use std::ffi::CStr;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use votegate::clock::SystemClock;
use votegate::config::{SourceConfig, TerminalConfig};
use votegate::journal::{self, Journal, Limits};
use votegate::model::TerminalId;
use votegate::sources::registry::Registry;
use votegate::sources::serial::frame::{self, Decoder, Frame, Hello, Message, VoteMessage};
use votegate::sources::serial::link::Link;
use votegate::sources::serial::{point, port, PortContext};
use votegate::sources::Intake;

const BAUD: f64 = 115_200.0;
const BITS_PER_BYTE: f64 = 10.0; // start + 8 data + stop

fn wire_time(bytes: usize) -> Duration {
    Duration::from_secs_f64(bytes as f64 * BITS_PER_BYTE / BAUD)
}

fn open_pty() -> (std::fs::File, PathBuf) {
    let (mut master, mut slave) = (0, 0);
    unsafe {
        assert_eq!(
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null()
            ),
            0
        );
        let mut termios: libc::termios = std::mem::zeroed();
        libc::tcgetattr(slave, &mut termios);
        libc::cfmakeraw(&mut termios);
        libc::tcsetattr(slave, libc::TCSANOW, &termios);
        let path = PathBuf::from(
            CStr::from_ptr(libc::ttyname(slave))
                .to_string_lossy()
                .into_owned(),
        );
        drop(OwnedFd::from_raw_fd(slave));
        (std::fs::File::from(OwnedFd::from_raw_fd(master)), path)
    }
}

/// The terminal end of the wire: frames are written and read with their wire time.
struct Terminal {
    master: std::fs::File,
    decoder: Decoder,
    ready: Vec<Frame>,
}

impl Terminal {
    fn send(&mut self, frame: &Frame) {
        let bytes = frame::encode(frame);
        std::thread::sleep(wire_time(bytes.len())); // the bytes reach the gateway at the end
        self.master.write_all(&bytes).expect("write");
    }

    fn receive(&mut self) -> Frame {
        loop {
            if !self.ready.is_empty() {
                return self.ready.remove(0);
            }
            let mut buffer = [0u8; 256];
            let n = self.master.read(&mut buffer).expect("read");
            let mut out = Vec::new();
            self.decoder.feed(&buffer[..n], &mut out);
            for item in out {
                let frame = item.expect("valid frame from the gateway");
                std::thread::sleep(wire_time(frame::encode(&frame).len()));
                self.ready.push(frame);
            }
        }
    }

    /// Sends a vote and waits for its ack; returns the round trip.
    fn vote(&mut self, term_seq: u32) -> Duration {
        let start = Instant::now();
        self.send(&Frame {
            address: 0,
            message: Message::Vote(VoteMessage {
                term_seq,
                button: (term_seq % 4 + 1) as u8,
                age_ms: 0,
            }),
        });
        loop {
            if self.receive().message == (Message::Ack { term_seq }) {
                return start.elapsed();
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (latency_votes, burst_votes) = if quick { (50, 100) } else { (2_000, 5_000) };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (master, slave) = open_pty();
    let shutdown = CancellationToken::new();
    let terminal_id = TerminalId::new("bench").expect("id");
    let service = runtime.block_on(async {
        journal::spawn(Journal::open(dir.path(), Limits::default()).expect("open")).expect("spawn")
    });
    let configs = [TerminalConfig {
        id: terminal_id.clone(),
        min_interval: Duration::ZERO,
        source: SourceConfig::Serial {
            port: slave.clone(),
            address: 0,
        },
    }];
    let clock: Arc<dyn votegate::clock::Clock> = Arc::new(SystemClock::new().expect("clock"));
    let context = PortContext {
        intake: Arc::new(Intake::new(service.handle(), clock.clone())),
        registry: Arc::new(Registry::new(&configs)),
        clock,
        port: slave.display().to_string(),
    };
    let gateway = {
        let (shutdown, terminal_id) = (shutdown.clone(), terminal_id.clone());
        let _guard = runtime.enter();
        let stream = port::open(&slave, 115_200).expect("open pty slave");
        runtime.spawn(async move {
            let mut link = Link::new(stream);
            point::run(
                &mut link,
                &terminal_id,
                Duration::from_secs(180),
                &context,
                &shutdown,
            )
            .await
        })
    };

    let mut terminal = Terminal {
        master,
        decoder: Decoder::new(),
        ready: Vec::new(),
    };
    terminal.send(&Frame {
        address: 0,
        message: Message::Hello(Hello {
            hardware_id: [1; 8],
            firmware: "bench".into(),
            protocol: 1,
        }),
    });
    assert!(matches!(
        terminal.receive().message,
        Message::Welcome { .. }
    ));

    // 1. Latency at 100 votes/s: one vote every 10 ms.
    let mut latencies = Vec::new();
    let mut next = Instant::now();
    for term_seq in 1..=latency_votes {
        next += Duration::from_millis(10);
        latencies.push(terminal.vote(term_seq));
        if let Some(pause) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(pause);
        }
    }
    latencies.sort();

    // 2. As fast as the protocol allows: one vote in flight, the next sent when its ack is in.
    let start = Instant::now();
    for term_seq in latency_votes + 1..=latency_votes + burst_votes {
        terminal.vote(term_seq);
    }
    let sustained = f64::from(burst_votes) / start.elapsed().as_secs_f64();

    let vote_bytes = frame::encode(&Frame {
        address: 0,
        message: Message::Vote(VoteMessage {
            term_seq: 3000,
            button: 4,
            age_ms: 0,
        }),
    })
    .len();
    let ack_bytes = frame::encode(&Frame {
        address: 0,
        message: Message::Ack { term_seq: 3000 },
    })
    .len();
    let stop_and_wait_limit = 1.0 / (wire_time(vote_bytes) + wire_time(ack_bytes)).as_secs_f64();
    let line_limit = 1.0 / wire_time(vote_bytes).as_secs_f64();
    println!("| serial, point-to-point, 115200 baud 8N1 | figure |");
    println!("| --- | --- |");
    println!(
        "| vote frame in → ack out, at 100 votes/s | p50 {:.2} ms, p99 {:.2} ms (of which {:.2} ms on the wire) |",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        (wire_time(vote_bytes) + wire_time(ack_bytes)).as_secs_f64() * 1e3
    );
    println!(
        "| sustained votes/s on one port (one vote in flight) | {sustained:.0} votes/s; protocol limit with zero processing {stop_and_wait_limit:.0}/s; raw line limit {line_limit:.0} vote frames/s ({vote_bytes} B vote, {ack_bytes} B ack) |"
    );
    shutdown.cancel();
    runtime.block_on(async {
        let _ = gateway.await;
        service.shutdown().await.expect("shutdown");
    });
}
