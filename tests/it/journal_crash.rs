//! Crash tests of the journal: SIGKILL at random moments, and power cuts on a filesystem that
//! forgets everything not fsynced. After each crash every vote the appender saw acknowledged must
//! be in the journal, no seq may be handed out twice, and retransmissions must stay deduplicated.

use std::path::Path;
use std::time::Duration;

use crate::harness::appender::{self, History, CHILD_CRASH_ENV, CHILD_DIR_ENV, CHILD_START_ENV};
use crate::harness::powercut_fs::PowerCutFs;
use crate::harness::{seed, spawn_test_child, time_scale, RunningChild};

const CHILD_TEST: &str = "journal_crash::appender_child";
const KILLS: usize = 60;
const POWER_CUTS: usize = 24;

/// With `VOTEGATE_TEST_APPENDER_DIR` set this is the appender process the crash tests kill; it
/// runs until killed. Run on its own, it appends a bounded number of presses in-process and checks
/// the report against the journal, the same way the crash tests do.
#[test]
fn appender_child() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        let starts = appender::parse_starts(&std::env::var(CHILD_START_ENV).unwrap_or_default());
        appender::run(Path::new(&dir), &starts, None, Box::new(std::io::stdout()));
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let report = SharedBuffer::default();
    appender::run(
        dir.path(),
        &Default::default(),
        Some(150),
        Box::new(report.clone()),
    );
    let mut history = History::default();
    let mut verified = history
        .absorb(&report.text())
        .expect("report is consistent");
    history
        .verify_journal(dir.path(), &mut verified)
        .expect("journal matches the report");
    assert_eq!(verified.appended, 600);
    assert!(
        verified.checked_present > 0 && verified.depth > 0,
        "{verified:?}"
    );
}

#[test]
fn acknowledged_votes_survive_sigkill_at_random_moments() {
    let mut rng = fastrand::Rng::with_seed(seed("sigkill"));
    let dir = tempfile::tempdir().expect("temp dir");
    let journal_dir = dir.path().join("journal");
    let mut history = History::default();
    let mut totals = (0, 0);
    let mut round = 0;
    // At least KILLS rounds, and more (up to 4 times as many) until the kills have also crossed
    // a compaction and a retransmission: where the kills land depends on the machine's speed
    // (under emulation, ten times slower, a fixed number of rounds sometimes missed them).
    while round < KILLS || (round < 4 * KILLS && (history.compactions() == 0 || totals.1 == 0)) {
        round += 1;
        let child = start_appender(&journal_dir, &history);
        // Sometimes before the journal is even open, mostly in the middle of appending.
        std::thread::sleep(Duration::from_millis(rng.u64(5..250) * time_scale()));
        let (report, stderr) = kill_expecting_death(child);
        let mut verified = history
            .absorb(&report)
            .unwrap_or_else(|e| panic!("round {round}: {e}\nchild stderr:\n{stderr}"));
        history
            .verify_journal(&journal_dir, &mut verified)
            .unwrap_or_else(|e| panic!("round {round}: {e}\nchild stderr:\n{stderr}"));
        totals.0 += verified.appended;
        totals.1 += verified.duplicates;
    }
    eprintln!(
        "{round} kills: {} votes acknowledged, {} retransmissions deduplicated, journal steps {:?}",
        totals.0,
        totals.1,
        history.steps()
    );
    // A floor that shows the test tested something, low enough for a loaded machine.
    assert!(totals.0 > KILLS * 4, "the appender barely ran: {totals:?}");
    assert!(totals.1 > 0, "no retransmission was tested");
    assert!(
        history.compactions() > 0,
        "no compaction ran between the kills"
    );
}

#[test]
fn acknowledged_votes_survive_power_cuts() {
    let mut rng = fastrand::Rng::with_seed(seed("power-cut"));
    let mount = tempfile::tempdir().expect("temp dir");
    let mut fs = PowerCutFs::mount(mount.path()).unwrap_or_else(|err| {
        panic!(
            "cannot mount the power-cut test filesystem on {}: {err}. It needs /dev/fuse and root \
             (or fusermount3: apt-get install fuse3); scripts/test installs fuse3.",
            mount.path().display()
        )
    });
    let journal_dir = mount.path().join("journal");
    let mut history = History::default();
    let mut lost_pages = 0;
    let mut appended = 0;
    let mut cut = 0;
    // At least POWER_CUTS cuts, and more (up to 4 times as many) until one has cut off unsynced
    // pages and a compaction ran between them (see the SIGKILL test).
    while cut < POWER_CUTS
        || (cut < 4 * POWER_CUTS && (history.compactions() == 0 || lost_pages == 0))
    {
        cut += 1;
        let child = start_appender(&journal_dir, &history);
        std::thread::sleep(Duration::from_millis(rng.u64(30..400) * time_scale()));
        let (report, stderr) = kill_expecting_death(child);
        // Half the cuts lose every unsynced page, half keep a random part of them.
        let keep = if cut % 2 == 0 { 0.0 } else { 0.5 };
        let cut_report = fs.cut(keep, &mut rng).expect("remount after the cut");
        lost_pages += cut_report.pages_lost;
        let mut verified = history
            .absorb(&report)
            .unwrap_or_else(|e| panic!("cut {cut}: {e}\nchild stderr:\n{stderr}"));
        history
            .verify_journal(&journal_dir, &mut verified)
            .unwrap_or_else(|e| panic!("cut {cut} ({cut_report:?}): {e}\nchild stderr:\n{stderr}"));
        appended += verified.appended;
    }
    let counters = fs.counters();
    eprintln!(
        "{cut} power cuts: {appended} votes acknowledged, {lost_pages} unsynced pages lost, {counters:?}, journal steps {:?}",
        history.steps()
    );
    assert!(
        history.compactions() > 0,
        "no compaction ran between the cuts"
    );
    assert!(
        appended > POWER_CUTS * 5,
        "the appender barely ran: {appended}"
    );
    assert!(
        lost_pages > 0,
        "no cut lost anything: the test did not test"
    );
}

