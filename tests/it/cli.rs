//! The `votegate` binary, black box: exit codes, error sentences, `run` stopping cleanly on a
//! signal with its votes durable, and the `check` report.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use votegate::clock::kernel_sync_state;
use votegate::journal::{Journal, Limits};

use crate::harness::{time_scale, votegate_command, write_file, RunningChild};

fn config_text(data_dir: &Path) -> String {
    format!(
        r#"gateway-id = "gw-test"
site = "test-store"
data-dir = "{}"
time-zone = "UTC"
listen = "127.0.0.1:0"

[filter]
min-interval = "0s"

[[terminal]]
id = "left"
kind = "simulated"
presses-per-minute = 1200

[[terminal]]
id = "right"
kind = "simulated"
presses-per-minute = 1200
"#,
        data_dir.display()
    )
}

fn votegate(args: &[&str]) -> Output {
    votegate_command()
        .args(args)
        .output()
        .expect("votegate runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stop_with(signal: i32) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("journal");
    let config = write_file(dir.path(), "votegate.toml", &config_text(&data_dir));
    let child = votegate_command()
        .args(["run", "--config", config.to_str().expect("utf-8 path")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("votegate run starts");
    let pid = child.id() as i32;
    let mut running = RunningChild::new(child);
    std::thread::sleep(Duration::from_millis(1500) * u32::try_from(time_scale()).unwrap_or(1));
    assert!(!running.has_exited(), "votegate run exited early");

    let stopping = Instant::now();
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let (status, log) = running.wait(Duration::from_secs(5));
    let took = stopping.elapsed();
    let status = status.unwrap_or_else(|| panic!("no exit within 5 s of signal {signal}:\n{log}"));
    assert!(status.success(), "exit status {status:?}:\n{log}");
    assert!(log.contains("journal flushed, votegate stopped"), "{log}");
    eprintln!("signal {signal}: stopped in {took:?}");

    let mut journal = Journal::open(&data_dir, Limits::default()).expect("journal reopens");
    let votes = journal.read_after(0, usize::MAX).expect("read");
    assert!(
        votes.len() >= 10,
        "only {} votes journaled in 1.5 s:\n{log}",
        votes.len()
    );
    for terminal in ["left", "right"] {
        assert!(
            votes.iter().any(|v| v.terminal.as_str() == terminal),
            "no vote from {terminal}"
        );
    }
    assert!(votes.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[test]
fn run_flushes_the_journal_and_exits_0_within_5_s_of_sigterm() {
    stop_with(libc::SIGTERM);
}

#[test]
fn run_stops_the_same_way_on_sigint() {
    stop_with(libc::SIGINT);
}

#[test]
fn a_bad_config_exits_2_with_one_sentence_naming_file_line_and_key() {
    for command in ["run", "check"] {
        let output = votegate(&[command, "--config", "tests/data/bad-when-full.toml"]);
        assert_eq!(output.status.code(), Some(2), "{command}");
        assert_eq!(
            stderr(&output),
            "votegate: tests/data/bad-when-full.toml, line 7: key `journal.when-full`: expected \"drop-oldest\" or \"reject-new\", found \"drop-newest\"\n"
        );
    }
    let output = votegate(&["run", "--config", "/nonexistent/votegate.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output),
        "votegate: cannot read config file /nonexistent/votegate.toml: No such file or directory (os error 2)\n"
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(votegate(&[]).status.code(), Some(2));
    assert_eq!(votegate(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(votegate(&["run", "--confg", "x"]).status.code(), Some(2));
    let help = votegate(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("run") && text.contains("check"), "{text}");
}

#[test]
fn check_reports_a_line_per_part_and_fails_only_on_what_is_wrong() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("journal");
    let config = write_file(dir.path(), "votegate.toml", &config_text(&data_dir));
    let output = votegate(&["check", "--config", config.to_str().expect("utf-8")]);
    let report = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = report.lines().collect();
    assert!(lines[0].starts_with("ok    config     "), "{report}");
    assert!(
        lines[0].contains("left (simulated), right (simulated)"),
        "{report}"
    );
    assert!(
        lines[1].starts_with("ok    data-dir   ")
            && lines[1].contains("writable")
            && lines[1].contains("may grow to 290.1 MiB (max-disk-size 256 MiB, 2 terminals)"),
        "{report}"
    );
    assert!(
        lines[2].starts_with("ok    listen     127.0.0.1:0 is free to bind"),
        "{report}"
    );
    // The clock line follows the kernel's own answer on this machine.
    let synced = kernel_sync_state().synced;
    let clock = if synced { "ok    clock" } else { "FAIL  clock" };
    assert!(
        lines[3].starts_with(clock),
        "kernel synced={synced}:\n{report}"
    );
    assert_eq!(
        output.status.code(),
        Some(if synced { 0 } else { 1 }),
        "{report}"
    );
    assert!(!data_dir.exists(), "check created the data dir");
    std::fs::create_dir(&data_dir).expect("create");
    let output = votegate(&["check", "--config", config.to_str().expect("utf-8")]);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains(&format!(
            "ok    data-dir   {}: writable, ",
            data_dir.display()
        )),
        "{report}"
    );
    assert_eq!(
        std::fs::read_dir(&data_dir).expect("dir").count(),
        0,
        "probe file left behind"
    );
}

/// Bytes free for an unprivileged user on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).expect("path");
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
    stat.f_bavail as u64 * stat.f_frsize as u64
}

#[test]
fn check_fails_when_the_journal_could_outgrow_the_free_space() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("journal");
    // A bound the disk holds, but not the folder around it (1.1 × the bound + 8 MiB).
    let bound = free_bytes(dir.path()) / 100 * 95;
    let text = format!(
        "{}\n[journal]\nmax-disk-size = {bound}\n",
        config_text(&data_dir)
    );
    let config = write_file(dir.path(), "votegate.toml", &text);
    let output = votegate(&["check", "--config", config.to_str().expect("utf-8")]);
    let report = String::from_utf8_lossy(&output.stdout);
    let line = report.lines().nth(1).unwrap_or_default();
    assert!(
        line.starts_with("FAIL  data-dir   ")
            && line.contains("but the journal's folder may grow to")
            && line.contains("and 2 terminals"),
        "{report}"
    );
    assert_eq!(output.status.code(), Some(1), "{report}");
}

#[test]
fn check_fails_on_an_unusable_data_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_file(dir.path(), "journal", "a file, not a folder");
    let config = write_file(dir.path(), "votegate.toml", &config_text(&file));
    let output = votegate(&["check", "--config", config.to_str().expect("utf-8")]);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains(&format!(
            "FAIL  data-dir   {} is not a folder",
            file.display()
        )),
        "{report}"
    );
    assert_eq!(output.status.code(), Some(1), "{report}");
}

#[test]
fn check_probes_every_serial_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pty = crate::harness::pty::Pty::open().expect("pty");
    let config = format!(
        r#"gateway-id = "gw-test"
site = "test-store"
data-dir = "{}"
listen = "127.0.0.1:0"

[[terminal]]
id = "entrance"
kind = "serial"
port = "{}"

[[terminal]]
id = "exit"
kind = "serial"
port = "/dev/serial/by-id/usb-not-plugged-in"
"#,
        dir.path().join("journal").display(),
        pty.slave.display()
    );
    let config = write_file(dir.path(), "votegate.toml", &config);
    let output = votegate(&["check", "--config", config.to_str().expect("utf-8")]);
    let report = String::from_utf8_lossy(&output.stdout);
    let serial: Vec<&str> = report.lines().filter(|l| l.contains(" serial ")).collect();
    assert_eq!(serial.len(), 2, "{report}");
    assert_eq!(
        serial[0],
        format!(
            "ok    serial     {}: opens at 115200 baud (point mode: entrance)",
            pty.slave.display()
        )
    );
    assert_eq!(
        serial[1],
        "FAIL  serial     /dev/serial/by-id/usb-not-plugged-in does not exist (is the adapter plugged in? see `ls -l /dev/serial/by-id/`)"
    );
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn status_says_when_no_daemon_answers() {
    // A port that is certainly closed: bind it, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let output = votegate(&["status", "--url", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!(
            "votegate: cannot reach votegate at http://127.0.0.1:{port} (is it running?"
        )),
        "{message}"
    );
    assert_eq!(
        votegate(&["status", "--url", "https://x"]).status.code(),
        Some(2)
    );
}
