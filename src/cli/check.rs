//! `votegate check`: for installers. Validates the config and probes every part the daemon
//! needs, one line per check (or one JSON object with `--json`), and exits 0 only if none fails;
//! a `WARN` line (a secret readable by every user, say) keeps exit 0. It never opens the journal
//! and never creates anything (not even the data dir), so it is safe to run as root and while the
//! daemon is running.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::clock::kernel_sync_state;
use crate::config::units::format_size;
use crate::config::{Config, GpioBackend, PortMode, SerialPortConfig, SourceConfig};
use crate::sources::gpio::pins::{Header, RppalHeader};
use crate::sources::serial::port as serial_port;
use crate::uplink::files::{self, FileError};
use crate::uplink::{mqtt, CaSource, UplinkSettings};

use super::{EXIT_FAILED, EXIT_USAGE};

/// The user the systemd unit runs the daemon as (`User=` in systemd/votegate.service).
const SERVICE_USER: &str = "votegate";

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Passed.
    Ok,
    /// Works, but someone should look (exit code stays 0).
    Warn,
    /// Will not work.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Probe {
    /// Short name of the part checked.
    pub name: &'static str,
    /// How it came out.
    #[serde(rename = "result")]
    pub outcome: Outcome,
    /// What was found, or what is wrong and what to do.
    #[serde(rename = "message")]
    pub detail: String,
}

impl Probe {
    fn pass(name: &'static str, detail: String) -> Probe {
        Probe {
            name,
            outcome: Outcome::Ok,
            detail,
        }
    }

    fn warn(name: &'static str, detail: String) -> Probe {
        Probe {
            name,
            outcome: Outcome::Warn,
            detail,
        }
    }

    fn fail(name: &'static str, detail: String) -> Probe {
        Probe {
            name,
            outcome: Outcome::Fail,
            detail,
        }
    }

    fn from_result(name: &'static str, result: Result<String, FileError>) -> Probe {
        match result {
            Ok(found) => Probe::pass(name, found),
            Err(err) => Probe::fail(name, err.to_string()),
        }
    }
}

/// The whole report, as `--json` prints it.
#[derive(Debug, serde::Serialize)]
pub struct Report<'a> {
    /// The worst outcome of all checks.
    pub result: Outcome,
    /// Every check, in order.
    pub checks: &'a [Probe],
}

/// Runs every check for the config at `path` (only those needing no network or hardware with
/// `offline`) and prints the report, as lines or as one JSON object.
pub fn check(path: &Path, offline: bool, json: bool) -> anyhow::Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) if json => {
            print_json(&[Probe::fail("config", err.to_string())])?;
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(err) => return Err(err.into()),
    };
    let probes = if offline {
        offline_probes(&config)
    } else {
        run_probes(&config)
    };
    if json {
        print_json(&probes)?;
    } else {
        print_lines(&probes)?;
    }
    Ok(match worst(&probes) {
        Outcome::Fail => ExitCode::from(EXIT_FAILED),
        Outcome::Ok | Outcome::Warn => ExitCode::SUCCESS,
    })
}

fn worst(probes: &[Probe]) -> Outcome {
    probes
        .iter()
        .map(|p| p.outcome)
        .max()
        .unwrap_or(Outcome::Ok)
}

fn print_json(probes: &[Probe]) -> anyhow::Result<()> {
    let report = Report {
        result: worst(probes),
        checks: probes,
    };
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &report)?;
    writeln!(out)?;
    Ok(())
}

fn print_lines(probes: &[Probe]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for probe in probes {
        let status = match probe.outcome {
            Outcome::Ok => "ok",
            Outcome::Warn => "WARN",
            Outcome::Fail => "FAIL",
        };
        writeln!(out, "{status:<5} {:<10} {}", probe.name, probe.detail)?;
    }
    let count = |outcome| probes.iter().filter(|p| p.outcome == outcome).count();
    let (failed, warned) = (count(Outcome::Fail), count(Outcome::Warn));
    match (failed, warned) {
        (0, 0) => writeln!(out, "all {} checks passed", probes.len())?,
        (0, w) => writeln!(
            out,
            "all {} checks passed, {w} with a warning",
            probes.len()
        )?,
        (f, _) => writeln!(out, "{f} of {} checks failed", probes.len())?,
    }
    Ok(())
}

