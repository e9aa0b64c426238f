//! `votegate simulate`: plays one or more serial terminals per hardware/PROTOCOL.md, for testing
//! wiring and for tests. Prints one JSON line per acknowledged vote:
//! `{"terminal":"entrance","term_seq":12,"button":3}`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::UsageError;
use crate::logging;
use crate::sources::serial::emulator::{self, Answered, Simulation};
use crate::sources::serial::frame::MAX_BUS_ADDRESS;

/// The command's options.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The serial port the simulated terminals are attached to.
    #[arg(long, value_name = "PATH")]
    pub serial: PathBuf,
    /// Line speed (8N1).
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// A terminal to play: `LABEL` for one point-to-point terminal, or `LABEL@ADDRESS` (repeat
    /// for each) for terminals on an RS-485 bus. Default: one point-to-point terminal `sim`.
    #[arg(long = "terminal", value_name = "LABEL[@ADDRESS]")]
    pub terminals: Vec<String>,
    /// Random presses per minute, per terminal.
    #[arg(long, value_name = "N")]
    pub rate: Option<f64>,
    /// Read presses from stdin, one `BUTTON` or `LABEL BUTTON` per line (any number 0–255, so
    /// invalid buttons can be tried).
    #[arg(long)]
    pub stdin: bool,
    /// Stop after this many votes were answered.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// The first term_seq of each terminal (a real terminal continues from its flash).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub first_term_seq: u32,
    /// Point-to-point retransmission interval (the protocol says 1000).
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub retransmit_ms: u64,
    /// Point-to-point status interval (the protocol says 60).
    #[arg(long, default_value_t = 60, value_name = "S")]
    pub status_interval_s: u64,
}

/// Runs the simulation.
pub fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let simulation = plan(&args)?;
    logging::init(log::LevelFilter::Warn);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut out = std::io::stdout().lock();
    let answered = runtime.block_on(emulator::simulate(&simulation, |answer| match answer {
        Answered::Acked {
            terminal,
            term_seq,
            button,
        } => {
            let line = serde_json::json!({"terminal": terminal, "term_seq": term_seq, "button": button});
            // A closed stdout must not stop the terminals: the gateway still gets its votes.
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        Answered::Refused {
            terminal,
            term_seq,
            button,
        } => eprintln!("votegate simulate: {terminal} vote {term_seq} with button {button} was refused by the gateway"),
    }))?;
    eprintln!("votegate simulate: {answered} votes answered");
    Ok(ExitCode::SUCCESS)
}

fn plan(args: &SimulateArgs) -> Result<Simulation, UsageError> {
    let terminals = parse_terminals(&args.terminals)?;
    if args.rate.is_none() && !args.stdin {
        return Err(UsageError(
            "give --rate N (random presses) or --stdin (presses typed as button numbers)".into(),
        ));
    }
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate <= 60_000.0) {
            return Err(UsageError(format!(
                "--rate must be above 0 and at most 60000, not {rate}"
            )));
        }
    }
    Ok(Simulation {
        path: args.serial.clone(),
        baud: args.baud,
        terminals,
        presses_per_minute: args.rate,
        stdin: args.stdin,
        count: args.count,
        first_term_seq: args.first_term_seq,
        retransmit: Duration::from_millis(args.retransmit_ms.max(1)),
        status_interval: Duration::from_secs(args.status_interval_s.max(1)),
    })
}

fn parse_terminals(specs: &[String]) -> Result<Vec<(String, u8)>, UsageError> {
    if specs.is_empty() {
        return Ok(vec![("sim".to_string(), 0)]);
    }
    let mut terminals = Vec::new();
    for spec in specs {
        let (label, address) = match spec.split_once('@') {
            Some((label, address)) => {
                let address = match address.parse::<u8>() {
                    Ok(a @ 1..=MAX_BUS_ADDRESS) => a,
                    _ => {
                        return Err(UsageError(format!(
                            "--terminal {spec}: the address must be 1 to {MAX_BUS_ADDRESS}"
                        )))
                    }
                };
                (label, address)
            }
            None => (spec.as_str(), 0),
        };
        if label.is_empty() {
            return Err(UsageError(format!("--terminal {spec}: the label is empty")));
        }
        terminals.push((label.to_string(), address));
    }
    let point = terminals.iter().filter(|(_, a)| *a == 0).count();
    if point > 0 && terminals.len() > 1 {
        return Err(UsageError(
            "several terminals share a port only on a bus: give each an address, like --terminal gate-1@1 --terminal gate-2@2".into(),
        ));
    }
    let mut addresses: Vec<u8> = terminals.iter().map(|(_, a)| *a).collect();
    addresses.sort_unstable();
    if addresses.windows(2).any(|w| w[0] == w[1]) {
        return Err(UsageError("two --terminal options share an address".into()));
    }
    Ok(terminals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_specs_are_point_or_bus_never_both() {
        assert_eq!(parse_terminals(&[]).ok(), Some(vec![("sim".into(), 0)]));
        assert_eq!(
            parse_terminals(&["door".into()]).ok(),
            Some(vec![("door".into(), 0)])
        );
        assert_eq!(
            parse_terminals(&["a@1".into(), "b@2".into()]).ok(),
            Some(vec![("a".into(), 1), ("b".into(), 2)])
        );
        assert!(parse_terminals(&["a".into(), "b@2".into()]).is_err());
        assert!(parse_terminals(&["a@1".into(), "b@1".into()]).is_err());
        assert!(parse_terminals(&["a@0".into()]).is_err());
        assert!(parse_terminals(&["a@248".into()]).is_err());
    }
}
