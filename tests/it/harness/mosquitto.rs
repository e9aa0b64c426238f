//! A private Mosquitto broker per test: TLS only, client certificates required (the certificate's
//! common name is the username), on a free loopback port. Never the machine's own broker.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::Pki;
use super::RunningChild;

/// A running broker.
pub struct Mosquitto {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
    config: PathBuf,
    process: Option<RunningChild>,
}

fn binary() -> &'static str {
    for path in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(path).exists() {
            return path;
        }
    }
    panic!("mosquitto is missing: apt-get install mosquitto mosquitto-clients (scripts/test does)")
}

impl Mosquitto {
    /// Starts a broker; `extra` lines go into its config (e.g. `max_packet_size 1500`).
    pub fn start(dir: &Path, pki: &Pki, extra: &str) -> Mosquitto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = dir.join("mosquitto.log");
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "user root\nper_listener_settings false\nallow_anonymous false\n{persistence}\
                 log_dest file {log}\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
                 listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
                 require_certificate true\nuse_identity_as_username true\n{extra}\n",
                log = log.display(),
                ca = pki.ca.display(),
                cert = pki.server_cert.display(),
                key = pki.server_key.display(),
                persistence = match extra.contains("persistence true") {
                    true => "",
                    false => "persistence false\n",
                },
            ),
        )
        .expect("write mosquitto.conf");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut broker = Mosquitto {
            addr,
            log,
            config,
            process: None,
        };
        broker.launch();
        broker
    }

    /// Starts a broker that keeps its sessions and queued messages across a restart
    /// ([`Mosquitto::restart`]), as a production broker must.
    pub fn start_persistent(dir: &Path, pki: &Pki, extra: &str) -> Mosquitto {
        let store = dir.join("mosquitto-db");
        std::fs::create_dir_all(&store).expect("mosquitto-db");
        Mosquitto::start(
            dir,
            pki,
            &format!(
                "persistence true\npersistence_location {}/\n{extra}",
                store.display()
            ),
        )
    }

    /// Stops the broker cleanly (SIGTERM: a persistent one saves its state) and starts it again
    /// on the same port.
    pub fn restart(&mut self) {
        if let Some(process) = self.process.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(process.pid() as i32, libc::SIGTERM) };
            let (status, _) = process.wait(Duration::from_secs(10));
            assert!(status.is_some(), "mosquitto did not stop on SIGTERM");
        }
        self.launch();
    }

    fn launch(&mut self) {
        let process = RunningChild::new(
            Command::new(binary())
                .arg("-c")
                .arg(&self.config)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("mosquitto starts"),
        );
        let addr = self.addr;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {addr}: {}\n{}",
                process.stderr_so_far(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.process = Some(process);
    }
    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(RunningChild::pid)
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }
}
