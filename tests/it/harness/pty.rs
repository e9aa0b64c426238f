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
    ///
    /// Both ends are opened close-on-exec (`openpty` cannot): a child process another test
    /// spawns at that moment (a gateway, a simulator) would otherwise inherit the master and keep
    /// the line alive after an unplug. The slave's name comes from `ptsname_r` into our own
    /// buffer: `ttyname`'s static buffer is shared by every thread, and tests opening ptys at
    /// once got each other's names (two gateways on one line, a test's presses never counted).
    pub fn open() -> std::io::Result<Pty> {
        let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: posix_openpt returns a new fd or -1.
        let master = unsafe { libc::posix_openpt(flags | libc::O_NONBLOCK) };
        if master < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the fd was just returned by posix_openpt and is owned by nobody else.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: calls on a valid master fd; ptsname_r writes a NUL-terminated name into our
        // buffer of the given length.
        let path = unsafe {
            if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len());
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            CStr::from_ptr(name.as_ptr()).to_owned()
        };
        // SAFETY: opening a NUL-terminated path; the fd is checked before use.
        let slave = unsafe { libc::open(path.as_ptr(), flags) };
        if slave < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the fd was just returned by open and is owned by nobody else.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        // SAFETY: plain termios calls on a valid tty fd.
        unsafe {
            let mut termios: libc::termios = std::mem::zeroed();
            libc::tcgetattr(slave.as_raw_fd(), &mut termios);
            libc::cfmakeraw(&mut termios);
            libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &termios);
        }
        drop(slave);
        Ok(Pty {
            master,
            slave: PathBuf::from(path.to_string_lossy().into_owned()),
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
        loop {
            let command = match inbox.try_recv() {
                Ok(command) => command,
                Err(mpsc::TryRecvError::Empty) => break,
                // The line was dropped without `stop`: nobody reads the counters.
                Err(mpsc::TryRecvError::Disconnected) => return stats,
            };
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
                    // The link goes first: a pty's number is free again as soon as it closes,
                    // and a gateway retrying the link must not find another test's pty there.
                    let _ = std::fs::remove_file(link);
                    gateway = None;
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
