//! `votegate simulate`: plays one or more serial terminals per hardware/PROTOCOL.md, for testing
//! wiring and for tests. Prints one JSON line per acknowledged vote:
//! `{"terminal":"entrance","term_seq":12,"button":3}`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

pub use super::args::SimulateArgs;
use super::UsageError;
use crate::logging;
use crate::sources::serial::emulator::{self, Answered, Simulation};
use crate::sources::serial::frame::MAX_BUS_ADDRESS;

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