/// Where the appender stops itself in [`acknowledged_votes_survive_a_power_cut_at_every_step`]:
/// each step of a commit, a checkpoint and a compaction, early and later in a run, and commits
/// made in a new generation before anything else syncs the data folder.
const CRASH_PLANS: [&str; 14] = [
    "LogRecordWritten:3",
    "BlocksWritten:1",
    "BlocksWritten:4",
    "CheckpointHalfway:1",
    "CheckpointWritten:2",
    "GenerationWritten:1",
    "PointerWritten:1",
    "PointerSwitched:1",
    "OldGenerationRemoved:1",
    "OldGenerationRemoved:1,LogRecordWritten:3",
    "CheckpointHalfway:7",
    "PointerWritten:3",
    "PointerSwitched:4",
    "OldGenerationRemoved:2,CheckpointWritten:1",
];

#[test]
fn acknowledged_votes_survive_a_power_cut_at_every_step() {
    let mut rng = fastrand::Rng::with_seed(seed("crash-steps"));
    let mount = tempfile::tempdir().expect("temp dir");
    let mut fs = PowerCutFs::mount(mount.path()).expect("mount the power-cut filesystem");
    let journal_dir = mount.path().join("journal");
    let mut history = History::default();
    let mut appended = 0;
    for (round, plan) in CRASH_PLANS
        .iter()
        .cycle()
        .take(2 * CRASH_PLANS.len())
        .enumerate()
    {
        let mut env = vec![
            (CHILD_DIR_ENV, journal_dir.display().to_string()),
            (
                CHILD_START_ENV,
                appender::format_starts(&history.restart_points()),
            ),
        ];
        env.push((CHILD_CRASH_ENV, plan.to_string()));
        let child = spawn_test_child(CHILD_TEST, &env);
        let (status, report, stderr) =
            child.wait_with_output(Duration::from_secs(60 * time_scale()));
        assert!(
            status.is_some() && stderr.contains("crashing at"),
            "round {round}: the appender did not stop at {plan}: {status:?}\n{stderr}"
        );
        // Every other round loses all unsynced pages, the others keep a random half.
        let keep = if round % 2 == 0 { 0.0 } else { 0.5 };
        let cut = fs.cut(keep, &mut rng).expect("remount after the cut");
        let mut verified = history
            .absorb(&report)
            .unwrap_or_else(|e| panic!("round {round} ({plan}): {e}\n{stderr}"));
        history
            .verify_journal(&journal_dir, &mut verified)
            .unwrap_or_else(|e| panic!("round {round} ({plan}, {cut:?}): {e}\n{stderr}"));
        appended += verified.appended;
    }
    eprintln!(
        "{} crashes at planned steps, each followed by a power cut: {appended} votes acknowledged",
        2 * CRASH_PLANS.len()
    );
}

fn start_appender(journal_dir: &Path, history: &History) -> RunningChild {
    spawn_test_child(
        CHILD_TEST,
        &[
            (CHILD_DIR_ENV, journal_dir.display().to_string()),
            (
                CHILD_START_ENV,
                appender::format_starts(&history.restart_points()),
            ),
        ],
    )
}

fn kill_expecting_death(mut child: RunningChild) -> (String, String) {
    let exited_early = child.has_exited();
    let (report, stderr) = child.kill();
    assert!(!exited_early, "the appender exited by itself:\n{stderr}");
    (report, stderr)
}

/// A `Write` that collects into a shared buffer.
#[derive(Clone, Default)]
struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("buffer")).into_owned()
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The power-cut filesystem itself: a cut forgets a rename, a new file and a deleted file that no
/// fsync of their folder made durable, and keeps those one did.
#[test]
fn the_power_cut_filesystem_forgets_unsynced_directory_changes() {
    let mut rng = fastrand::Rng::with_seed(1);
    let mount = tempfile::tempdir().expect("temp dir");
    let mut fs = PowerCutFs::mount(mount.path()).expect("mount the power-cut filesystem");
    let root = mount.path();
    let sync_dir = || {
        std::fs::File::open(root)
            .and_then(|d| d.sync_all())
            .expect("fsync folder")
    };
    let write_synced = |name: &str, text: &str| {
        let mut file = std::fs::File::create(root.join(name)).expect("create");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("write");
        file.sync_all().expect("fsync file");
    };
    write_synced("kept", "old");
    write_synced("deleted", "still here");
    sync_dir();
    // Not followed by an fsync of the folder: all three must be undone by the cut.
    write_synced("renamed.tmp", "new");
    std::fs::rename(root.join("renamed.tmp"), root.join("kept")).expect("rename");
    std::fs::remove_file(root.join("deleted")).expect("unlink");
    write_synced("created", "x");
    fs.cut(0.0, &mut rng).expect("cut");
    assert_eq!(
        std::fs::read_to_string(root.join("kept")).expect("kept"),
        "old"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("deleted")).expect("deleted"),
        "still here"
    );
    assert!(!root.join("created").exists() && !root.join("renamed.tmp").exists());
    // The same changes followed by an fsync of the folder survive.
    write_synced("renamed.tmp", "new");
    std::fs::rename(root.join("renamed.tmp"), root.join("kept")).expect("rename");
    std::fs::remove_file(root.join("deleted")).expect("unlink");
    sync_dir();
    fs.cut(0.0, &mut rng).expect("cut");
    assert_eq!(
        std::fs::read_to_string(root.join("kept")).expect("kept"),
        "new"
    );
    assert!(!root.join("deleted").exists());
}
