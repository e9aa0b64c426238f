//! Display benchmark: vote accepted → server-sent event latency, and `GET /api/v1/tallies`
//! requests/s while 100 screens hold event streams.
//!
//!     cargo bench --bench display
//!
//! The daemon's own pieces run in this process (journal with fsync, tallies task, axum server on
//! a loopback port); the clients are plain threads with keep-alive connections in the same
//! process, so their cost is included (the figures are conservative).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark: failing loudly is right

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use votegate::clock::{Clock, SystemClock};
use votegate::config::{DisplayConfig, SourceConfig, TerminalConfig};
use votegate::display::{self, DisplayState};
use votegate::journal::{self, Journal, Limits};
use votegate::model::{Button, TerminalId};
use votegate::sources::registry::Registry;
use votegate::sources::{Intake, PressEvent};
use votegate::status::StatusSource;
use votegate::tallies::TallyRules;

fn rusage() -> (f64, u64) {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let cpu = usage.ru_utime.tv_sec as f64
        + usage.ru_utime.tv_usec as f64 / 1e6
        + usage.ru_stime.tv_sec as f64
        + usage.ru_stime.tv_usec as f64 / 1e6;
    (cpu, usage.ru_maxrss as u64 / 1024)
}

/// Reads SSE lines; sends (seq, when) for each vote event id.
fn sse_reader(addr: SocketAddr, ids: Option<mpsc::Sender<(u64, Instant)>>, stop: Arc<AtomicBool>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(stream, "GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if let (Some(ids), Some(id)) = (&ids, line.strip_prefix("id: ")) {
                    if let Ok(seq) = id.trim().parse() {
                        let _ = ids.send((seq, Instant::now()));
                    }
                }
            }
            Err(_) => continue,
        }
    }
}

/// Keep-alive GETs of `/api/v1/tallies` until `stop`; counts responses.
fn tallies_client(addr: SocketAddr, done: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let stream = TcpStream::connect(addr).expect("connect");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        writer
            .write_all(b"GET /api/v1/tallies HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        let mut length = 0;
        loop {
            line.clear();
            reader.read_line(&mut line).expect("head");
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        done.fetch_add(1, Ordering::Relaxed);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (votes, screens, load_secs) = if quick { (50, 10, 1) } else { (2_000, 100, 10) };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let shutdown = CancellationToken::new();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new().expect("clock"));
    let terminals: Vec<TerminalConfig> = (0..8)
        .map(|i| TerminalConfig {
            id: TerminalId::new(&format!("terminal-{i}")).expect("id"),
            min_interval: Duration::ZERO,
            source: SourceConfig::Simulated {
                presses_per_minute: 1.0,
            },
        })
        .collect();
    let (intake, addr) = runtime.block_on(async {
        let service = journal::spawn(Journal::open(dir.path(), Limits::default()).expect("open"))
            .expect("spawn");
        let ids: Vec<TerminalId> = terminals.iter().map(|t| t.id.clone()).collect();
        let rules = TallyRules::new(
            jiff::tz::TimeZone::get("Europe/Berlin").expect("tz"),
            "Europe/Berlin",
        );
        let (tallies, follower) = votegate::tallies::task::start(
            rules,
            ids,
            service.handle(),
            service.subscribe(),
            clock.clone(),
            shutdown.clone(),
        )
        .await
        .expect("tallies");
        tokio::spawn(follower);
        let registry = Arc::new(Registry::new(&terminals));
        let status = StatusSource::new("bench", "bench", service.stats(), registry, clock.clone());
        let config = DisplayConfig {
            max_screens: 1000,
            max_connections: 2000,
            ..DisplayConfig::default()
        };
        let settings = tokio::sync::watch::channel(config.clone()).1;
        let state = DisplayState::new(tallies, status, settings.clone(), shutdown.clone());
        let gate = state.connections.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(display::serve(
            listener,
            display::router(state),
            gate,
            settings,
            shutdown.clone(),
        ));
        let intake = Arc::new(Intake::new(service.handle(), clock.clone()));
        std::mem::forget(service); // lives until the process ends
        (intake, addr)
    });

    // 1. Latency: one screen listening, a vote every 20 ms (50/s).
    let stop = Arc::new(AtomicBool::new(false));
    let (ids_tx, ids_rx) = mpsc::channel();
    let listener = {
        let stop = stop.clone();
        std::thread::spawn(move || sse_reader(addr, Some(ids_tx), stop))
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut latencies = Vec::new();
    for n in 0..votes {
        let event = PressEvent {
            terminal: terminals[n % 8].id.clone(),
            button: Button::ALL[n % 4],
            term_seq: None,
            age_ms: 0,
        };
        let outcome = runtime.block_on(intake.submit(event)).expect("submit");
        let accepted = Instant::now();
        let seq = outcome.seq().expect("accepted");
        loop {
            let (id, at) = ids_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("event arrives");
            if id == seq {
                latencies.push(at.saturating_duration_since(accepted));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    latencies.sort();

    // 2. Throughput of /api/v1/tallies with `screens` event streams open and votes flowing.
    let readers: Vec<_> = (0..screens)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || sse_reader(addr, None, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let voting = {
        let (stop, intake, terminals) = (stop.clone(), intake.clone(), terminals.clone());
        let handle = runtime.handle().clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let event = PressEvent {
                    terminal: terminals[n % 8].id.clone(),
                    button: Button::ALL[n % 4],
                    term_seq: None,
                    age_ms: 0,
                };
                let _ = handle.block_on(intake.submit(event));
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let done = Arc::new(AtomicU64::new(0));
    let load_stop = Arc::new(AtomicBool::new(false));
    let (cpu_before, _) = rusage();
    let start = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (done, stop) = (done.clone(), load_stop.clone());
            std::thread::spawn(move || tallies_client(addr, done, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(load_secs));
    load_stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu_after, max_rss) = rusage();
    let requests = done.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = listener.join();
    for reader in readers {
        let _ = reader.join();
    }
    let _ = voting.join();

    println!("| display | figure |");
    println!("| --- | --- |");
    println!(
        "| vote accepted → SSE event at the screen ({votes} votes, 50/s) | p50 {:.2} ms, p99 {:.2} ms |",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "| GET /api/v1/tallies, 4 keep-alive clients, {screens} screens streaming, 10 votes/s | {:.0} requests/s for {load_secs} s; process CPU {:.2} s per s; peak RSS {max_rss} MiB |",
        requests as f64 / elapsed,
        (cpu_after - cpu_before) / elapsed,
    );
    shutdown.cancel();
}
