//! The dependency rule of `src/lib.rs`, checked by reading the sources: each outside crate with
//! a trap (see DESIGN.md) is imported in exactly one file, pure modules do no I/O, and only the
//! daemon and the CLI wire the pipeline together.

use std::path::{Path, PathBuf};

use crate::harness::repo_root;

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// `(path relative to src/, code without comment lines)` for every source file.
fn sources() -> Vec<(String, String)> {
    let src = repo_root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable");
            let code: Vec<&str> = text
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect();
            let name = path
                .strip_prefix(&src)
                .expect("inside src")
                .to_string_lossy()
                .into_owned();
            (name, code.join("\n"))
        })
        .collect()
}

fn files_mentioning(needle: &str) -> Vec<String> {
    let mut found: Vec<String> = sources()
        .into_iter()
        .filter(|(_, code)| code.contains(needle))
        .map(|(name, _)| name)
        .collect();
    found.sort();
    found
}

#[test]
fn sled_is_imported_only_by_the_journal_store() {
    assert_eq!(files_mentioning("sled::"), ["journal/store.rs"]);
}

#[test]
fn tokio_serial_is_imported_only_by_the_port_opener() {
    assert_eq!(files_mentioning("tokio_serial"), ["sources/serial/port.rs"]);
}

#[test]
fn rumqttc_and_rustls_are_imported_only_by_the_uplink_files() {
    assert_eq!(files_mentioning("rumqttc"), ["uplink/mqtt.rs"]);
    // files.rs checks the key files offline, as the connection will load them.
    assert_eq!(
        files_mentioning("rustls"),
        ["uplink/files.rs", "uplink/mqtt.rs"]
    );
    assert_eq!(files_mentioning("x509_parser"), ["uplink/files.rs"]);
}

#[test]
fn tokio_postgres_is_imported_only_by_the_ingest_store() {
    assert_eq!(files_mentioning("tokio_postgres"), ["ingest/store.rs"]);
}

#[test]
fn axum_and_hyper_stay_in_the_display() {
    // The cloud ingest's /metrics is the one HTTP server outside the gateway's display.
    for file in files_mentioning("axum") {
        assert!(
            file.starts_with("display/") || file == "ingest/metrics.rs",
            "{file} uses axum"
        );
    }
    assert_eq!(files_mentioning("hyper"), ["display/server.rs"]);
}

#[test]
fn anyhow_stays_at_the_edge() {
    for file in files_mentioning("anyhow") {
        assert!(
            file == "main.rs" || file.starts_with("cli/"),
            "{file} uses anyhow"
        );
    }
}

#[test]
fn pure_modules_do_no_io() {
    let pure = [
        "model.rs",
        "alerts/mod.rs",
        "journal/record.rs",
        "journal/dedup.rs",
        "journal/filter.rs",
        "journal/block.rs",
        "journal/codec.rs",
        "journal/counts.rs",
        "journal/drops.rs",
        "config/units.rs",
        "labels.rs",
        "tallies/mod.rs",
        "uplink/payload.rs",
        "uplink/batch.rs",
        "uplink/inflight.rs",
        "uplink/ratelimit.rs",
        "ingest/acks.rs",
        "ingest/fleet.rs",
        "ingest/ledger.rs",
        "ingest/report.rs",
    ];
    let io = [
        "std::fs",
        "std::net",
        "tokio",
        "std::process",
        "File::",
        "libc::",
    ];
    let sources = sources();
    for name in pure {
        assert!(
            sources.iter().any(|(n, _)| n == name),
            "{name} is listed as pure but does not exist"
        );
    }
    for (name, code) in sources {
        if pure.contains(&name.as_str()) {
            for needle in io {
                assert!(
                    !code.contains(needle),
                    "{name} is meant to be pure but uses {needle}"
                );
            }
        }
    }
}

#[test]
fn only_daemon_and_cli_wire_the_pipeline() {
    for (name, code) in sources() {
        let wiring = name.starts_with("daemon/")
            || name.starts_with("cli/")
            || name == "lib.rs"
            || name == "main.rs";
        if !wiring {
            assert!(
                !code.contains("crate::daemon"),
                "{name} reaches into the daemon"
            );
        }
        if name.starts_with("journal/") {
            assert!(
                !code.contains("crate::sources"),
                "{name}: the journal must not know its sources"
            );
        }
    }
}