/// What needs no network and no hardware: the config, the data dir, the listen address and
/// the uplink's files (what systemd runs before starting the daemon, which must start during
/// an outage).
pub fn offline_probes(config: &Config) -> Vec<Probe> {
    let mut probes = vec![
        config_probe(config),
        data_dir_probe(config),
        listen_probe(config),
    ];
    if let Some(settings) = &config.uplink {
        probes.extend(uplink_file_probes(settings, unix_now()));
    }
    probes
}

/// The checks, in the order an installer would fix them.
pub fn run_probes(config: &Config) -> Vec<Probe> {
    let mut probes = offline_probes(config);
    probes.extend(config.serial_ports.iter().map(serial_probe));
    probes.extend(gpio_probe(config));
    if let Some(settings) = &config.uplink {
        probes.push(uplink_probe(settings));
    }
    probes.push(clock_probe());
    probes
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One line per file the uplink reads: CA, client certificate, client key, password.
fn uplink_file_probes(settings: &UplinkSettings, now: i64) -> Vec<Probe> {
    let mut probes = Vec::new();
    if let Some(tls) = &settings.tls {
        if let CaSource::File(path) = &tls.ca {
            probes.push(Probe::from_result("ca-file", files::check_ca(path, now)));
        }
        if let Some((cert, key)) = &tls.client_auth {
            probes.push(Probe::from_result(
                "cert-file",
                files::check_client_cert(cert, now),
            ));
            probes.push(secret_probe(
                "key-file",
                key,
                files::check_client_key(key, cert),
            ));
        }
    }
    if let Some(path) = &settings.password_file {
        probes.push(secret_probe("password", path, files::check_password(path)));
    }
    probes
}

/// A file holding a secret: a warning when everyone may read it.
fn secret_probe(name: &'static str, path: &Path, result: Result<String, FileError>) -> Probe {
    match (result, files::readable_by_others(path)) {
        (Err(err), _) => Probe::fail(name, err.to_string()),
        (Ok(found), Some(warning)) => Probe::warn(name, format!("{found}; but {warning}")),
        (Ok(found), None) => Probe::pass(name, found),
    }
}

/// Whether the HTTP API's address can be bound, or is already held by the running daemon.
fn listen_probe(config: &Config) -> Probe {
    let addr = config.listen;
    let err = match std::net::TcpListener::bind(addr) {
        Ok(_) => return Probe::pass("listen", format!("{addr} is free to bind")),
        Err(err) => err,
    };
    match err.kind() {
        std::io::ErrorKind::AddrInUse => match super::status::daemon_version(addr) {
            Some(version) => Probe::pass(
                "listen",
                format!("{addr} is held by the running votegate {version} (it answered on its API)"),
            ),
            None => Probe::fail(
                "listen",
                format!(
                    "{addr} is in use by another program (`ss -ltnp 'sport = :{}'` names it): stop it or change `listen`",
                    addr.port()
                ),
            ),
        },
        std::io::ErrorKind::PermissionDenied => Probe::fail(
            "listen",
            format!("cannot bind {addr}: {err} (ports below 1024 need privileges the daemon does not have: use 8080 or another port above 1023)"),
        ),
        std::io::ErrorKind::AddrNotAvailable => Probe::fail(
            "listen",
            format!("cannot bind {addr}: no network interface here has the address {} (use 127.0.0.1, 0.0.0.0 or one of this machine's addresses)", addr.ip()),
        ),
        _ => Probe::fail("listen", format!("cannot bind {addr}: {err}")),
    }
}

/// One line per GPIO terminal: its pins claimed and read (on a Pi), or why GPIO is unavailable.
fn gpio_probe(config: &Config) -> Vec<Probe> {
    let terminals: Vec<_> = config
        .terminals
        .iter()
        .filter_map(|t| match &t.source {
            SourceConfig::Gpio(settings) => Some((t.id.as_str(), settings)),
            _ => None,
        })
        .collect();
    if terminals.is_empty() {
        return Vec::new();
    }
    if let GpioBackend::Simulated { socket } = &config.gpio {
        return vec![Probe::pass(
            "gpio",
            format!(
                "simulated header on {} ({} terminals; no hardware checked)",
                socket.display(),
                terminals.len()
            ),
        )];
    }
    let header = match RppalHeader::open() {
        Ok(header) => header,
        Err(err) => return vec![Probe::fail("gpio", err.to_string())],
    };
    terminals
        .into_iter()
        .map(|(id, settings)| {
            let inputs = match header.claim_inputs(&settings.pins, settings.pull, settings.active_high) {
                Ok(inputs) => inputs,
                Err(err) => return Probe::fail("gpio", format!("{id}: {err}")),
            };
            let levels: Vec<&str> = inputs
                .initial_high
                .iter()
                .map(|&high| if high == settings.active_high { "PRESSED" } else { "up" })
                .collect();
            let led = match settings.led {
                None => "no LED".to_string(),
                Some(led) => match header.claim_led(led.pin) {
                    Ok(_) => format!("LED on BCM {}", led.pin),
                    Err(err) => return Probe::fail("gpio", format!("{id}: LED: {err}")),
                },
            };
            let pins: Vec<String> = settings.pins.iter().map(u8::to_string).collect();
            let detail = format!("{id}: BCM {} read {}; {led}", pins.join(","), levels.join(" "));
            if levels.contains(&"PRESSED") {
                Probe::fail("gpio", format!("{detail} (a button reads pressed while nobody presses it: check the wiring, pull and active level)"))
            } else {
                Probe::pass("gpio", detail)
            }
        })
        .collect()
}

/// The broker, step by step (DNS, TCP, TLS, MQTT CONNECT).
fn uplink_probe(settings: &UplinkSettings) -> Probe {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return Probe::fail("uplink", format!("cannot start the async runtime: {err}")),
    };
    match runtime.block_on(mqtt::probe(settings)) {
        Ok(passed) => Probe::pass("uplink", passed),
        Err((step, error)) => Probe::fail("uplink", format!("{step} step failed: {error}")),
    }
}

