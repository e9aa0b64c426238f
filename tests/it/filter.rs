//! The anti-abuse filter is decided by the journal's single writer, after deduplication, and a
//! press is remembered as counted only once it is durable (issue 14, point 4): through the real
//! hand-off (`Intake::submit`) into a running journal.

use std::sync::Arc;
use std::time::Duration;

use votegate::clock::{Clock, FakeClock};
use votegate::journal::{self, Journal, JournalService, Limits, Outcome, Tuning, WhenFull};
use votegate::model::{Button, TerminalId};
use votegate::sources::{Intake, PressEvent};

const INTERVAL: Duration = Duration::from_secs(2);

fn start(limits: Limits) -> (tempfile::TempDir, JournalService, Arc<FakeClock>, Intake) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut journal = Journal::open(dir.path(), limits).expect("open");
    journal.set_filter(INTERVAL, Default::default());
    let service = journal::spawn(journal).expect("journal thread");
    let clock = Arc::new(FakeClock::new(1_795_000_000_000));
    let intake = Intake::new(service.handle(), clock.clone() as Arc<dyn Clock>);
    (dir, service, clock, intake)
}

fn press(terminal: &str, term_seq: u64) -> PressEvent {
    PressEvent {
        terminal: TerminalId::new(terminal).expect("id"),
        button: Button::Happy,
        term_seq: Some(term_seq),
        age_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_press_refused_by_a_full_journal_counts_when_it_is_retransmitted() {
    let limits = Limits {
        max_disk_bytes: 16 * 1024,
        when_full: WhenFull::RejectNew,
        tuning: Tuning {
            block_votes: 16,
            ..Tuning::default()
        },
        ..Limits::default()
    };
    let (_dir, service, clock, intake) = start(limits);
    // Another terminal fills the journal.
    let mut filler = 0;
    loop {
        filler += 1;
        clock.advance_ms(INTERVAL.as_millis() as u64);
        match intake
            .submit(press("entrance", filler))
            .await
            .expect("append")
        {
            Outcome::Accepted(_) => {}
            Outcome::Refused => break,
            other => panic!("unexpected {other:?}"),
        }
        assert!(filler < 100_000, "the journal never filled");
    }
    // The exit terminal's press meets the full journal: refused, so the terminal keeps it.
    assert_eq!(
        intake.submit(press("exit", 1)).await.expect("append"),
        Outcome::Refused
    );
    // The uplink delivers everything; the terminal retransmits 300 ms later.
    let last = service.stats().borrow().next_seq - 1;
    service.handle().ack_through(last).await.expect("ack");
    clock.advance_ms(300);
    match intake.submit(press("exit", 1)).await.expect("append") {
        Outcome::Accepted(vote) => assert!(
            !vote.filtered,
            "the refused press was remembered as counted: its retransmission is filtered"
        ),
        other => panic!("the retransmission was not stored: {other:?}"),
    }
    service.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmitted_duplicate_does_not_move_the_filters_clock() {
    let (_dir, service, clock, intake) = start(Limits::default());
    let first = intake.submit(press("exit", 1)).await.expect("append");
    assert!(matches!(first, Outcome::Accepted(ref v) if !v.filtered));
    // The ack was lost: the terminal sends the same vote again 2.5 s later.
    clock.advance_ms(2_500);
    assert_eq!(
        intake.submit(press("exit", 1)).await.expect("append"),
        Outcome::Duplicate(first.seq().expect("seq"))
    );
    // A new press 1 s after that: 3.5 s after the last counted press, it counts.
    clock.advance_ms(1_000);
    match intake.submit(press("exit", 2)).await.expect("append") {
        Outcome::Accepted(vote) => assert!(
            !vote.filtered,
            "the duplicate moved the filter's clock: a real press is filtered"
        ),
        other => panic!("unexpected {other:?}"),
    }
    // Hammering within the interval is still filtered.
    clock.advance_ms(500);
    match intake.submit(press("exit", 3)).await.expect("append") {
        Outcome::Accepted(vote) => assert!(vote.filtered, "a press 0.5 s after a counted one"),
        other => panic!("unexpected {other:?}"),
    }
    service.shutdown().await.expect("shutdown");
}
