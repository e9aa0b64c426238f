//! Serial lines for tests, made of real kernel pseudo-terminals.
//!
//! A [`Line`] joins two ptys with a relay thread: the gateway opens one slave (through a symlink,
//! as it would open `/dev/serial/by-id/...`), a simulated terminal opens the other, and the relay
//! copies bytes between the masters. The test can inject garbage in either direction and
//! unplug/replug the gateway's side: the pty is closed (the gateway's reads fail) and a new one
//! appears behind the same symlink, as when a USB adapter is pulled and plugged back.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// One pseudo-terminal: its master (kept here) and its slave's path.
pub struct Pty {
    master: OwnedFd,
    /// The slave device, e.g. `/dev/pts/7`.
    pub slave: PathBuf,
}

impl Pty {
    /// Opens a new pty in raw mode with a non-blocking master.
    pub fn open() -> std::io::Result<Pty> {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two fds; the name/termios/winsize pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both fds were just returned by openpty and are owned by nobody else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        // SAFETY: plain termios calls on a valid tty fd; ttyname returns a static buffer we copy.
        let path = unsafe {
            let mut termios: libc::termios = std::mem::zeroed();
            libc::tcgetattr(slave.as_raw_fd(), &mut termios);
            libc::cfmakeraw(&mut termios);
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &termios);
            let name = libc::ttyname(slave.as_raw_fd());
            if name.is_null() {
                return Err(std::io::Error::last_os_error());
            }
            PathBuf::from(CStr::from_ptr(name).to_string_lossy().into_owned())
        };
        // SAFETY: fcntl on valid fds. Close-on-exec matters: a child process (the gateway, a
        // simulator) inheriting the master would keep the line alive after an unplug.
        unsafe {
            let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
            libc::fcntl(slave.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
        drop(slave);
        Ok(Pty {
            master,
            slave: path,
        })
    }

    fn read(&self, buffer: &mut [u8]) -> Option<usize> {
        // SAFETY: reading into a valid buffer from a valid fd.
        let n = unsafe {
            libc::read(
                self.master.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        (n > 0).then_some(n as usize)
    }

    /// Writes what fits; a full buffer (nobody reading) drops the rest, like a line with no
    /// receiver.
    fn write(&self, bytes: &[u8]) {
        // SAFETY: writing a valid buffer to a valid fd.
        unsafe {
            libc::write(self.master.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
        }
    }
}

enum Command {
    Inject {
        toward_gateway: bool,
        bytes: Vec<u8>,
    },
    Unplug,
    Replug,
    Stop,
}

/// What the relay saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct LineStats {
    /// Bytes carried gateway → terminal.
    pub to_terminal: usize,
    /// Bytes carried terminal → gateway.
    pub to_gateway: usize,
    /// Garbage bytes injected.
    pub injected: usize,
    /// Bytes lost while unplugged.
    pub lost_unplugged: usize,
}

/// A serial line between the gateway (through `gateway_path`, a symlink) and a terminal (through
/// `terminal_path`).
pub struct Line {
    /// What the gateway's config names as the port.
    pub gateway_path: PathBuf,
    /// What `votegate simulate --serial` opens.
    pub terminal_path: PathBuf,
    commands: mpsc::Sender<Command>,
    relay: Option<JoinHandle<LineStats>>,
}

impl Line {
    /// A new line whose gateway end appears as the symlink `gateway_path`.
    pub fn new(gateway_path: &Path) -> Line {
        let gateway = Pty::open().expect("gateway pty");
        let terminal = Pty::open().expect("terminal pty");
        let _ = std::fs::remove_file(gateway_path);
        std::os::unix::fs::symlink(&gateway.slave, gateway_path).expect("symlink");
        let terminal_path = terminal.slave.clone();
        let (commands, inbox) = mpsc::channel();
        let link = gateway_path.to_path_buf();
        let relay = std::thread::spawn(move || relay(Some(gateway), terminal, &link, inbox));
        Line {
            gateway_path: gateway_path.to_path_buf(),
            terminal_path,
            commands,
            relay: Some(relay),
        }
    }

    /// Sends garbage to one side.
    pub fn inject(&self, toward_gateway: bool, bytes: Vec<u8>) {
        let _ = self.commands.send(Command::Inject {
            toward_gateway,
            bytes,
        });
    }

    /// Pulls the gateway's adapter: its pty closes and the symlink disappears.
    pub fn unplug(&self) {
        let _ = self.commands.send(Command::Unplug);
    }

    /// Plugs it back: a new pty behind the same symlink.
    pub fn replug(&self) {
        let _ = self.commands.send(Command::Replug);
    }

    /// Stops the relay and returns its counters.
    pub fn stop(mut self) -> LineStats {
        let _ = self.commands.send(Command::Stop);
        self.relay
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default()
    }
}

fn relay(
    mut gateway: Option<Pty>,
    terminal: Pty,
    link: &Path,
    inbox: mpsc::Receiver<Command>,
) -> LineStats {
    let mut stats = LineStats::default();
    let mut buffer = [0u8; 4096];
    loop {
        while let Ok(command) = inbox.try_recv() {
            match command {
                Command::Inject {
                    toward_gateway,
                    bytes,
                } => {
                    stats.injected += bytes.len();
                    match (&gateway, toward_gateway) {
                        (Some(g), true) => g.write(&bytes),
                        (_, false) => terminal.write(&bytes),
                        (None, true) => {}
                    }
                }
                Command::Unplug => {
                    gateway = None;
                    let _ = std::fs::remove_file(link);
                }
                Command::Replug => {
                    let pty = Pty::open().expect("replugged pty");
                    let _ = std::fs::remove_file(link);
                    std::os::unix::fs::symlink(&pty.slave, link).expect("symlink");
                    gateway = Some(pty);
                }
                Command::Stop => return stats,
            }
        }
        let mut moved = false;
        if let Some(g) = &gateway {
            if let Some(n) = g.read(&mut buffer) {
                terminal.write(&buffer[..n]);
                stats.to_terminal += n;
                moved = true;
            }
        }
        if let Some(n) = terminal.read(&mut buffer) {
            match &gateway {
                Some(g) => {
                    g.write(&buffer[..n]);
                    stats.to_gateway += n;
                }
                None => stats.lost_unplugged += n,
            }
            moved = true;
        }
        if !moved {
            // poll(2) reports a pty whose slave is closed as always ready: sleep instead.
            std::thread::sleep(Duration::from_micros(300));
        }
    }
}
