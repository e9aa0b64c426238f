//! Time, behind a small trait so tests can fake it.
//!
//! A press is stamped with three readings taken together: the UTC wall clock, whether the kernel
//! considers that clock NTP-synchronised, and the monotonic time since boot (with the boot id).
//! A Pi has no battery-backed clock, so after a power cut it may accept presses before NTP has
//! set the time; [`restamp`] later recomputes their wall time from the monotonic reading, which
//! is valid as long as the machine has not rebooted in between.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::{BootId, PressTime};

/// Where the kernel publishes the current boot's id.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The kernel's limit on `maxerror` (16 s, NTP_PHASE_LIMIT): above it the clock is unsynchronised.
const MAX_SYNCED_ERROR_US: i64 = 16_000_000;

/// One consistent reading of the gateway's clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockReading {
    /// UTC wall clock, milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Milliseconds since boot, including time spent suspended.
    pub mono_ms: u64,
    /// Whether the wall clock is NTP-synchronised.
    pub synced: bool,
    /// The current boot.
    pub boot_id: BootId,
}

impl ClockReading {
    /// The time of a press that happened `age_ms` before this reading (terminals report the age
    /// of votes they queued while the gateway was away).
    pub fn press_time(&self, age_ms: u64) -> PressTime {
        PressTime {
            ts_ms: self.wall_ms.saturating_sub(age_ms),
            clock_synced: self.synced,
            boot_id: self.boot_id,
            mono_ms: self.mono_ms.saturating_sub(age_ms),
        }
    }
}

/// A source of clock readings.
pub trait Clock: Send + Sync + 'static {
    /// Reads all clocks at once.
    fn now(&self) -> ClockReading;
}

/// The wall time a press would have had on a synchronised clock, when that can be known: the
/// press was stamped unsynchronised, the clock is synchronised now, and both readings come from
/// the same boot. Returns `None` when the stamp must stay as it is.
pub fn restamp(pressed: &PressTime, now: &ClockReading) -> Option<u64> {
    if pressed.clock_synced || !now.synced || pressed.boot_id != now.boot_id {
        return None;
    }
    let elapsed_ms = now.mono_ms.checked_sub(pressed.mono_ms)?;
    now.wall_ms.checked_sub(elapsed_ms)
}

/// Errors reading the system clocks.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The boot id file could not be read or parsed.
    #[error("cannot read the boot id from {BOOT_ID_PATH}: {0}")]
    BootId(String),
}

/// The environment variable naming a [`ClockOverride`] file: a test seam for the black-box
/// tests (the soak plays a Pi that boots unsynchronised and syncs later). Never set in service.
pub const CLOCK_OVERRIDE_ENV: &str = "VOTEGATE_CLOCK_OVERRIDE";

/// What a clock override file says: `synced=0|1 offset_ms=N` (the wall clock is the system's
/// plus N ms). Re-read at every reading, so a test can sync the clock of a running daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOverride {
    /// Whether the clock counts as synchronised.
    pub synced: bool,
    /// Added to the system's wall clock.
    pub offset_ms: i64,
}

impl ClockOverride {
    /// Parses `synced=0|1 offset_ms=N` (whitespace separated, any order; offset defaults to 0).
    pub fn parse(text: &str) -> Option<ClockOverride> {
        let mut synced = None;
        let mut offset_ms = 0;
        for word in text.split_whitespace() {
            match word.split_once('=')? {
                ("synced", "1") => synced = Some(true),
                ("synced", "0") => synced = Some(false),
                ("offset_ms", value) => offset_ms = value.parse().ok()?,
                _ => return None,
            }
        }
        Some(ClockOverride {
            synced: synced?,
            offset_ms,
        })
    }
}

/// The real clocks of this machine.
#[derive(Debug)]
pub struct SystemClock {
    boot_id: BootId,
    override_file: Option<std::path::PathBuf>,
}

impl SystemClock {
    /// Reads the boot id once; every later reading reuses it. Honours [`CLOCK_OVERRIDE_ENV`].
    pub fn new() -> Result<SystemClock, ClockError> {
        let text = std::fs::read_to_string(BOOT_ID_PATH)
            .map_err(|err| ClockError::BootId(err.to_string()))?;
        let boot_id = BootId::parse(&text)
            .ok_or_else(|| ClockError::BootId(format!("unexpected content {:?}", text.trim())))?;
        let override_file = std::env::var_os(CLOCK_OVERRIDE_ENV).map(std::path::PathBuf::from);
        if let Some(path) = &override_file {
            log::warn!(
                "{CLOCK_OVERRIDE_ENV} is set: clock sync state and offset come from {} (a test seam)",
                path.display()
            );
        }
        Ok(SystemClock {
            boot_id,
            override_file,
        })
    }

    fn overridden(&self) -> Option<ClockOverride> {
        let path = self.override_file.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        ClockOverride::parse(&text)
    }
}

impl Clock for SystemClock {
    fn now(&self) -> ClockReading {
        let (synced, offset_ms) = match self.overridden() {
            Some(fake) => (fake.synced, fake.offset_ms),
            None => (kernel_sync_state().synced, 0),
        };
        ClockReading {
            wall_ms: wall_clock_ms().saturating_add_signed(offset_ms),
            mono_ms: boot_time_ms(),
            synced,
            boot_id: self.boot_id,
        }
    }
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn boot_time_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every Linux ≥ 2.6.39.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1000 + nanos / 1_000_000
}

/// What the kernel says about NTP synchronisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSyncState {
    /// The conclusion: synchronised or not.
    pub synced: bool,
    /// adjtimex's return value (`TIME_ERROR` = 5 means unsynchronised).
    pub state: i32,
    /// Whether the `STA_UNSYNC` status bit is set.
    pub sta_unsync: bool,
    /// The kernel's maximum error estimate, microseconds.
    pub maxerror_us: i64,
}

