//! The journal's storage: the only file that imports sled.
//!
//! sled 0.34's `flush()` ends with `sync_file_range`, which pushes the data to the device but
//! neither flushes the device's write cache (an SD card's) nor the file's metadata (sled issue
//! 1452). [`Store::make_durable`] therefore follows every flush with `fsync` of sled's log file
//! and of the folder (snapshots are written by rename). sled's own periodic flusher is turned off:
//! the journal decides when data must be durable, and nothing else writes in between.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A storage failure, as text: sled's error type stays inside this file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct StoreError {
    /// What failed, with the OS error where there is one.
    pub detail: String,
}

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> StoreError {
        StoreError {
            detail: err.to_string(),
        }
    }
}

impl StoreError {
    fn io(what: &str, path: &Path, err: std::io::Error) -> StoreError {
        StoreError {
            detail: format!("{what} {}: {err}", path.display()),
        }
    }
}

/// How long to wait for sled's file lock. A `Db` dropped by this process releases its lock only
/// when sled's background threads finish (sled issues 1234, 1289), so a reopen after a storage
/// error may briefly find it taken; a lock still held after this long belongs to another process.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Removes snapshots sled left half-written. sled 0.34 writes a snapshot to
/// `snap.<lsn>.generating`, fsyncs it and renames it; killed in between, it leaves that file, and
/// at the next open it takes it for the newest snapshot and fails with "Read corrupted data"
/// (sled issues #1527, #1533), which would leave the gateway unable to start. The complete
/// snapshot before it and the log are intact, so the leftover is only removed.
fn remove_unfinished_snapshots(dir: &Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(StoreError::io("cannot list", dir, err)),
    };
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let path = entry.path();
            log::warn!(
                "removing {}: a journal snapshot left unfinished by a crash",
                path.display()
            );
            std::fs::remove_file(&path)
                .map_err(|err| StoreError::io("cannot remove", &path, err))?;
            removed = true;
        }
    }
    if removed {
        sync_file(dir)?;
    }
    Ok(())
}

fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    remove_unfinished_snapshots(dir)?;
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .flush_every_ms(None)
        .mode(sled::Mode::LowSpace);
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            // sled reports a taken lock as ErrorKind::Other, recognisable only by its message.
            Err(sled::Error::Io(err)) if err.to_string().contains("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(StoreError {
                        detail: format!(
                            "the journal in {} is locked by another process: is another votegate running with this data-dir?",
                            dir.display()
                        ),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => {
                return Err(StoreError {
                    detail: format!("cannot open the journal in {}: {err}", dir.display()),
                })
            }
        }
    }
}

fn sync_file(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|err| StoreError::io("cannot fsync", path, err))
}

/// Most writes the journal puts in one sled batch. sled 0.34's memory and disk use explode with
/// larger batches that delete: measured with a sliding window of 1,000 live keys over 1,000,000
/// inserts, batches of 512 writes stay at 9 MiB RSS and 3 MiB on disk, batches of 768 writes grow
/// to 860 MiB RSS and 84 MiB on disk, batches of 1,536 to 5.5 GiB RSS (value size does not
/// matter). 256 keeps a wide margin. See BENCHMARKS.md § sled batch size.
pub const MAX_BATCH_OPS: usize = 256;

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Writes collected for one atomic apply.
#[derive(Default)]
pub struct WriteBatch {
    batch: sled::Batch,
    ops: usize,
}

impl WriteBatch {
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.batch.insert(key, value);
        self.ops += 1;
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: &[u8]) {
        self.batch.remove(key);
        self.ops += 1;
    }

    /// Number of writes collected.
    pub fn len(&self) -> usize {
        self.ops
    }

    /// Whether nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }
}

