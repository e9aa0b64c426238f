//! Every shipped example config loads; every `tests/data/bad-*.toml` fails with exactly the
//! message written on its first line (`# expect: …`), which names the file, the line and the key.

use std::path::{Path, PathBuf};

use votegate::config::{Config, ConfigError};

use crate::harness::repo_root;

fn files(folder: &str, prefix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(folder))
        .expect("folder exists")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            name.starts_with(prefix) && name.ends_with(".toml")
        })
        .collect();
    files.sort();
    files
}

/// The path as the test names it: relative to the repository, as an installer would type it.
fn relative(path: &Path) -> PathBuf {
    path.strip_prefix(repo_root())
        .expect("inside the repo")
        .to_path_buf()
}

#[test]
fn every_example_config_loads() {
    let examples = files("examples", "");
    assert!(examples.len() >= 2, "examples/ has no configs");
    for path in examples {
        let config = Config::load(&path).unwrap_or_else(|err| panic!("{err}"));
        assert!(!config.terminals.is_empty(), "{}", path.display());
    }
}

#[test]
fn every_bad_config_fails_with_its_documented_message() {
    let bad = files("tests/data", "bad-");
    assert!(bad.len() >= 10, "only {} bad configs", bad.len());
    // Relative paths, as in the expected messages: the tests run from the repository root.
    assert_eq!(std::env::current_dir().expect("cwd"), repo_root());
    let mut mismatches = Vec::new();
    for path in bad {
        let path = relative(&path);
        let text = std::fs::read_to_string(&path).expect("readable");
        let expected = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks a first line `# expect: …`", path.display()));
        match Config::load(&path) {
            Ok(_) => panic!("{} loaded but should fail with: {expected}", path.display()),
            Err(err @ ConfigError::Invalid { .. }) if err.to_string() == expected => {}
            Err(err) => mismatches.push(format!("expected: {expected}\n     got: {err}")),
        }
    }
    assert!(mismatches.is_empty(), "\n{}", mismatches.join("\n"));
}

#[test]
fn a_missing_file_is_named_with_the_os_reason() {
    let err = Config::load(Path::new("/nonexistent/votegate.toml")).expect_err("no such file");
    assert_eq!(
        err.to_string(),
        "cannot read config file /nonexistent/votegate.toml: No such file or directory (os error 2)"
    );
}
