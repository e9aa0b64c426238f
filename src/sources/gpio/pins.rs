//! The seam to the GPIO header: edges in, LED out. The only file that imports rppal.
//!
//! [`Header`] is what the GPIO terminals need from the hardware. [`RppalHeader`] is the Pi's
//! header (rppal's character-device interrupts, timestamped by the kernel); [`SimulatedHeader`]
//! stands in for it in tests and the demo, driven over a Unix socket (see [`SimulatedHeader::serve`]).

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

/// A level change on one input pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// BCM pin number.
    pub pin: u8,
    /// The level after the change.
    pub high: bool,
    /// When, in the header's time base ([`Header::now`]).
    pub at: Duration,
    /// The line's event number (1, 2, …), if the hardware numbers events.
    pub seq: Option<u32>,
}

/// The built-in bias resistor of an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    /// Pulled up (~50 kΩ): the button connects the pin to ground.
    Up,
    /// Pulled down: the button connects the pin to 3.3 V.
    Down,
    /// No bias: external resistors.
    None,
}

/// The inputs of one terminal, claimed.
pub struct Inputs {
    /// Every level change on any of the pins, in order.
    pub edges: mpsc::UnboundedReceiver<Edge>,
    /// The level of each pin (in the order asked for) when the claim was made.
    pub initial_high: Vec<bool>,
    /// Keeps the pins claimed (and their interrupts running) until dropped.
    _claim: Box<dyn Send>,
}

/// An output driving a LED (high = on).
pub trait Led: Send {
    /// Switches the LED.
    fn set(&mut self, on: bool);
}

/// What GPIO terminals need from the header.
pub trait Header: Send + Sync {
    /// Claims `pins` as inputs with `pull`, reporting both edges. `active_high` says which
    /// level means pressed (a simulated header idles at the other one).
    fn claim_inputs(&self, pins: &[u8], pull: Pull, active_high: bool)
        -> Result<Inputs, GpioError>;
    /// Claims `pin` as an output, LED off.
    fn claim_led(&self, pin: u8) -> Result<Box<dyn Led>, GpioError>;
    /// Now, in the edges' time base.
    fn now(&self) -> Duration;
}

/// The header cannot be used, or a pin cannot be claimed.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// Not a Raspberry Pi (or a model rppal does not know).
    #[error("GPIO is unavailable on this machine: it is not a Raspberry Pi (rppal: {0})")]
    Unavailable(String),
    /// /dev/gpiomem or /dev/gpiochip* cannot be opened.
    #[error(
        "no permission to use the GPIO header ({0}): run votegate as a member of the `gpio` group"
    )]
    Permission(String),
    /// The pin is taken by another program, a kernel driver or an overlay.
    #[error("BCM {0} is in use by another program or a kernel driver (check the dtoverlay lines in /boot/firmware/config.txt)")]
    PinBusy(u8),
    /// Anything else rppal reports.
    #[error("GPIO error: {0}")]
    Other(String),
    /// The simulated header's socket.
    #[error("cannot listen on the simulated GPIO socket {}: {cause}", path.display())]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// CLOCK_MONOTONIC, the clock the kernel stamps GPIO line events with.
