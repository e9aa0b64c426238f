//! Validation of GPIO terminals (`kind = "gpio"`) and the `[gpio]` table.
//!
//! A GPIO terminal names four BCM pins (very unhappy … very happy), their pull and active
//! level, debounce and stuck timing, and optionally a LED pin with its blink pattern. Across
//! all GPIO terminals no pin may be used twice, and none may be a pin of the Pi's own UART
//! when a serial terminal uses it (hardware/WIRING.md).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawGpio, RawTerminal};
use super::{units, ConfigError, Document, SourceConfig, TerminalConfig};
use crate::sources::gpio::pins::Pull;
use crate::sources::gpio::{GpioSettings, LedSettings, CHORD_WINDOW};

/// BCM 2 to 27 are the header's GPIOs; 0 and 1 belong to the HAT ID EEPROM.
const FIRST_PIN: u8 = 2;
const LAST_PIN: u8 = 27;
/// TXD and RXD of the Pi's primary UART.
const UART_PINS: [(u8, &str); 2] = [(14, "TXD"), (15, "RXD")];
/// Device names of the Pi's own UART (not USB adapters).
const PI_UART_DEVICES: [&str; 5] = [
    "/dev/serial0",
    "/dev/ttyAMA0",
    "/dev/ttyS0",
    "/dev/ttyAMA10",
    "/dev/serial1",
];
const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);
const MAX_DEBOUNCE: Duration = Duration::from_millis(500);
const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(30);
const DEFAULT_LED_BLINK: (u32, Duration) = (1, Duration::from_millis(1500));

/// Where GPIO terminals get their pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpioBackend {
    /// The Pi's header, through rppal.
    Header,
    /// A simulated header driven over a Unix socket (tests and the demo).
    Simulated {
        /// The control socket.
        socket: PathBuf,
    },
}

