//! systemd integration: `sd_notify` over the `NOTIFY_SOCKET` datagram socket (READY, STOPPING,
//! STATUS, WATCHDOG) and the watchdog interval from `WATCHDOG_USEC`. Without systemd (no
//! `NOTIFY_SOCKET`) every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to systemd's notification socket, if the daemon runs under systemd.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let address = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, address))
        });
        Notifier { socket }
    }

    /// Whether systemd is listening.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends one notification, e.g. `READY=1`. Failures are logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Some((socket, address)) = &self.socket {
            if let Err(err) = socket.send_to_addr(state.as_bytes(), address) {
                log::warn!("cannot notify systemd ({state}): {err}");
            }
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, if systemd set a watchdog for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        let address = SocketAddr::from_pathname(&path).expect("address");
        let notifier = Notifier {
            socket: Some((UnixDatagram::unbound().expect("socket"), address)),
        };
        notifier.notify("READY=1");
        let mut buffer = [0u8; 64];
        let n = listener.recv(&mut buffer).expect("receive");
        assert_eq!(&buffer[..n], b"READY=1");
        assert!(!Notifier { socket: None }.enabled());
    }
}
