//! `votegate check`: for installers. Validates the config and probes every part the daemon
//! needs, one line per check, and exits 0 only if all pass. It never opens the journal, so it is
//! safe to run while the daemon is running.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;

use crate::clock::kernel_sync_state;
use crate::config::units::format_size;
use crate::config::{Config, GpioBackend, PortMode, SerialPortConfig, SourceConfig};
use crate::sources::gpio::pins::{Header, RppalHeader};
use crate::sources::serial::port as serial_port;
use crate::uplink::{mqtt, UplinkSettings};

use super::EXIT_FAILED;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Short name of the part checked.
    pub name: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// What was found, or what is wrong and what to do.
    pub detail: String,
}

impl Probe {
    fn pass(name: &'static str, detail: String) -> Probe {
        Probe {
            name,
            passed: true,
            detail,
        }
    }

    fn fail(name: &'static str, detail: String) -> Probe {
        Probe {
            name,
            passed: false,
            detail,
        }
    }
}

/// Runs every check for the config at `path` (only the offline ones with `offline`) and prints
/// the report.
pub fn check(path: &Path, offline: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let probes = if offline {
        vec![config_probe(&config), data_dir_probe(&config)]
    } else {
        run_probes(&config)
    };
    let mut out = std::io::stdout().lock();
    for probe in &probes {
        let status = if probe.passed { "ok" } else { "FAIL" };
        writeln!(out, "{status:<5} {:<10} {}", probe.name, probe.detail)?;
    }
    let failed = probes.iter().filter(|p| !p.passed).count();
    if failed == 0 {
        writeln!(out, "all {} checks passed", probes.len())?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(out, "{failed} of {} checks failed", probes.len())?;
        Ok(ExitCode::from(EXIT_FAILED))
    }
}

/// The checks, in the order an installer would fix them.
pub fn run_probes(config: &Config) -> Vec<Probe> {
    let mut probes = vec![config_probe(config), data_dir_probe(config)];
    probes.extend(config.serial_ports.iter().map(serial_probe));
    probes.extend(gpio_probe(config));
    if let Some(settings) = &config.uplink {
        probes.push(uplink_probe(settings));
    }
    probes.push(clock_probe());
    probes
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

fn data_dir_probe(config: &Config) -> Probe {
    let dir = &config.data_dir;
    if let Err(err) = std::fs::create_dir_all(dir) {
        return Probe::fail(
            "data-dir",
            format!("cannot create {}: {err}", dir.display()),
        );
    }
    if let Err(err) = write_probe_file(dir) {
        return Probe::fail(
            "data-dir",
            format!(
                "{} is not writable: {err} (the daemon's user must own it)",
                dir.display()
            ),
        );
    }
    let used = journal_bytes(dir);
    let bound = config.journal.max_disk_bytes;
    let terminals = config.terminals.len();
    let reach = crate::journal::folder_estimate(bound, terminals);
    let terminals_text = match terminals {
        1 => "1 terminal".to_string(),
        n => format!("{n} terminals"),
    };
    match free_bytes(dir) {
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
        Ok(free) => Probe::pass(
            "data-dir",
            format!(
                "{}: writable, {} free, journal uses {} and may grow to {} (max-disk-size {}, {terminals_text})",
                dir.display(),
                format_size(free),
                format_size(used),
                format_size(reach),
                format_size(bound)
            ),
        ),
        Err(err) => Probe::fail("data-dir", format!("cannot read free space of {}: {err}", dir.display())),
    }
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
