//! The synthetic votes the tests and benchmarks put in a journal or on the wire: one terminal's
//! presses, buttons in turn, with distinct times and `term_seq`s. Also included on its own by
//! `benches/journal.rs`.

use votegate::model::{BootId, Button, Press, PressTime, TerminalId};

/// The `n`th press of `terminal` (button `n % 4`, term_seq `n`, synced clock).
pub fn press(terminal: &TerminalId, n: u64) -> Press {
    Press {
        terminal: terminal.clone(),
        button: Button::ALL[(n % 4) as usize],
        term_seq: Some(n),
        at: PressTime {
            ts_ms: 1_795_000_000_000 + n,
            clock_synced: true,
            boot_id: BootId([1; 16]),
            mono_ms: n,
        },
        filtered: false,
    }
}

/// Presses 1…`count` of the terminal "entrance".
pub fn presses(count: u64) -> impl Iterator<Item = Press> {
    let terminal = TerminalId::new("entrance").expect("terminal id");
    (1..=count).map(move |n| press(&terminal, n))
}