fn monotonic_now() -> Duration {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `spec` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut spec) };
    let secs = u64::try_from(spec.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(spec.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// The Raspberry Pi's header, through rppal.
pub struct RppalHeader {
    gpio: rppal::gpio::Gpio,
}

impl RppalHeader {
    /// Opens the header; fails off a Pi with [`GpioError::Unavailable`].
    pub fn open() -> Result<RppalHeader, GpioError> {
        let gpio = rppal::gpio::Gpio::new().map_err(|err| map_rppal(err, None))?;
        Ok(RppalHeader { gpio })
    }
}

fn map_rppal(err: rppal::gpio::Error, pin: Option<u8>) -> GpioError {
    use rppal::gpio::Error;
    match err {
        Error::UnknownModel => GpioError::Unavailable(err.to_string()),
        Error::PermissionDenied(path) => GpioError::Permission(path),
        Error::PinUsed(pin) | Error::PinNotAvailable(pin) => GpioError::PinBusy(pin),
        Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
            GpioError::Permission(io.to_string())
        }
        Error::Io(io) if io.raw_os_error() == Some(libc::EBUSY) => match pin {
            Some(pin) => GpioError::PinBusy(pin),
            None => GpioError::Other(io.to_string()),
        },
        other => GpioError::Other(other.to_string()),
    }
}

impl Header for RppalHeader {
    fn claim_inputs(
        &self,
        pins: &[u8],
        pull: Pull,
        _active_high: bool,
    ) -> Result<Inputs, GpioError> {
        use rppal::gpio::{Level, Trigger};
        let (sender, edges) = mpsc::unbounded_channel();
        let mut claimed = Vec::with_capacity(pins.len());
        let mut initial_high = Vec::with_capacity(pins.len());
        for &pin in pins {
            let raw = self
                .gpio
                .get(pin)
                .map_err(|err| map_rppal(err, Some(pin)))?;
            let mut input = match pull {
                Pull::Up => raw.into_input_pullup(),
                Pull::Down => raw.into_input_pulldown(),
                Pull::None => raw.into_input(),
            };
            let sender = sender.clone();
            // Debouncing is ours (presses.rs): the kernel's debounce would hide the edge times.
            input
                .set_async_interrupt(Trigger::Both, None, move |event| {
                    let _ = sender.send(Edge {
                        pin,
                        high: event.trigger == Trigger::RisingEdge,
                        at: event.timestamp,
                        seq: Some(event.seqno),
                    });
                })
                .map_err(|err| map_rppal(err, Some(pin)))?;
            initial_high.push(input.read() == Level::High);
            claimed.push(input);
        }
        Ok(Inputs {
            edges,
            initial_high,
            _claim: Box::new(claimed),
        })
    }

    fn claim_led(&self, pin: u8) -> Result<Box<dyn Led>, GpioError> {
        let output = self
            .gpio
            .get(pin)
            .map_err(|err| map_rppal(err, Some(pin)))?
            .into_output_low();
        Ok(Box::new(RppalLed(output)))
    }

    fn now(&self) -> Duration {
        monotonic_now()
    }
}

struct RppalLed(rppal::gpio::OutputPin);

impl Led for RppalLed {
    fn set(&mut self, on: bool) {
        if on {
            self.0.set_high();
        } else {
            self.0.set_low();
        }
    }
}

/// A simulated header: inputs are driven by clients of a Unix socket, LED changes are sent to
/// them. Used by the tests and the demo.
///
/// The socket takes one command per line:
///
/// - `press PIN [HOLD_MS]`: the pin goes to its active level, and back after HOLD_MS (100);
/// - `edge PIN 0|1`: the pin goes low or high;
/// - `wait MS`: the next edge comes MS milliseconds (fractions allowed) after the previous one.
///
/// Edges are stamped on a per-connection schedule (a `wait` adds exactly MS), and the simulator
/// runs up to [`SIMULATION_LOOKAHEAD`] ahead of the clock, so a bounce train keeps its exact
/// timing however late a loaded (or emulated) machine runs the simulator: edges may arrive
/// early, stamped in the near future, but never late. Clients receive
/// `led PIN 0|1` on every LED change, and `error …` for a command that cannot be done.
pub struct SimulatedHeader {
    epoch: Instant,
    pins: Arc<Mutex<HashMap<u8, SimulatedInput>>>,
    leds: broadcast::Sender<(u8, bool)>,
}

/// How far ahead of the clock the simulated header may stamp edges.
pub const SIMULATION_LOOKAHEAD: Duration = Duration::from_millis(250);

struct SimulatedInput {
    sender: mpsc::UnboundedSender<Edge>,
    high: bool,
    active_high: bool,
    seq: u32,
}

impl Default for SimulatedHeader {
    fn default() -> SimulatedHeader {
        SimulatedHeader {
            epoch: Instant::now(),
            pins: Arc::new(Mutex::new(HashMap::new())),
            leds: broadcast::channel(1024).0,
        }
    }
}

impl SimulatedHeader {
    fn lock(&self) -> MutexGuard<'_, HashMap<u8, SimulatedInput>> {
        self.pins.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drives `pin` to `high` at `at`; an unchanged level makes no edge, as on real hardware.
    pub fn drive(&self, pin: u8, high: bool, at: Duration) -> Result<(), String> {
        let mut pins = self.lock();
        let input = pins
            .get_mut(&pin)
            .ok_or_else(|| format!("BCM {pin} is not an input of any GPIO terminal"))?;
        if input.high != high {
            input.high = high;
            input.seq += 1;
            let _ = input.sender.send(Edge {
                pin,
                high,
                at,
                seq: Some(input.seq),
            });
        }
        Ok(())
    }

    fn active_level(&self, pin: u8) -> Result<bool, String> {
        self.lock()
            .get(&pin)
            .map(|input| input.active_high)
            .ok_or_else(|| format!("BCM {pin} is not an input of any GPIO terminal"))
    }

    /// LED changes as `(pin, on)`.
    pub fn led_changes(&self) -> broadcast::Receiver<(u8, bool)> {
        self.leds.subscribe()
    }

    /// Serves the control socket at `path` until `shutdown`.
    pub fn serve(
        self: Arc<Self>,
        path: &Path,
        shutdown: CancellationToken,
    ) -> Result<impl std::future::Future<Output = ()>, GpioError> {
        let socket_error = |cause| GpioError::Socket {
            path: path.to_path_buf(),
            cause,
        };
        // A socket left by an earlier run is replaced; anything else at that path is kept.
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(socket_error)?;
            }
            Ok(_) => {
                return Err(socket_error(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket",
                )))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(socket_error(err)),
        }
        let listener = tokio::net::UnixListener::bind(path).map_err(socket_error)?;
        log::info!(socket:% = path.display(); "simulated GPIO header listening");
        Ok(async move {
            loop {
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(err) => {
                            log::warn!("simulated GPIO socket: {err}");
                            continue;
                        }
                    },
                };
                tokio::spawn(self.clone().client(stream, shutdown.clone()));
            }
        })
    }

    async fn client(self: Arc<Self>, stream: tokio::net::UnixStream, shutdown: CancellationToken) {
        let (reader, mut writer) = stream.into_split();
        let mut lines = BufReader::new(reader).lines();
        let mut leds = self.led_changes();
        let mut cursor = Duration::ZERO;
        loop {
            let reply = tokio::select! {
                _ = shutdown.cancelled() => return,
                change = leds.recv() => match change {
                    Ok((pin, on)) => format!("led {pin} {}\n", u8::from(on)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                line = lines.next_line() => match line {
                    Ok(Some(line)) => match self.command(&line, &mut cursor).await {
                        Ok(()) => continue,
                        Err(problem) => format!("error {problem}\n"),
                    },
                    _ => return,
                },
            };
            if writer.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    async fn command(&self, line: &str, cursor: &mut Duration) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let pin = |index: usize| -> Result<u8, String> {
            words
                .get(index)
                .and_then(|word| word.parse().ok())
                .ok_or_else(|| format!("expected a BCM pin number in {line:?}"))
        };
        let millis = |index: usize, default: f64| -> Result<Duration, String> {
            match words.get(index) {
                None => Ok(Duration::from_secs_f64(default / 1000.0)),
                Some(word) => word
                    .parse::<f64>()
                    .ok()
                    .filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms < 3_600_000.0)
                    .map(|ms| Duration::from_secs_f64(ms / 1000.0))
                    .ok_or_else(|| format!("expected milliseconds in {line:?}")),
            }
        };
        match words.first().copied() {
            None => Ok(()),
            Some("wait") => {
                *cursor = (*cursor).max(self.now()) + millis(1, 0.0)?;
                self.sleep_until(*cursor).await;
                Ok(())
            }
            Some("edge") => {
                let high = match words.get(2).copied() {
                    Some("1") | Some("high") => true,
                    Some("0") | Some("low") => false,
                    _ => return Err(format!("expected `edge PIN 0|1`, found {line:?}")),
                };
                *cursor = (*cursor).max(self.now());
                self.drive(pin(1)?, high, *cursor)
            }
            Some("press") => {
                let pin = pin(1)?;
                let hold = millis(2, 100.0)?;
                let active = self.active_level(pin)?;
                *cursor = (*cursor).max(self.now());
                self.drive(pin, active, *cursor)?;
                *cursor += hold;
                self.sleep_until(*cursor).await;
                self.drive(pin, !active, *cursor)
            }
            Some(other) => Err(format!(
                "unknown command {other:?}: expected press, edge or wait"
            )),
        }
    }

    /// Waits until the schedule is at most [`SIMULATION_LOOKAHEAD`] ahead of the clock.
    async fn sleep_until(&self, at: Duration) {
        let now = self.now();
        let at = at.saturating_sub(SIMULATION_LOOKAHEAD);
        if at > now {
            tokio::time::sleep(at - now).await;
        }
    }
}

impl Header for SimulatedHeader {
    fn claim_inputs(
        &self,
        pins: &[u8],
        _pull: Pull,
        active_high: bool,
    ) -> Result<Inputs, GpioError> {
        let (sender, edges) = mpsc::unbounded_channel();
        let mut claimed = self.lock();
        for &pin in pins {
            if claimed.contains_key(&pin) {
                return Err(GpioError::PinBusy(pin));
            }
        }
        for &pin in pins {
            claimed.insert(
                pin,
                SimulatedInput {
                    sender: sender.clone(),
                    high: !active_high,
                    active_high,
                    seq: 0,
                },
            );
        }
        Ok(Inputs {
            edges,
            initial_high: vec![!active_high; pins.len()],
            _claim: Box::new(SimulatedClaim {
                pins: pins.to_vec(),
                claimed: self.pins.clone(),
            }),
        })
    }

    fn claim_led(&self, pin: u8) -> Result<Box<dyn Led>, GpioError> {
        Ok(Box::new(SimulatedLed {
            pin,
            leds: self.leds.clone(),
        }))
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

/// Frees a terminal's simulated pins when its task ends (a reload restarting it), as dropping
/// rppal's pins does on the Pi.
struct SimulatedClaim {
    pins: Vec<u8>,
    claimed: Arc<Mutex<HashMap<u8, SimulatedInput>>>,
}

impl Drop for SimulatedClaim {
    fn drop(&mut self) {
        let mut claimed = self.claimed.lock().unwrap_or_else(PoisonError::into_inner);
        for pin in &self.pins {
            claimed.remove(pin);
        }
    }
}

struct SimulatedLed {
    pin: u8,
    leds: broadcast::Sender<(u8, bool)>,
}

impl Led for SimulatedLed {
    fn set(&mut self, on: bool) {
        log::debug!(pin = self.pin; "simulated LED {}", if on { "on" } else { "off" });
        let _ = self.leds.send((self.pin, on));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_a_pi_the_header_is_unavailable_without_a_panic() {
        let on_a_pi = std::fs::read_to_string("/proc/device-tree/model")
            .is_ok_and(|model| model.contains("Raspberry Pi"));
        match RppalHeader::open() {
            Err(GpioError::Unavailable(reason)) => {
                assert!(!on_a_pi, "rppal does not know this Pi: {reason}");
                assert!(!reason.is_empty());
            }
            Err(other) => panic!("expected Unavailable off a Pi or Ok on one, got {other}"),
            Ok(_) => assert!(on_a_pi, "not a Raspberry Pi, yet rppal opened its GPIO"),
        }
    }

    #[tokio::test]
    async fn the_control_socket_replaces_a_stale_socket_but_never_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let header = Arc::new(SimulatedHeader::default());
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).expect("stale socket"));
        assert!(header
            .clone()
            .serve(&stale, CancellationToken::new())
            .is_ok());
        let file = dir.path().join("votegate.toml");
        std::fs::write(&file, "keep me").expect("file");
        assert!(header.serve(&file, CancellationToken::new()).is_err());
        assert_eq!(std::fs::read_to_string(&file).expect("kept"), "keep me");
    }

    #[tokio::test]
    async fn the_simulated_header_makes_edges_only_on_level_changes() {
        let header = SimulatedHeader::default();
        let mut inputs = header
            .claim_inputs(&[5, 6], Pull::Up, false)
            .expect("claim");
        assert_eq!(inputs.initial_high, vec![true, true]);
        header
            .drive(5, true, Duration::from_millis(1))
            .expect("drive");
        header
            .drive(5, false, Duration::from_millis(2))
            .expect("drive");
        header
            .drive(6, false, Duration::from_millis(3))
            .expect("drive");
        let first = inputs.edges.recv().await.expect("edge");
        assert_eq!((first.pin, first.high, first.seq), (5, false, Some(1)));
        let second = inputs.edges.recv().await.expect("edge");
        assert_eq!((second.pin, second.high, second.seq), (6, false, Some(1)));
        assert!(header.drive(7, true, Duration::ZERO).is_err());
        assert!(matches!(
            header.claim_inputs(&[6], Pull::Up, false),
            Err(GpioError::PinBusy(6))
        ));
        drop(inputs);
        assert!(
            header.claim_inputs(&[6], Pull::Up, false).is_ok(),
            "released with its terminal"
        );
    }
}