/// Asks the kernel (adjtimex, read-only) whether its clock is synchronised. This is what
/// `timedatectl` shows as "System clock synchronized", set by chrony, ntpd or systemd-timesyncd.
pub fn kernel_sync_state() -> KernelSyncState {
    // SAFETY: an all-zero timex is valid; modes = 0 makes adjtimex a pure read.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `tx` is a valid, writable timex.
    let state = unsafe { libc::adjtimex(&mut tx) };
    let sta_unsync = tx.status & libc::STA_UNSYNC != 0;
    #[allow(clippy::useless_conversion)] // c_long is 32-bit on armv7
    let maxerror_us = i64::from(tx.maxerror);
    let synced =
        state >= 0 && state != libc::TIME_ERROR && !sta_unsync && maxerror_us < MAX_SYNCED_ERROR_US;
    KernelSyncState {
        synced,
        state,
        sta_unsync,
        maxerror_us,
    }
}

/// A clock for tests and the benchmarks: set by hand, shared through an `Arc`.
#[derive(Debug, Default)]
pub struct FakeClock {
    wall_ms: AtomicU64,
    mono_ms: AtomicU64,
    synced: AtomicBool,
    boot: AtomicU64,
}

impl FakeClock {
    /// A synchronised clock at `wall_ms`, with monotonic time 1 000 000 ms into boot 1.
    pub fn new(wall_ms: u64) -> FakeClock {
        let clock = FakeClock::default();
        clock.wall_ms.store(wall_ms, Ordering::SeqCst);
        clock.mono_ms.store(1_000_000, Ordering::SeqCst);
        clock.synced.store(true, Ordering::SeqCst);
        clock.boot.store(1, Ordering::SeqCst);
        clock
    }

    /// Moves both clocks forward.
    pub fn advance_ms(&self, ms: u64) {
        self.wall_ms.fetch_add(ms, Ordering::SeqCst);
        self.mono_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the wall clock (as NTP would), leaving monotonic time alone.
    pub fn set_wall_ms(&self, wall_ms: u64) {
        self.wall_ms.store(wall_ms, Ordering::SeqCst);
    }

    /// Marks the clock synchronised or not.
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::SeqCst);
    }

    /// Simulates a reboot: a new boot id and monotonic time restarting near zero.
    pub fn reboot(&self) {
        self.boot.fetch_add(1, Ordering::SeqCst);
        self.mono_ms.store(5_000, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> ClockReading {
        let mut boot = [0u8; 16];
        boot[8..].copy_from_slice(&self.boot.load(Ordering::SeqCst).to_be_bytes());
        ClockReading {
            wall_ms: self.wall_ms.load(Ordering::SeqCst),
            mono_ms: self.mono_ms.load(Ordering::SeqCst),
            synced: self.synced.load(Ordering::SeqCst),
            boot_id: BootId(boot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN_1970_PLUS_1S: u64 = 1_000;
    const NOV_2026: u64 = 1_795_000_000_000;

    #[test]
    fn clock_override_files_parse_strictly() {
        assert_eq!(
            ClockOverride::parse("synced=0 offset_ms=-600000\n"),
            Some(ClockOverride {
                synced: false,
                offset_ms: -600_000
            })
        );
        assert_eq!(
            ClockOverride::parse("synced=1"),
            Some(ClockOverride {
                synced: true,
                offset_ms: 0
            })
        );
        assert_eq!(
            ClockOverride::parse("offset_ms=5"),
            None,
            "synced is required"
        );
        assert_eq!(ClockOverride::parse("synced=yes"), None);
        assert_eq!(ClockOverride::parse("synced=1 tz=UTC"), None);
    }

    #[test]
    fn a_press_before_sync_is_restamped_from_monotonic_time_in_the_same_boot() {
        let clock = FakeClock::new(JAN_1970_PLUS_1S);
        clock.set_synced(false);
        let pressed = clock.now().press_time(0);
        clock.advance_ms(30_000);
        assert_eq!(restamp(&pressed, &clock.now()), None, "still unsynced");

        clock.set_wall_ms(NOV_2026);
        clock.set_synced(true);
        assert_eq!(restamp(&pressed, &clock.now()), Some(NOV_2026 - 30_000));
    }

    #[test]
    fn a_press_from_another_boot_or_already_synced_keeps_its_stamp() {
        let clock = FakeClock::new(NOV_2026);
        let synced_press = clock.now().press_time(0);
        assert_eq!(restamp(&synced_press, &clock.now()), None);

        clock.set_synced(false);
        let unsynced_press = clock.now().press_time(0);
        clock.reboot();
        clock.set_synced(true);
        assert_eq!(restamp(&unsynced_press, &clock.now()), None);
    }

    #[test]
    fn press_age_moves_both_stamps_back() {
        let clock = FakeClock::new(NOV_2026);
        let reading = clock.now();
        let at = reading.press_time(2_500);
        assert_eq!(at.ts_ms, NOV_2026 - 2_500);
        assert_eq!(at.mono_ms, reading.mono_ms - 2_500);
    }

    #[test]
    fn the_system_clock_reads_plausible_values() {
        let clock = SystemClock::new().expect("boot id readable on Linux");
        let a = clock.now();
        let b = clock.now();
        assert!(a.mono_ms > 0, "CLOCK_BOOTTIME read as zero");
        assert!(b.mono_ms >= a.mono_ms);
        assert_eq!(a.boot_id, b.boot_id);
        assert_ne!(a.boot_id, BootId::default());
        let state = kernel_sync_state();
        if state.sta_unsync || state.state == libc::TIME_ERROR {
            assert!(!state.synced, "{state:?}");
        }
    }
}