impl Document<'_> {
    pub(super) fn gpio_backend(&self, raw: Option<&RawGpio>) -> Result<GpioBackend, ConfigError> {
        let Some(raw) = raw else {
            return Ok(GpioBackend::Header);
        };
        match (raw.backend.get_ref().as_str(), &raw.socket) {
            ("header", None) => Ok(GpioBackend::Header),
            ("header", Some(socket)) => Err(self.invalid(
                "gpio.socket",
                socket,
                "is only used with backend = \"simulated\"",
            )),
            ("simulated", Some(socket)) if !socket.get_ref().trim().is_empty() => {
                Ok(GpioBackend::Simulated {
                    socket: self.resolve_path(socket.get_ref()),
                })
            }
            ("simulated", _) => Err(self.invalid(
                "gpio.socket",
                &raw.backend,
                "is required with backend = \"simulated\" (the control socket's path)",
            )),
            (other, _) => Err(self.invalid(
                "gpio.backend",
                &raw.backend,
                format!("expected \"header\" or \"simulated\", found {other:?}"),
            )),
        }
    }

    pub(super) fn gpio_terminal(&self, raw: &RawTerminal) -> Result<SourceConfig, ConfigError> {
        self.unused("presses-per-minute", &raw.presses_per_minute, "gpio")?;
        self.unused("port", &raw.port, "gpio")?;
        self.unused("address", &raw.address, "gpio")?;
        let Some(pins) = &raw.pins else {
            return Err(self.invalid(
                "terminal.pins",
                &raw.kind,
                "is required for kind = \"gpio\": four BCM pin numbers, very unhappy to very happy, like pins = [5, 6, 13, 19]",
            ));
        };
        let buttons = self.button_pins(pins)?;
        let pull = match raw.pull.as_ref().map(|p| p.get_ref().as_str()) {
            None | Some("up") => Pull::Up,
            Some("down") => Pull::Down,
            Some("none") => Pull::None,
            Some(other) => {
                let value = raw.pull.as_ref().unwrap_or(&raw.kind);
                return Err(self.invalid(
                    "terminal.pull",
                    value,
                    format!("expected \"up\", \"down\" or \"none\", found {other:?}"),
                ));
            }
        };
        let active_high = match (raw.active.as_ref(), pull) {
            (None, Pull::Up) => false,
            (None, Pull::Down) => true,
            (None, Pull::None) => {
                return Err(self.invalid(
                    "terminal.active",
                    raw.pull.as_ref().unwrap_or(&raw.kind),
                    "is required with pull = \"none\": \"low\" or \"high\", the level a pressed button gives",
                ))
            }
            (Some(value), _) => match value.get_ref().as_str() {
                "low" => false,
                "high" => true,
                other => {
                    return Err(self.invalid(
                        "terminal.active",
                        value,
                        format!("expected \"low\" or \"high\", found {other:?}"),
                    ))
                }
            },
        };
        let debounce = match &raw.debounce {
            Some(value) => {
                let debounce = units::parse_duration(value.get_ref())
                    .map_err(|problem| self.invalid("terminal.debounce", value, problem))?;
                if debounce.is_zero() || debounce > MAX_DEBOUNCE {
                    return Err(self.invalid(
                        "terminal.debounce",
                        value,
                        "must be above 0 and at most 500ms (20ms suits most buttons)",
                    ));
                }
                debounce
            }
            None => DEFAULT_DEBOUNCE,
        };
        let stuck_after = match &raw.stuck_after {
            Some(value) => {
                let stuck = units::parse_duration(value.get_ref())
                    .map_err(|problem| self.invalid("terminal.stuck-after", value, problem))?;
                let shortest = debounce + CHORD_WINDOW + Duration::from_secs(1);
                if stuck < shortest {
                    return Err(self.invalid(
                        "terminal.stuck-after",
                        value,
                        format!("must be at least {shortest:?} (a real press must fit)"),
                    ));
                }
                stuck
            }
            None => DEFAULT_STUCK_AFTER,
        };
        let led = self.led(raw)?;
        Ok(SourceConfig::Gpio(GpioSettings {
            pins: buttons,
            pull,
            active_high,
            debounce,
            stuck_after,
            led,
        }))
    }

    fn button_pins(&self, pins: &Spanned<Vec<i64>>) -> Result<[u8; 4], ConfigError> {
        let values = pins.get_ref();
        let mut buttons = [0u8; 4];
        if values.len() != 4 {
            return Err(self.invalid(
                "terminal.pins",
                pins,
                format!(
                    "needs exactly four BCM pins (very unhappy, unhappy, happy, very happy), found {}",
                    values.len()
                ),
            ));
        }
        for (slot, value) in buttons.iter_mut().zip(values) {
            *slot = self.pin_number("terminal.pins", pins, *value)?;
        }
        Ok(buttons)
    }

    fn pin_number<T>(&self, key: &str, at: &Spanned<T>, value: i64) -> Result<u8, ConfigError> {
        match u8::try_from(value) {
            Ok(pin @ FIRST_PIN..=LAST_PIN) => Ok(pin),
            Ok(0 | 1) => Err(self.invalid(
                key,
                at,
                format!("BCM {value} belongs to the HAT ID EEPROM (ID_SD/ID_SC); use BCM {FIRST_PIN} to {LAST_PIN}"),
            )),
            _ => Err(self.invalid(
                key,
                at,
                format!("BCM {value} is not on the header: use BCM {FIRST_PIN} to {LAST_PIN} (BCM numbers, not physical pin numbers)"),
            )),
        }
    }

    fn led(&self, raw: &RawTerminal) -> Result<Option<LedSettings>, ConfigError> {
        let Some(pin) = &raw.led_pin else {
            self.unused("led-blink", &raw.led_blink, "gpio without led-pin")?;
            return Ok(None);
        };
        let pin = self.pin_number("terminal.led-pin", pin, *pin.get_ref())?;
        let (blinks, on) = match &raw.led_blink {
            Some(value) => parse_blink(value.get_ref())
                .map_err(|problem| self.invalid("terminal.led-blink", value, problem))?,
            None => DEFAULT_LED_BLINK,
        };
        Ok(Some(LedSettings { pin, blinks, on }))
    }

    /// No pin twice across GPIO terminals, and none on the Pi's UART when a serial terminal
    /// uses it.
    pub(super) fn check_gpio_pins(
        &self,
        raw_terminals: &[Spanned<RawTerminal>],
        terminals: &[TerminalConfig],
    ) -> Result<(), ConfigError> {
        let mut uart_user: Option<(String, PathBuf)> = None;
        for terminal in terminals {
            if let SourceConfig::Serial { port, .. } = &terminal.source {
                let name = port.display().to_string();
                if PI_UART_DEVICES.contains(&name.as_str()) && uart_user.is_none() {
                    uart_user = Some((terminal.id.as_str().to_string(), port.clone()));
                }
            }
        }
        let mut owners: HashMap<u8, String> = HashMap::new();
        for (raw, terminal) in raw_terminals.iter().map(Spanned::get_ref).zip(terminals) {
            let SourceConfig::Gpio(settings) = &terminal.source else {
                continue;
            };
            let id = terminal.id.as_str();
            let led = settings.led.map(|led| (led.pin, "led-pin"));
            let used = settings.pins.iter().map(|&pin| (pin, "pins")).chain(led);
            for (pin, key) in used {
                let at = match key {
                    "led-pin" => raw.led_pin.as_ref().map(|p| p.span()),
                    _ => raw.pins.as_ref().map(|p| p.span()),
                }
                .unwrap_or(raw.kind.span());
                let located = Spanned::new(at, ());
                let full_key = format!("terminal.{key}");
                if let Some((uart_terminal, port)) = &uart_user {
                    if let Some((_, signal)) = UART_PINS.iter().find(|(p, _)| *p == pin) {
                        return Err(self.invalid(
                            &full_key,
                            &located,
                            format!("BCM {pin} is {signal} of the Pi's UART, which serial terminal {uart_terminal:?} uses on {}", port.display()),
                        ));
                    }
                }
                if let Some(owner) = owners.insert(pin, id.to_string()) {
                    let whose = if owner == id {
                        "this terminal".to_string()
                    } else {
                        format!("terminal {owner:?}")
                    };
                    return Err(self.invalid(
                        &full_key,
                        &located,
                        format!("BCM {pin} is used twice (also by {whose}); each pin serves one button or LED"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `"3x200ms"`: three flashes of 200 ms with 200 ms gaps; `"1s"`: one flash of a second.
fn parse_blink(text: &str) -> Result<(u32, Duration), String> {
    let (count, length) = match text.split_once('x') {
        Some((count, length)) => {
            let count: u32 = count
                .trim()
                .parse()
                .map_err(|_| format!("{text:?}: expected like \"1s\" or \"3x200ms\""))?;
            (count, length)
        }
        None => (1, text),
    };
    let on = units::parse_duration(length)?;
    if !(1..=10).contains(&count) {
        return Err(format!("{text:?}: 1 to 10 flashes"));
    }
    if on < Duration::from_millis(20) || on > Duration::from_secs(10) {
        return Err(format!("{text:?}: each flash must last 20ms to 10s"));
    }
    Ok((count, on))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const HEAD: &str = "gateway-id = \"gw\"\nsite = \"s\"\n";

    fn load(body: &str) -> Result<Config, String> {
        Config::from_toml(
            std::path::Path::new("/etc/votegate/votegate.toml"),
            &format!("{HEAD}{body}"),
        )
        .map_err(|err| err.to_string())
    }

    fn gpio_terminal(id: &str, extra: &str) -> String {
        format!("[[terminal]]\nid = \"{id}\"\nkind = \"gpio\"\n{extra}\n")
    }

    #[test]
    fn a_gpio_terminal_with_defaults() {
        let config = load(&gpio_terminal("door", "pins = [5, 6, 13, 19]")).expect("valid");
        let SourceConfig::Gpio(settings) = &config.terminals[0].source else {
            panic!("not gpio");
        };
        assert_eq!(settings.pins, [5, 6, 13, 19]);
        assert_eq!(settings.pull, Pull::Up);
        assert!(!settings.active_high, "pull-up buttons are active low");
        assert_eq!(settings.debounce, DEFAULT_DEBOUNCE);
        assert_eq!(settings.stuck_after, DEFAULT_STUCK_AFTER);
        assert_eq!(settings.led, None);
        assert_eq!(config.gpio, GpioBackend::Header);
    }

    #[test]
    fn every_key_is_read() {
        let body = gpio_terminal(
            "door",
            "pins = [5, 6, 13, 19]\npull = \"down\"\ndebounce = \"30ms\"\nstuck-after = \"1m\"\nled-pin = 26\nled-blink = \"3x200ms\"",
        ) + "[gpio]\nbackend = \"simulated\"\nsocket = \"gpio.sock\"\n";
        let config = load(&body).expect("valid");
        let SourceConfig::Gpio(settings) = &config.terminals[0].source else {
            panic!("not gpio");
        };
        assert!(settings.active_high, "pull-down buttons are active high");
        assert_eq!(settings.debounce, Duration::from_millis(30));
        assert_eq!(settings.stuck_after, Duration::from_secs(60));
        assert_eq!(
            settings.led,
            Some(LedSettings {
                pin: 26,
                blinks: 3,
                on: Duration::from_millis(200)
            })
        );
        assert_eq!(
            config.gpio,
            GpioBackend::Simulated {
                socket: PathBuf::from("/etc/votegate/gpio.sock")
            }
        );
    }

    #[test]
    fn invalid_gpio_settings_name_the_key_and_line() {
        let cases = [
            (gpio_terminal("a", "pins = [5, 6, 13]"), "line 6: key `terminal.pins`: needs exactly four"),
            (gpio_terminal("a", "pins = [5, 6, 13, 40]"), "line 6: key `terminal.pins`: BCM 40 is not on the header"),
            (gpio_terminal("a", "pins = [0, 6, 13, 19]"), "HAT ID EEPROM"),
            (gpio_terminal("a", "pins = [5, 6, 13, 5]"), "key `terminal.pins`: BCM 5 is used twice (also by this terminal)"),
            (gpio_terminal("a", "pins = [5, 6, 13, 19]\nled-pin = 13"), "line 7: key `terminal.led-pin`: BCM 13 is used twice"),
            (gpio_terminal("a", "pins = [5, 6, 13, 19]") + &gpio_terminal("b", "pins = [20, 21, 22, 19]"), "line 10: key `terminal.pins`: BCM 19 is used twice (also by terminal \"a\")"),
            (gpio_terminal("a", "pins = [5, 6, 13, 19]\npull = \"none\""), "key `terminal.active`: is required with pull = \"none\""),
            (gpio_terminal("a", "pins = [5, 6, 13, 19]\npull = \"sideways\""), "key `terminal.pull`: expected \"up\", \"down\" or \"none\""),
            (gpio_terminal("a", "pins = [5, 6, 13, 19]\ndebounce = \"2s\""), "key `terminal.debounce`: must be above 0 and at most 500ms"),
            (gpio_terminal("a", "pins = [5, 6, 13, 19]\nstuck-after = \"100ms\""), "key `terminal.stuck-after`: must be at least"),
            (gpio_terminal("a", "pins = [5, 6, 13, 19]\nled-blink = \"1s\""), "key `terminal.led-blink`: is not used by kind = \"gpio without led-pin\""),
            (gpio_terminal("a", "pins = [5, 6, 13, 19]\nport = \"/dev/ttyUSB0\""), "key `terminal.port`: is not used by kind = \"gpio\""),
            (gpio_terminal("a", ""), "key `terminal.pins`: is required for kind = \"gpio\""),
            (
                "[[terminal]]\nid = \"s\"\nkind = \"serial\"\nport = \"/dev/serial0\"\n".to_string()
                    + &gpio_terminal("a", "pins = [5, 6, 14, 19]"),
                "key `terminal.pins`: BCM 14 is TXD of the Pi's UART, which serial terminal \"s\" uses on /dev/serial0",
            ),
            (
                "[[terminal]]\nid = \"s\"\nkind = \"simulated\"\npresses-per-minute = 1.0\npins = [1, 2, 3, 4]\n".to_string(),
                "key `terminal.pins`: is not used by kind = \"simulated\"",
            ),
            (gpio_terminal("a", "pins = [5, 6, 13, 19]") + "[gpio]\nbackend = \"simulated\"\n", "key `gpio.socket`: is required"),
            (gpio_terminal("a", "pins = [5, 6, 13, 19]") + "[gpio]\nbackend = \"wires\"\n", "key `gpio.backend`: expected \"header\" or \"simulated\""),
        ];
        for (body, expected) in cases {
            let err = load(&body).expect_err(&body);
            assert!(
                err.contains(expected),
                "for\n{body}\nexpected {expected:?} in\n{err}"
            );
        }
        // A USB adapter does not take the UART pins.
        let usb = "[[terminal]]\nid = \"s\"\nkind = \"serial\"\nport = \"/dev/ttyUSB0\"\n"
            .to_string()
            + &gpio_terminal("a", "pins = [5, 6, 14, 15]");
        load(&usb).expect("valid");
    }

    #[test]
    fn blink_patterns() {
        assert_eq!(parse_blink("1s"), Ok((1, Duration::from_secs(1))));
        assert_eq!(parse_blink("3x200ms"), Ok((3, Duration::from_millis(200))));
        assert!(parse_blink("0x200ms").is_err());
        assert!(parse_blink("x").is_err());
        assert!(parse_blink("2x5ms").is_err());
    }
}