fn serial_probe(port: &SerialPortConfig) -> Probe {
    let terminals: Vec<String> = port
        .terminals
        .iter()
        .map(|(address, id)| match port.mode {
            PortMode::Point => id.to_string(),
            PortMode::Bus => format!("{id}@{address}"),
        })
        .collect();
    let mode = match port.mode {
        PortMode::Point => "point",
        PortMode::Bus => "bus",
    };
    match serial_port::probe(&port.path, port.baud) {
        Ok(()) => Probe::pass(
            "serial",
            format!(
                "{}: opens at {} baud ({mode} mode: {})",
                port.path.display(),
                port.baud,
                terminals.join(", ")
            ),
        ),
        Err(err) => Probe::fail("serial", err.to_string()),
    }
}

fn config_probe(config: &Config) -> Probe {
    let kinds: Vec<String> = config
        .terminals
        .iter()
        .map(|t| format!("{} ({})", t.id, t.source.kind()))
        .collect();
    Probe::pass(
        "config",
        format!(
            "{}: gateway {:?}, site {:?}, time zone {}, terminals: {}",
            config.path.display(),
            config.gateway_id,
            config.site,
            config.time_zone.name,
            kinds.join(", ")
        ),
    )
}

/// Whether the daemon's user can keep the journal in `data-dir`, found without creating it: an
/// existing folder must be writable, a missing one creatable in its parent.
fn data_dir_probe(config: &Config) -> Probe {
    let dir = &config.data_dir;
    let (state, stat_at) = match dir_state(dir) {
        Ok(found) => found,
        Err(probe) => return probe,
    };
    let used = journal_bytes(dir);
    let bound = config.journal.max_disk_bytes;
    let terminals = config.terminals.len();
    let reach = crate::journal::folder_estimate(bound, terminals);
    let terminals_text = match terminals {
        1 => "1 terminal".to_string(),
        n => format!("{n} terminals"),
    };
    let outcome = state.outcome;
    match free_bytes(&stat_at) {
        Ok(free) if free + used < reach => Probe::fail(
            "data-dir",
            format!(
                "{}: only {} free, but the journal's folder may grow to {} (max-disk-size {} and {terminals_text}, see README § The journal); free space or lower journal.max-disk-size",
                dir.display(),
                format_size(free),
                format_size(reach),
                format_size(bound)
            ),
        ),
        Ok(free) => Probe {
            name: "data-dir",
            outcome,
            detail: format!(
                "{}: {}, {} free, journal uses {} and may grow to {} (max-disk-size {}, {terminals_text})",
                dir.display(),
                state.text,
                format_size(free),
                format_size(used),
                format_size(reach),
                format_size(bound)
            ),
        },
        Err(err) => Probe::fail(
            "data-dir",
            format!("cannot read free space of {}: {err}", stat_at.display()),
        ),
    }
}

