//! The data folder's layout: which generation is live, and the crash-safe switch to another.
//!
//! ```text
//! data-dir/
//!   CURRENT          "votegate journal 2\ngeneration 7\n": names the live generation
//!   gen-000007/      its sled database (conf, db, snap.*, blobs/) and write-ahead log (wal)
//! ```
//! [`switch`] replaces `CURRENT` by writing `CURRENT.tmp`, fsyncing it, renaming it over
//! `CURRENT` and fsyncing the folder: after a crash, `CURRENT` names either the old generation
//! or the new one, and both are complete until the switch is durable. Whatever else is found at
//! open (a generation being written when the power went, the temporary pointer, the files of a
//! format-1 journal already converted) is removed by [`tidy`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::store::StoreError;

/// The pointer file's name.
pub const POINTER: &str = "CURRENT";
const POINTER_TMP: &str = "CURRENT.tmp";
const POINTER_HEADER: &str = "votegate journal 2";
const GENERATION_PREFIX: &str = "gen-";
/// The files and folders sled keeps in its folder: a format-1 journal's, in the data folder.
const LEGACY_FILES: [&str; 3] = ["conf", "db", "blobs"];

/// What the pointer file says, or why it cannot be read.
#[derive(Debug, PartialEq, Eq)]
pub enum Pointer {
    /// No pointer: a new data folder, or one of format 1.
    Missing,
    /// The live generation.
    Generation(u64),
    /// The file exists but does not say which (its text, for the error).
    Unreadable(String),
}

fn io(what: &str, path: &Path, err: std::io::Error) -> StoreError {
    StoreError {
        detail: format!("{what} {}: {err}", path.display()),
    }
}

/// The folder of generation `number`.
pub fn generation_dir(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{GENERATION_PREFIX}{number:06}"))
}

fn parse_generation_dir(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(GENERATION_PREFIX)?;
    (digits.len() >= 6 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Reads the pointer file.
pub fn read_pointer(dir: &Path) -> Result<Pointer, StoreError> {
    let path = dir.join(POINTER);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Pointer::Missing),
        Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
            return Ok(Pointer::Unreadable("not UTF-8".to_string()))
        }
        Err(err) => return Err(io("cannot read", &path, err)),
    };
    Ok(parse_pointer(&text))
}

fn parse_pointer(text: &str) -> Pointer {
    let mut lines = text.lines();
    let number = match (lines.next(), lines.next(), lines.next()) {
        (Some(POINTER_HEADER), Some(line), None) => line
            .strip_prefix("generation ")
            .and_then(|n| n.parse::<u64>().ok()),
        _ => None,
    };
    match number {
        Some(number) if text.ends_with('\n') => Pointer::Generation(number),
        _ => Pointer::Unreadable(text.chars().take(80).collect()),
    }
}

/// Makes generation `number` the live one, durably (see the module doc). `step` is called
/// when the new pointer is written but not yet in place.
pub fn switch(dir: &Path, number: u64, step: &dyn Fn()) -> Result<(), StoreError> {
    let tmp = dir.join(POINTER_TMP);
    let mut file = File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
    file.write_all(format!("{POINTER_HEADER}\ngeneration {number}\n").as_bytes())
        .map_err(|e| io("cannot write", &tmp, e))?;
    file.sync_all().map_err(|e| io("cannot fsync", &tmp, e))?;
    drop(file);
    step();
    let pointer = dir.join(POINTER);
    std::fs::rename(&tmp, &pointer).map_err(|e| io("cannot rename to", &pointer, e))?;
    sync_dir(dir)
}

/// Makes the folder's entries durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|folder| folder.sync_all())
        .map_err(|e| io("cannot fsync", dir, e))
}

/// Whether the data folder holds a format-1 journal (sled's files directly in it).
pub fn has_legacy(dir: &Path) -> bool {
    dir.join("db").is_file()
}

fn is_legacy_file(name: &str) -> bool {
    LEGACY_FILES.contains(&name) || name.starts_with("snap.")
}

/// Removes everything in the data folder that is not the live generation `live` (or, with
/// `None`, every generation and the block files): generations left by a crash, the temporary
/// pointer, a converted format-1 journal's files (only when `live` is set: before, they are the
/// journal).
pub fn tidy(dir: &Path, live: Option<u64>) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io("cannot list", dir, e))?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(|e| io("cannot list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let stale = match parse_generation_dir(&name) {
            Some(number) => Some(number) != live,
            // Without a pointer, block files are a conversion's that did not finish.
            None => {
                name == POINTER_TMP
                    || (live.is_some() && is_legacy_file(&name))
                    || (live.is_none() && name == super::segments::SEGMENTS_DIR)
            }
        };
        if stale {
            log::info!("journal: removing {}, left from before", path.display());
            remove(&path)?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Removes a generation's folder (or any file or folder).
pub fn remove(path: &Path) -> Result<(), StoreError> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(io("cannot remove", path, err)),
    }
}

/// Bytes the files under `path` take (their lengths), recursively.
pub fn folder_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => folder_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_round_trip_and_garbage_is_unreadable() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read_pointer(dir.path()), Ok(Pointer::Missing));
        switch(dir.path(), 42, &|| {}).expect("switch");
        assert_eq!(read_pointer(dir.path()), Ok(Pointer::Generation(42)));
        assert!(!dir.path().join(POINTER_TMP).exists());
        for bad in [
            "",
            "votegate journal 2\n",
            "votegate journal 2\ngeneration x\n",
            "votegate journal 2\ngeneration 4",
        ] {
            assert!(
                matches!(parse_pointer(bad), Pointer::Unreadable(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tidy_keeps_the_live_generation_and_foreign_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["gen-000001", "gen-000002", "blobs", "gen-notes"] {
            std::fs::create_dir(dir.path().join(name)).expect("mkdir");
        }
        for name in ["db", "conf", "snap.0001", "CURRENT.tmp", "README"] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        // Before a conversion, the format-1 files are the journal: kept.
        tidy(dir.path(), None).expect("tidy");
        assert!(dir.path().join("db").exists() && !dir.path().join("gen-000001").exists());
        for name in ["gen-000001", "gen-000002"] {
            std::fs::create_dir(dir.path().join(name)).expect("mkdir");
        }
        tidy(dir.path(), Some(2)).expect("tidy");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["README", "gen-000002", "gen-notes"]);
    }
}
