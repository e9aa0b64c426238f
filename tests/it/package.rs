//! The Debian package's description (Cargo.toml `[package.metadata.deb]`, read by cargo-deb):
//! what it installs and how. scripts/cross-test builds the arm64 package and checks its file list
//! against the same paths with `dpkg-deb -c`.

use std::os::unix::fs::PermissionsExt;

use crate::harness::repo_root;

fn deb_metadata() -> toml::Value {
    let text = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let manifest: toml::Table = toml::from_str(&text).expect("valid TOML");
    manifest["package"]["metadata"]["deb"].clone()
}

/// `(source, destination, mode)` of each asset.
fn assets() -> Vec<(String, String, String)> {
    deb_metadata()["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|asset| {
            let parts: Vec<String> = asset
                .as_array()
                .expect("triple")
                .iter()
                .map(|v| v.as_str().expect("text").to_string())
                .collect();
            (parts[0].clone(), parts[1].clone(), parts[2].clone())
        })
        .collect()
}

/// Where each installed file lands (a destination ending in `/` keeps the source's file name).
pub fn installed_paths() -> Vec<String> {
    assets()
        .into_iter()
        .map(
            |(source, destination, _)| match destination.strip_suffix('/') {
                Some(folder) => format!(
                    "/{folder}/{}",
                    source.rsplit('/').next().expect("file name")
                ),
                None => format!("/{destination}"),
            },
        )
        .collect()
}

#[test]
fn the_debian_package_installs_what_the_gateway_needs() {
    let installed = installed_paths();
    for path in [
        "/usr/bin/votegate",
        "/lib/systemd/system/votegate.service",
        "/etc/votegate/votegate.toml",
        "/lib/udev/rules.d/99-votegate-serial.rules",
        "/usr/share/doc/votegate/README.md",
    ] {
        assert!(
            installed.contains(&path.to_string()),
            "the package lacks {path}: {installed:?}"
        );
    }
    for (source, _, mode) in assets() {
        // The binary and target/assets (man pages, completions: scripts/assets) are built.
        if !source.starts_with("target/") {
            assert!(
                repo_root().join(&source).is_file(),
                "asset {source} does not exist"
            );
        }
        assert!(
            matches!(mode.as_str(), "755" | "644" | "640"),
            "{source}: mode {mode}"
        );
    }
    // The config is the installer's: kept on upgrade.
    let conf_files = deb_metadata()["conf-files"]
        .as_array()
        .expect("conf-files")
        .clone();
    assert_eq!(
        conf_files,
        [toml::Value::String("/etc/votegate/votegate.toml".into())]
    );
    // The unit runs as votegate: postinst creates it, in the serial and GPIO groups.
    let postinst = repo_root().join("debian/postinst");
    let script = std::fs::read_to_string(&postinst).expect("postinst");
    assert!(
        script.contains("adduser --system --ingroup votegate"),
        "{script}"
    );
    assert!(script.contains("for group in dialout gpio"), "{script}");
    // The state folder exists before any start (`votegate check` runs first), the unit is
    // enabled with deb-systemd-helper (in an image build too) and restarted on upgrade only.
    for line in [
        "chown votegate:votegate /var/lib/votegate",
        "chmod 0750 /var/lib/votegate",
        "deb-systemd-helper --quiet was-enabled 'votegate.service'",
        "deb-systemd-invoke try-restart 'votegate.service'",
        "udevadm trigger --subsystem-match=tty --action=add",
    ] {
        assert!(script.contains(line), "postinst lacks {line:?}");
    }
    assert!(
        !script.contains("systemctl enable"),
        "enable with deb-systemd-helper"
    );
    let postrm = std::fs::read_to_string(repo_root().join("debian/postrm")).expect("postrm");
    for line in [
        "deb-systemd-helper purge 'votegate.service'",
        "rm -rf /var/lib/votegate /etc/votegate",
    ] {
        assert!(postrm.contains(line), "postrm lacks {line:?}");
    }
    for script in ["debian/postinst", "debian/prerm", "debian/postrm"] {
        let mode = std::fs::metadata(repo_root().join(script))
            .expect(script)
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{script} is not executable");
    }
}

#[test]
fn the_packaged_config_loads() {
    let config = votegate::config::Config::load(&repo_root().join("examples/votegate.toml"))
        .expect("the default config is valid");
    assert_eq!(
        config.data_dir,
        std::path::PathBuf::from("/var/lib/votegate")
    );
    assert!(config.uplink.is_some());
}

#[test]
fn the_package_carries_its_changelog_and_both_licence_texts() {
    let meta = deb_metadata();
    assert_eq!(meta["changelog"].as_str(), Some("debian/changelog"));
    // The changelog's top entry is the version cargo-deb builds (revision 1).
    let changelog =
        std::fs::read_to_string(repo_root().join("debian/changelog")).expect("changelog");
    let top = changelog.lines().next().expect("an entry");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        top.starts_with(&format!("votegate ({version}-1) ")),
        "debian/changelog starts with {top:?}: add an entry for {version}-1"
    );
    // debian/copyright holds LICENSE-MIT and LICENSE-APACHE word for word (DEP-5 indents each
    // line by one space and writes an empty line as " .").
    let copyright =
        std::fs::read_to_string(repo_root().join("debian/copyright")).expect("copyright");
    let license = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    assert!(license.contains("license = \"MIT OR Apache-2.0\""));
    assert!(copyright.contains("License: MIT or Apache-2.0"));
    for file in ["LICENSE-MIT", "LICENSE-APACHE"] {
        let text = std::fs::read_to_string(repo_root().join(file)).expect(file);
        // (LICENSE-MIT's title line is the DEP-5 `License: MIT` field.)
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "MIT License")
        {
            assert!(
                copyright.contains(line),
                "debian/copyright lacks this line of {file}: {line:?}"
            );
        }
    }
    assert!(installed_paths().contains(&"/usr/share/doc/votegate/copyright".to_string()));
}
