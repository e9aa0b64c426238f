//! A journal written by the release before blocks (format 1, one sled key per vote) opens and is
//! converted: every buffered vote, the counters, the duplicate window and the minute counts are
//! kept, and the old files are removed.
//!
//! The fixture `tests/data/journal-v1/folder.tar.gz` is a data folder written by votegate at
//! commit f27c829 (through `Journal::append`): 600 presses of three terminals ("entrance" and
//! "lane-7" with term_seqs, "door" without) 17 s apart, a few filtered and unsynchronised, with
//! `max-disk-size` 40,000 bytes and drop-oldest (so 396 were dropped), and an acknowledgement
//! after the 400th. `expected.json` holds what that release read back from it: its counters, the
//! buffered votes, the minute counts and every `(terminal, term_seq) → seq` it accepted.

use std::path::Path;

use serde_json::Value;
use votegate::journal::{Journal, Limits, Outcome};
use votegate::model::{BootId, Button, Press, PressTime, TerminalId};

use crate::harness::repo_root;

fn unpack(into: &Path) {
    let archive = repo_root().join("tests/data/journal-v1/folder.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(into)
        .status()
        .expect("run tar");
    assert!(
        status.success(),
        "tar could not unpack {}",
        archive.display()
    );
}

fn expected() -> Value {
    let text = std::fs::read_to_string(repo_root().join("tests/data/journal-v1/expected.json"))
        .expect("expected.json");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Checks the converted journal against what format 1 read back.
fn check_converted(dir: &Path) {
    let expected = expected();
    let mut journal = Journal::open(dir, Limits::default()).expect("the old journal opens");
    let stats = journal.stats();
    assert_eq!(
        stats.next_seq,
        expected["next_seq"].as_u64().expect("next_seq")
    );
    assert_eq!(
        stats.dropped,
        expected["dropped"].as_u64().expect("dropped")
    );
    assert_eq!(stats.depth, expected["depth"].as_u64().expect("depth"));
    assert_eq!(stats.oldest_seq, expected["oldest_seq"].as_u64());

    let votes = journal.read_after(0, usize::MAX).expect("read");
    let old_votes = expected["votes"].as_array().expect("votes");
    assert_eq!(votes.len(), old_votes.len());
    for (vote, old) in votes.iter().zip(old_votes) {
        assert_eq!(vote.seq, old["seq"].as_u64().expect("seq"));
        assert_eq!(
            vote.terminal.as_str(),
            old["terminal"].as_str().expect("terminal")
        );
        assert_eq!(
            u64::from(vote.button.number()),
            old["button"].as_u64().expect("button")
        );
        assert_eq!(vote.ts_ms, old["ts_ms"].as_u64().expect("ts"));
        assert_eq!(
            vote.clock_synced,
            old["clock_synced"].as_bool().expect("synced")
        );
        assert_eq!(vote.filtered, old["filtered"].as_bool().expect("filtered"));
        assert_eq!(vote.term_seq, old["term_seq"].as_u64());
        assert_eq!(
            u64::from(vote.boot_id.0[0]),
            old["boot_id"].as_u64().expect("boot")
        );
        assert_eq!(vote.mono_ms, old["mono_ms"].as_u64().expect("mono"));
    }

    let minutes = journal.counts_for_tallies(0).expect("counts").minutes;
    let old_minutes = expected["minutes"].as_array().expect("minutes");
    assert_eq!(minutes.len(), old_minutes.len());
    for ((minute, terminal, tally), old) in minutes.iter().zip(old_minutes) {
        assert_eq!(u64::from(*minute), old[0].as_u64().expect("minute"));
        assert_eq!(terminal.as_str(), old[1].as_str().expect("terminal"));
        let counted: Vec<u64> = tally.counted.iter().map(|c| u64::from(*c)).collect();
        let old_counted: Vec<u64> = old[2]
            .as_array()
            .expect("counted")
            .iter()
            .map(|c| c.as_u64().expect("count"))
            .collect();
        assert_eq!(counted, old_counted);
        assert_eq!(
            u64::from(tally.filtered),
            old[3].as_u64().expect("filtered")
        );
    }

    // Every (terminal, term_seq) the old release accepted is still a duplicate of its seq,
    // acknowledged and dropped votes included.
    for entry in expected["dedup"].as_array().expect("dedup") {
        let terminal = TerminalId::new(entry[0].as_str().expect("terminal")).expect("id");
        let term_seq = entry[1].as_u64().expect("term_seq");
        let seq = entry[2].as_u64().expect("seq");
        let press = Press {
            terminal,
            button: Button::Happy,
            term_seq: Some(term_seq),
            at: PressTime {
                ts_ms: 1_795_100_000_000,
                clock_synced: true,
                boot_id: BootId([9; 16]),
                mono_ms: 0,
            },
            filtered: false,
        };
        assert_eq!(
            journal.append(vec![press]).expect("append"),
            vec![Outcome::Duplicate(seq)]
        );
    }
    assert_eq!(
        journal.stats().next_seq,
        stats.next_seq,
        "a duplicate was stored"
    );
    drop(journal);
    // Only the new layout is left.
    assert_eq!(names(dir), ["CURRENT", "blocks", "gen-000001"]);
}

#[test]
fn a_journal_written_by_the_previous_format_is_converted() {
    let dir = tempfile::tempdir().expect("temp dir");
    unpack(dir.path());
    let journal_dir = dir.path().join("journal");
    assert!(
        journal_dir.join("db").is_file(),
        "the fixture is a format-1 journal"
    );
    check_converted(&journal_dir);
    // And opens again as it is.
    check_converted(&journal_dir);
}

#[test]
fn a_conversion_cut_short_is_done_again_or_finished() {
    // Cut before the pointer was written: a half-written generation beside the old files.
    let dir = tempfile::tempdir().expect("temp dir");
    unpack(dir.path());
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir(journal_dir.join("gen-000001")).expect("mkdir");
    std::fs::write(journal_dir.join("gen-000001/db"), b"half written").expect("write");
    check_converted(&journal_dir);

    // Cut after the pointer was written but before the old files were removed.
    let dir = tempfile::tempdir().expect("temp dir");
    unpack(dir.path());
    let journal_dir = dir.path().join("journal");
    let old_files = dir.path().join("old");
    std::fs::create_dir(&old_files).expect("mkdir");
    for name in ["conf", "db", "blobs"] {
        let copy = std::process::Command::new("cp")
            .args(["-a"])
            .arg(journal_dir.join(name))
            .arg(&old_files)
            .status()
            .expect("cp");
        assert!(copy.success());
    }
    check_converted(&journal_dir);
    for name in ["conf", "db", "blobs"] {
        let copy = std::process::Command::new("cp")
            .args(["-a"])
            .arg(old_files.join(name))
            .arg(&journal_dir)
            .status()
            .expect("cp");
        assert!(copy.success());
    }
    check_converted(&journal_dir);
}
