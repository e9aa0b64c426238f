//! Shared test harness: temp folders, the votegate binary, child processes.

pub mod appender;
pub mod browser;
pub mod http;
pub mod mosquitto;
pub mod pki;
pub mod postgres;
pub mod powercut_fs;
pub mod proxy;
pub mod pty;
pub mod subscriber;
pub mod terminal;
pub mod votes;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The `votegate` binary built for this test run, or the one `VOTEGATE_TEST_BINARY` names: a
/// new black-box test can then be run against an older build, to see it fail there.
pub fn votegate_bin() -> String {
    std::env::var("VOTEGATE_TEST_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_votegate").to_string())
}

/// A command running `program`, under `VOTEGATE_TEST_RUNNER` when that is set: scripts/cross-test
/// runs the aarch64 suite under qemu-user, and the binaries the tests start (the gateway, this
/// test binary) need the same emulator (cargo's `runner` only covers the test binary itself).
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let runner = std::env::var("VOTEGATE_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(emulator) => {
            let mut command = Command::new(emulator);
            command.args(words).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// `votegate`, the binary built for this test run (see [`command`]).
pub fn votegate_command() -> Command {
    command(votegate_bin())
}

/// How much slower than native this run is: `VOTEGATE_TEST_TIME_SCALE` (scripts/cross-test sets
/// 10 under qemu-user), 1 by default. Tests that kill a process at a random moment stretch
/// their window by it, so that the emulated process still gets to work before it dies.
pub fn time_scale() -> u64 {
    std::env::var("VOTEGATE_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|scale| *scale >= 1)
        .unwrap_or(1)
}

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A seed from `VOTEGATE_TEST_SEED`, or a fresh one; printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("VOTEGATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{test}: VOTEGATE_TEST_SEED={seed}");
    seed
}

/// A child process whose output is read continuously (so it never blocks on a full pipe) and
/// can be watched while it runs.
pub struct RunningChild {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl RunningChild {
    /// Wraps a child spawned with piped stdout and stderr.
    pub fn new(mut child: Child) -> RunningChild {
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            drain(child.stdout.take(), stdout.clone()),
            drain(child.stderr.take(), stderr.clone()),
        ];
        RunningChild {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stdin, if it was spawned with a piped one.
    pub fn stdin(&mut self) -> Option<&mut std::process::ChildStdin> {
        self.child.stdin.as_mut()
    }

    /// Whether the child has exited by itself.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Stdout so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits up to `limit` for a stderr line containing `needle`; returns the line.
    pub fn wait_for_stderr(&self, needle: &str, limit: std::time::Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(line) = self.stderr_so_far().lines().find(|l| l.contains(needle)) {
                return Some(line.to_string());
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Waits up to `limit` for the child to exit by itself; returns its status (None if it is
    /// still running, in which case it is killed) and its stderr.
    pub fn wait(self, limit: std::time::Duration) -> (Option<std::process::ExitStatus>, String) {
        let (status, _, stderr) = self.wait_with_output(limit);
        (status, stderr)
    }

    /// Like [`RunningChild::wait`], with the child's stdout too: `(status, stdout, stderr)`.
    pub fn wait_with_output(
        mut self,
        limit: std::time::Duration,
    ) -> (Option<std::process::ExitStatus>, String, String) {
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break Some(status);
            }
            if std::time::Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let (stdout, stderr) = self.kill();
        (status, stdout, stderr)
    }

    /// Kills the child with SIGKILL, reaps it and returns its stdout and stderr.
    pub fn kill(mut self) -> (String, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pipes close with the child; the readers finish.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        (self.stdout_so_far(), self.stderr_so_far())
    }
}

impl Drop for RunningChild {
    /// A child still running when its test ends (or panics) is killed, never left behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn drain(
    pipe: Option<impl std::io::Read + Send + 'static>,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(mut pipe) = pipe else { return };
        let mut buffer = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buffer) {
            if n == 0 {
                break;
            }
            if let Ok(mut text) = into.lock() {
                text.push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        }
    })
}

/// The address of a gateway's HTTP API, from its start-up log line (`listen` may be port 0).
pub fn http_addr(gateway: &RunningChild) -> std::net::SocketAddr {
    let line = gateway
        .wait_for_stderr(
            "display and HTTP API on http://",
            std::time::Duration::from_secs(20),
        )
        .unwrap_or_else(|| panic!("gateway did not start:\n{}", gateway.stderr_so_far()));
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("address in the log")
}

/// Starts this test binary again, running only the test `name`, with extra environment.
pub fn spawn_test_child(name: &str, env: &[(&str, String)]) -> RunningChild {
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = self::command(exe);
    command
        .args([name, "--exact", "--nocapture", "--test-threads", "1", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    RunningChild::new(command.spawn().expect("spawn test child"))
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}