/// What `data_dir_probe` found about the folder itself.
struct DirState {
    outcome: Outcome,
    text: String,
}

/// The data dir's state and the existing folder whose filesystem will hold it; or the failed
/// probe.
fn dir_state(dir: &Path) -> Result<(DirState, PathBuf), Probe> {
    let fail = |text: String| Probe::fail("data-dir", text);
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => Err(fail(format!("{} is not a folder", dir.display()))),
        Ok(meta) => {
            write_probe_file(dir).map_err(|err| {
                fail(format!(
                    "{} is not writable: {err} (the daemon's user must own it: `chown {SERVICE_USER}: {}`)",
                    dir.display(),
                    dir.display()
                ))
            })?;
            let state = match service_user_cannot_write(&meta) {
                Some(user) => DirState {
                    outcome: Outcome::Warn,
                    text: format!(
                        "writable by this user, but not by {user}, whom the systemd unit runs the daemon as (its StateDirectory= gives it to {user} at start; without systemd: `chown {user}: {}`)",
                        dir.display()
                    ),
                },
                None => DirState {
                    outcome: Outcome::Ok,
                    text: "writable".to_string(),
                },
            };
            Ok((state, dir.to_path_buf()))
        }
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            missing_dir_state(dir)
        }
        Err(err) => Err(fail(format!("cannot read {}: {err}", dir.display()))),
    }
}

/// A data dir that does not exist yet: whether the daemon's user could create it.
fn missing_dir_state(dir: &Path) -> Result<(DirState, PathBuf), Probe> {
    let fail = |text: String| Probe::fail("data-dir", text);
    let parent = dir
        .ancestors()
        .skip(1)
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let meta = std::fs::metadata(&parent)
        .map_err(|err| fail(format!("cannot read {}: {err}", parent.display())))?;
    if !meta.is_dir() {
        return Err(fail(format!(
            "cannot create {}: {} is not a folder",
            dir.display(),
            parent.display()
        )));
    }
    let create = format!(
        "`install -d -o {SERVICE_USER} -g {SERVICE_USER} -m 750 {}`",
        dir.display()
    );
    if !may_write(&parent) {
        return Err(fail(format!(
            "{} does not exist and this user cannot create it ({} is not writable): create it for the daemon's user: {create}",
            dir.display(),
            parent.display()
        )));
    }
    let state = match service_user_cannot_write(&meta) {
        Some(user) => DirState {
            outcome: Outcome::Warn,
            text: format!(
                "does not exist yet, and {user} (the daemon's user) cannot create it in {} (the systemd unit's StateDirectory= creates it at start; without systemd: {create})",
                parent.display()
            ),
        },
        None => DirState {
            outcome: Outcome::Ok,
            text: format!(
                "does not exist yet; the daemon creates it ({} is writable)",
                parent.display()
            ),
        },
    };
    Ok((state, parent))
}

