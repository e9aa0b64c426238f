//! The HTTP server cannot be starved, black box: half-sent requests and idle connections are
//! closed by the server within its 10 s header-read timeout while `/healthz` keeps answering,
//! and connections above `display.max-connections` get a 503 at once (logged, rate-limited).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::display::start_gateway;
use crate::harness::{write_file, RunningChild};

/// The server's header-read (and idle keep-alive) timeout.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

fn config(dir: &Path, display: &str) -> std::path::PathBuf {
    write_file(
        dir,
        "votegate.toml",
        &format!(
            r#"gateway-id = "gw-http"
site = "s"
data-dir = "{}"
time-zone = "UTC"
listen = "127.0.0.1:0"

[display]
{display}

[[terminal]]
id = "entrance"
kind = "simulated"
presses-per-minute = 30
"#,
            dir.join("journal").display()
        ),
    )
}

/// `GET path` with short timeouts: the status code, or what went wrong.
fn quick_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Whether the server has closed this (non-blocking) socket.
fn closed_by_server(socket: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 256];
    match socket.read(&mut buffer) {
        Ok(0) => true,
        Ok(_) => false, // an answer (408, 400): the close follows
        Err(err) if err.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true, // reset
    }
}

fn stop(gateway: RunningChild) -> String {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(gateway.pid() as i32, libc::SIGTERM) };
    let (status, log) = gateway.wait(Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{log}");
    log
}

#[test]
fn half_open_connections_are_closed_within_the_timeout_while_healthz_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gateway, addr) = start_gateway(&config(dir.path(), ""));

    // Health is checked all along, from another thread.
    let done = Arc::new(AtomicBool::new(false));
    let checker = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut answered, mut failures) = (0, Vec::new());
            while !done.load(Ordering::Relaxed) {
                match quick_get(addr, "/healthz") {
                    Ok((200, _)) => answered += 1,
                    other => failures.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (answered, failures)
        })
    };

    let opened = Instant::now();
    let mut sockets: Vec<(TcpStream, Option<Duration>)> = Vec::new();
    for n in 0..300 {
        let mut socket = TcpStream::connect(addr).expect("connect");
        // Half a request line, never finished; every tenth connection sends nothing at all.
        if n % 10 != 0 {
            socket.write_all(b"GET /api/v1/tal").expect("send");
        }
        socket.set_nonblocking(true).expect("non-blocking");
        sockets.push((socket, None));
    }
    // And one that made a request and then idles on keep-alive.
    let mut idle = TcpStream::connect(addr).expect("connect");
    write!(idle, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    std::thread::sleep(Duration::from_millis(200));
    idle.set_nonblocking(true).expect("non-blocking");
    let mut head = [0u8; 512];
    assert!(idle.read(&mut head).expect("an answer") > 0);
    sockets.push((idle, None));
    let open_for = opened.elapsed();

    let deadline = opened + HEADER_TIMEOUT + Duration::from_secs(5);
    while sockets.iter().any(|(_, closed)| closed.is_none()) && Instant::now() < deadline {
        for (socket, closed) in sockets.iter_mut().filter(|(_, c)| c.is_none()) {
            if closed_by_server(socket) {
                *closed = Some(opened.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done.store(true, Ordering::Relaxed);
    let (answered, failures) = checker.join().expect("health checker");
    let still_open = sockets.iter().filter(|(_, c)| c.is_none()).count();
    let times: Vec<Duration> = sockets.iter().filter_map(|(_, c)| *c).collect();
    let first = times.iter().min().copied().unwrap_or_default();
    let last = times.iter().max().copied().unwrap_or_default();
    eprintln!(
        "301 connections opened in {open_for:?}; closed by the server between {first:?} and {last:?}; \
         /healthz answered 200 {answered} times meanwhile"
    );
    assert_eq!(
        still_open,
        0,
        "{still_open} connections still open {:?} after they were opened",
        opened.elapsed()
    );
    assert!(
        last <= open_for + HEADER_TIMEOUT + Duration::from_secs(2),
        "the last connection closed after {last:?}"
    );
    assert!(
        failures.is_empty(),
        "/healthz failed while connections were half-open: {failures:?}"
    );
    assert!(answered >= 20, "/healthz answered only {answered} times");
    stop(gateway);
}

#[test]
fn connections_above_max_connections_get_503_at_once_and_are_logged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gateway, addr) =
        start_gateway(&config(dir.path(), "max-screens = 4\nmax-connections = 20"));
    let hogs: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut socket = TcpStream::connect(addr).expect("connect");
            socket.write_all(b"GET / HT").expect("send");
            socket
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let refused_at = Instant::now();
    let (code, body) = quick_get(addr, "/healthz").expect("an answer");
    assert!(refused_at.elapsed() < Duration::from_secs(1));
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("too many connections (display.max-connections = 20)"),
        "{body}"
    );
    for _ in 0..5 {
        assert_eq!(quick_get(addr, "/healthz").map(|(c, _)| c), Ok(503));
    }
    // The hogs leave: the slots free at once.
    drop(hogs);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match quick_get(addr, "/healthz") {
            Ok((200, _)) => break,
            other => assert!(Instant::now() < deadline, "still refused: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = quick_get(addr, "/metrics").expect("metrics").1;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("votegate_http_connections_refused_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refused counter in\n{metrics}"));
    // 6 above, and maybe one more while the server saw the hogs go.
    assert!((6..=8).contains(&refused), "{refused} refused");
    let log = stop(gateway);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("display.max-connections"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning a minute at most: {warnings:?}"
    );
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("20 connections open"),
        "{warnings:?}"
    );
}
