//! Build-time facts and files:
//! - `VOTEGATE_LONG_VERSION` for `votegate --version`: the version, the git commit (short hash,
//!   `+dirty` when tracked files differ from it) and the target triple. Built from a tarball
//!   without `.git` (or without git), the commit is `VOTEGATE_GIT_COMMIT` if set, else "unknown".
//! - The man pages (`votegate.1` and one per command) and the bash, zsh and fish completions,
//!   generated from the clap definitions in `src/cli/args.rs` into `$OUT_DIR/assets/`;
//!   `scripts/assets` copies them to `target/assets/` for the Debian package.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use clap_complete::Shell;

#[allow(dead_code)]
#[path = "src/cli/args.rs"]
mod args;

fn main() -> std::io::Result<()> {
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    for path in ["build.rs", "src", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=VOTEGATE_GIT_COMMIT");
    let commit = match git_commit(&manifest) {
        Some(commit) => commit,
        None => std::env::var("VOTEGATE_GIT_COMMIT").unwrap_or_else(|_| "unknown".into()),
    };
    println!(
        "cargo:rustc-env=VOTEGATE_LONG_VERSION={} (commit {commit}, {})",
        env("CARGO_PKG_VERSION"),
        env("TARGET")
    );

    let assets = PathBuf::from(env("OUT_DIR")).join("assets");
    let man = assets.join("man");
    let completions = assets.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(args::Cli::command(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut args::Cli::command(), "votegate", &completions)?;
    }
    Ok(())
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// The short commit hash, `+dirty` when tracked files changed; `None` without git or `.git`.
/// Also asks cargo to rerun this script when HEAD moves or the index changes.
fn git_commit(manifest: &Path) -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let output = Command::new("git")
            .args(args)
            .current_dir(manifest)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let git_dir = git(&["rev-parse", "--absolute-git-dir"])?;
    let common_dir = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
        .unwrap_or_else(|| git_dir.clone());
    println!("cargo:rerun-if-changed={git_dir}/HEAD");
    println!("cargo:rerun-if-changed={git_dir}/index");
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        println!("cargo:rerun-if-changed={common_dir}/{reference}");
        println!("cargo:rerun-if-changed={common_dir}/packed-refs");
    }
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|changes| !changes.is_empty());
    Some(if dirty { format!("{hash}+dirty") } else { hash })
}
