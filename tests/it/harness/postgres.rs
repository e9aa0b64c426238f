//! A private PostgreSQL server per test: `initdb` in a temp folder as the unprivileged user
//! `nobody` (the server refuses to run as root), `trust` authentication, a free loopback port and
//! its unix socket in the temp folder, fsync on (the real thing; only `initdb` skips its syncs).
//! Stopped (and the folder removed) on drop. Never the machine's own server on 5432.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running server.
pub struct Postgres {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Where its socket, data and log live (removed on drop).
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    running: bool,
    /// More `-c name=value` server options (after the defaults, so they win).
    options: String,
}

/// The folder holding `initdb`, `pg_ctl` and `postgres`: Debian's newest
/// `/usr/lib/postgresql/N/bin`, else wherever `initdb` is on the PATH.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists());
    on_path.unwrap_or_else(|| {
        panic!(
            "PostgreSQL's initdb is missing: apt-get install postgresql (scripts/test does); \
             the tests start their own server and never use the machine's own"
        )
    })
}

/// Runs `command` as `nobody` (the tests run as root here; PostgreSQL refuses root).
fn as_nobody(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "nobody", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Whether this process runs as root (`/proc/self` belongs to the process's user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn check(what: &str, output: std::io::Result<Output>) -> Output {
    let output = output.unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

impl Postgres {
    /// Creates a cluster and starts it (about 2 s: initdb is most of it).
    pub fn start() -> Postgres {
        Postgres::start_with("")
    }

    /// [`Postgres::start`] with more server options, e.g. `-c shared_buffers=256MB` (benchmarks).
    pub fn start_with(options: &str) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            check(
                "chown nobody",
                Command::new("chown").arg("nobody").arg(dir.path()).output(),
            );
        }
        check(
            "initdb",
            as_nobody(&bin.join("initdb"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ])
                .output(),
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut postgres = Postgres {
            port,
            dir,
            bin,
            running: false,
            options: options.to_string(),
        };
        postgres.start_again();
        postgres
    }

    /// Starts the server again after [`Postgres::shut_down`].
    pub fn start_again(&mut self) {
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c shared_buffers=16MB -c fsync=on \
             -c max_connections=50 {extra}",
            port = self.port,
            dir = self.dir.path().display(),
            extra = self.options,
        );
        check(
            "pg_ctl start",
            as_nobody(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .output(),
        );
        self.running = true;
    }

    /// Stops the server (`fast`: open transactions are rolled back, clients disconnected).
    pub fn shut_down(&mut self) {
        self.stop("fast");
    }

    fn stop(&mut self, mode: &str) {
        if self.running {
            let _ = as_nobody(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-m", mode, "stop"])
                .output();
            self.running = false;
        }
    }

    /// The cluster's data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A URL for the `postgres` database over TCP, as an ingest config's `postgres-url`.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL with `psql` and returns its unaligned, tuples-only output (`|` between columns).
    pub fn psql(&self, sql: &str) -> String {
        let output = check(
            &format!("psql {sql:?}"),
            self.psql_command().args(["-c", sql]).output(),
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// A `psql` reading SQL from its stdin (piped), e.g. to hold a transaction open.
    pub fn psql_session(&self) -> std::process::Child {
        self.psql_command()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("psql starts")
    }

    fn psql_command(&self) -> Command {
        let psql = [self.bin.join("psql"), PathBuf::from("/usr/bin/psql")]
            .into_iter()
            .find(|p| p.exists())
            .expect("psql (apt-get install postgresql-client)");
        let mut command = Command::new(psql);
        command
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        command
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // `immediate`: the test is over, nothing in it needs a clean shutdown.
        self.stop("immediate");
    }
}
