//! A TCP fault proxy between the gateway and the broker: it can cut every connection, stall them
//! (bytes held, connections open), or black-hole them (bytes silently dropped), in both directions.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward.
    Pass,
    /// Hold them until the mode changes.
    Stall,
    /// Drop them.
    BlackHole,
    /// Drop only what the broker sends (its acks): it has the publishes, the client never hears.
    BlackHoleReplies,
}

struct Shared {
    mode: Mode,
    connections: Vec<TcpStream>,
    accepted: usize,
}

/// A running proxy.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

impl FaultProxy {
    /// Proxies to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Mutex::new(Shared {
            mode: Mode::Pass,
            connections: Vec::new(),
            accepted: 0,
        }));
        let accept_shared = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                {
                    let mut shared = accept_shared.lock().expect("proxy state");
                    shared.accepted += 1;
                    shared.connections.push(client.try_clone().expect("clone"));
                    shared.connections.push(server.try_clone().expect("clone"));
                }
                pump(
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                    accept_shared.clone(),
                    false,
                );
                pump(server, client, accept_shared.clone(), true);
            }
        });
        FaultProxy { addr, shared }
    }

    /// Changes what happens to bytes from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().expect("proxy state").mode = mode;
    }

    /// Closes every open connection (both sides); new ones are accepted.
    pub fn cut(&self) {
        let mut shared = self.shared.lock().expect("proxy state");
        for connection in shared.connections.drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.lock().expect("proxy state").accepted
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Mutex<Shared>>, replies: bool) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            loop {
                let mode = shared.lock().map(|s| s.mode).unwrap_or(Mode::Pass);
                match mode {
                    Mode::Stall => std::thread::sleep(Duration::from_millis(20)),
                    Mode::BlackHole => break,
                    Mode::BlackHoleReplies if replies => break,
                    Mode::BlackHoleReplies => {
                        if to.write_all(&buffer[..n]).is_err() {
                            let _ = from.shutdown(Shutdown::Both);
                            return;
                        }
                        break;
                    }
                    Mode::Pass => {
                        if to.write_all(&buffer[..n]).is_err() {
                            let _ = from.shutdown(Shutdown::Both);
                            return;
                        }
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
