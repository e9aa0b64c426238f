//! What Cargo.lock may contain, checked without cargo-deny (scripts/supply-chain runs it too,
//! with deny.toml): no C TLS stack, and the reasoning behind deny.toml's ignored advisories.

use std::collections::BTreeSet;

use crate::harness::repo_root;

/// `(name, version, dependencies)` of every package in Cargo.lock.
fn lock_packages() -> Vec<(String, String, Vec<String>)> {
    let text = std::fs::read_to_string(repo_root().join("Cargo.lock")).expect("Cargo.lock");
    let lock: toml::Table = toml::from_str(&text).expect("valid TOML");
    lock["package"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            let field = |key: &str| package[key].as_str().expect(key).to_string();
            let dependencies = package
                .get("dependencies")
                .and_then(|d| d.as_array())
                .map(|d| {
                    d.iter()
                        .map(|v| v.as_str().expect("name").to_string())
                        .collect()
                })
                .unwrap_or_default();
            (field("name"), field("version"), dependencies)
        })
        .collect()
}

#[test]
fn no_openssl_native_tls_or_aws_lc_in_the_lock_file() {
    let banned = [
        "openssl",
        "openssl-sys",
        "native-tls",
        "aws-lc-rs",
        "aws-lc-sys",
    ];
    let found: Vec<String> = lock_packages()
        .into_iter()
        .filter(|(name, _, _)| banned.contains(&name.as_str()))
        .map(|(name, version, _)| format!("{name} {version}"))
        .collect();
    assert!(
        found.is_empty(),
        "banned TLS crates in Cargo.lock: {found:?}"
    );
}

/// deny.toml ignores rustls-webpki 0.102's advisories: only rumqttc depends on that version (for
/// its error type), while rustls, which verifies the broker's certificate, uses 0.103. The other
/// half of the argument, that rumqttc gets votegate's own ClientConfig, is
/// `uplink::mqtt::tests::rumqttc_gets_the_client_config_votegate_built`.
#[test]
fn rumqttc_s_old_webpki_is_not_rustls_s_verifier() {
    let packages = lock_packages();
    // A dependency names the version only when the lock holds several of that package.
    let version_of = |dep: &str| -> Option<String> {
        match dep.split_once(' ') {
            Some((name, version)) => (name == "rustls-webpki").then(|| version.to_string()),
            None => (dep == "rustls-webpki").then(|| {
                packages
                    .iter()
                    .find(|(name, _, _)| name == dep)
                    .map(|(_, version, _)| version.clone())
                    .expect("in the lock")
            }),
        }
    };
    let users_of = |prefix: &str| -> BTreeSet<String> {
        packages
            .iter()
            .filter(|(_, _, deps)| {
                deps.iter()
                    .filter_map(|dep| version_of(dep))
                    .any(|version| version.starts_with(prefix))
            })
            .map(|(name, _, _)| name.clone())
            .collect()
    };
    assert_eq!(
        users_of("0.103."),
        BTreeSet::from(["rustls".to_string()]),
        "rustls verifies with rustls-webpki 0.103"
    );
    // ... at a release with the fixes of the four advisories (the newest needs 0.103.13).
    let patch: u32 = packages
        .iter()
        .find(|(name, version, _)| name == "rustls-webpki" && version.starts_with("0.103."))
        .and_then(|(_, version, _)| version.rsplit('.').next()?.parse().ok())
        .expect("rustls-webpki 0.103.x");
    assert!(
        patch >= 13,
        "rustls-webpki 0.103.{patch} lacks the fixes for RUSTSEC-2026-0049/-0098/-0099/-0104: cargo update -p rustls-webpki@0.103.{patch}"
    );
    let old = users_of("0.102.");
    assert!(
        old.is_empty() || old == BTreeSet::from(["rumqttc".to_string()]),
        "rustls-webpki 0.102 is used by {old:?}: deny.toml's reason for ignoring its advisories \
         no longer holds"
    );
    if old.is_empty() {
        let deny = std::fs::read_to_string(repo_root().join("deny.toml")).expect("deny.toml");
        assert!(
            !deny.contains("RUSTSEC-2026-0049"),
            "rustls-webpki 0.102 is gone from Cargo.lock: remove its ignores from deny.toml"
        );
    }
}