/// Run as root, whether the daemon's user (when this machine has it) lacks write access to a
/// folder: root may write anywhere, so its own success proves nothing for the daemon.
fn service_user_cannot_write(meta: &std::fs::Metadata) -> Option<&'static str> {
    // SAFETY: geteuid cannot fail and has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let user = user_ids(SERVICE_USER)?;
    (!user_may_write((meta.mode(), meta.uid(), meta.gid()), user)).then_some(SERVICE_USER)
}

/// Whether a user `(uid, primary gid)` may create entries in a folder `(mode, owner, group)`,
/// by its permission bits (write and search).
fn user_may_write((mode, owner, group): (u32, u32, u32), (uid, gid): (u32, u32)) -> bool {
    let bits = if owner == uid {
        mode >> 6
    } else if group == gid {
        mode >> 3
    } else {
        mode
    };
    bits & 0o3 == 0o3
}

/// A user's uid and primary gid, if the user exists.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is NUL-terminated; getpwnam returns null or a pointer to static storage,
    // read at once before any other call could overwrite it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: not null, see above.
    let entry = unsafe { &*entry };
    Some((entry.pw_uid, entry.pw_gid))
}

/// Whether this process may create entries in `dir` (access(2): honours ACLs, read-only
/// mounts and root).
fn may_write(dir: &Path) -> bool {
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is NUL-terminated; access only reads it.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

fn clock_probe() -> Probe {
    let state = kernel_sync_state();
    if state.synced {
        Probe::pass(
            "clock",
            format!(
                "system clock is NTP-synchronised (max error {} ms)",
                state.maxerror_us / 1000
            ),
        )
    } else {
        Probe::fail(
            "clock",
            format!(
                "system clock is not NTP-synchronised (adjtimex state {}, STA_UNSYNC {}, max error {} s): \
                 votes are stamped clock_synced=false until it is; enable systemd-timesyncd or chrony and check `timedatectl`",
                state.state,
                state.sta_unsync,
                state.maxerror_us / 1_000_000
            ),
        )
    }
}

/// Creates, fsyncs and removes a small file, as the journal would.
fn write_probe_file(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(format!(".votegate-check-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(b"votegate check\n")?;
        file.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    result.and(removed)
}

/// Bytes already taken by the journal's files (sled keeps them flat, plus `blobs/`).
fn journal_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .sum()
}

/// Bytes available to an unprivileged user on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    // SAFETY: an all-zero statvfs is valid and `statvfs` only writes into it.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is writable.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::useless_conversion)] // the field types differ between 32- and 64-bit targets
    Ok(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_user_needs_write_and_search_on_the_folder() {
        let votegate = (999, 999);
        // /var/lib as Debian makes it, a folder root created (the bug of old), the package's.
        assert!(!user_may_write((0o755, 0, 0), votegate));
        assert!(user_may_write((0o750, 999, 999), votegate));
        assert!(user_may_write((0o770, 0, 999), votegate));
        assert!(!user_may_write((0o750, 0, 999), votegate));
        assert!(user_may_write((0o777, 0, 0), votegate));
        assert!(
            !user_may_write((0o577, 999, 0), votegate),
            "the owner's own bits count"
        );
    }

    #[test]
    fn the_worst_outcome_decides() {
        let probes = [
            Probe::pass("a", String::new()),
            Probe::warn("b", String::new()),
        ];
        assert_eq!(worst(&probes), Outcome::Warn);
        assert_eq!(worst(&[]), Outcome::Ok);
        let json = serde_json::to_string(&Report {
            result: Outcome::Fail,
            checks: &[Probe::fail("listen", "busy".into())],
        })
        .unwrap_or_default();
        assert_eq!(
            json,
            r#"{"result":"fail","checks":[{"name":"listen","result":"fail","message":"busy"}]}"#
        );
    }
}