/// An open sled database plus the handles needed to fsync it.
pub struct Store {
    db: sled::Db,
    log_file: File,
    folder: File,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the database in `dir` with sled's page cache capped at `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|err| StoreError::io("cannot create", dir, err))?;
        let db = open_db(dir, cache_bytes)?;
        let log_path = dir.join("db");
        let log_file =
            File::open(&log_path).map_err(|err| StoreError::io("cannot open", &log_path, err))?;
        let folder = File::open(dir).map_err(|err| StoreError::io("cannot open", dir, err))?;
        // sled writes its `conf` file without fsync. It rewrites an empty one, but a torn one
        // would make the journal unopenable after a power cut. Once per open, so cheap. The
        // folder's own entry in its parent is made durable too.
        sync_file(&dir.join("conf"))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_file(parent)?;
        }
        let store = Store {
            db,
            log_file,
            folder,
            path: dir.to_path_buf(),
        };
        // A new database's files must survive a power cut too, not only their contents.
        store.make_durable()?;
        Ok(store)
    }

    /// Reads one key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key)?.map(|value| value.to_vec()))
    }

    /// Calls `visit` with each entry whose key starts with `prefix`, in key order, without
    /// collecting them.
    pub fn for_each_prefix<E: From<StoreError>>(
        &self,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for entry in self.db.scan_prefix(prefix) {
            let (key, value) = entry.map_err(StoreError::from)?;
            visit(&key, &value)?;
        }
        Ok(())
    }

    /// Up to `limit` entries with `start <= key`, keys starting with `prefix`, in key order.
    pub fn range_from(
        &self,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut entries = Vec::new();
        for entry in self.db.range(start..) {
            let (key, value) = entry?;
            if !key.starts_with(prefix) || entries.len() >= limit {
                break;
            }
            entries.push((key.to_vec(), value.to_vec()));
        }
        Ok(entries)
    }

    /// The last entry whose key starts with `prefix`.
    pub fn last_with_prefix(&self, prefix: &[u8]) -> Result<Option<Entry>, StoreError> {
        match self.db.scan_prefix(prefix).next_back() {
            Some(entry) => {
                let (key, value) = entry?;
                Ok(Some((key.to_vec(), value.to_vec())))
            }
            None => Ok(None),
        }
    }

    /// Applies all writes atomically: after a crash, either all or none of them are there.
    /// Not durable until [`Store::make_durable`].
    pub fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        debug_assert!(
            batch.len() <= MAX_BATCH_OPS,
            "sled batch of {} writes",
            batch.len()
        );
        self.db.apply_batch(batch.batch)?;
        Ok(())
    }

    /// Makes everything applied so far survive a crash and a power cut.
    pub fn make_durable(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.log_file
            .sync_data()
            .map_err(|err| StoreError::io("cannot fsync", &self.path.join("db"), err))?;
        self.folder
            .sync_all()
            .map_err(|err| StoreError::io("cannot fsync", &self.path, err))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_waits_for_a_lock_released_meanwhile() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = Store::open(dir.path(), 1 << 20).expect("first open");
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(first);
        });
        let started = Instant::now();
        let second = Store::open(dir.path(), 1 << 20);
        releaser.join().expect("thread");
        assert!(second.is_ok(), "{:?}", second.err());
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "did not wait for the lock"
        );
    }

    #[test]
    fn a_snapshot_left_half_written_by_a_crash_does_not_brick_the_journal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        store
            .db
            .insert(b"vote", b"kept".as_slice())
            .expect("insert");
        store.make_durable().expect("durable");
        drop(store);
        // What a kill during sled's snapshot leaves: a `.generating` file with a higher lsn.
        let leftover = dir.path().join("snap.00000000FFFFFFFF.generating");
        std::fs::write(&leftover, [0u8; 64]).expect("leftover");
        // sled alone cannot open it (sled #1527): the case this guards against.
        let plain = sled::Config::new().path(dir.path()).open();
        assert!(
            plain.is_err(),
            "sled opened a journal with a half-written snapshot"
        );
        drop(plain);
        let store = Store::open(dir.path(), 1 << 20).expect("reopen after the crash");
        assert_eq!(store.get(b"vote").expect("get"), Some(b"kept".to_vec()));
        assert!(!leftover.exists());
    }

    #[test]
    fn a_lock_held_for_good_is_reported_as_another_process() {
        let dir = tempfile::tempdir().expect("temp dir");
        let _first = Store::open(dir.path(), 1 << 20).expect("first open");
        let err = Store::open(dir.path(), 1 << 20)
            .err()
            .expect("second open fails");
        assert!(err.detail.contains("is locked by another process"), "{err}");
    }
}
