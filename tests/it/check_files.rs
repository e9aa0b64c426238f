//! `votegate check --offline` checks every local file and address the daemon will need, with
//! real files in a temp folder: the uplink's CA, client certificate and key (PEM, X.509 v3, not
//! expired, the key the certificate's), the password file, secrets readable by everyone (a
//! warning), the data dir (never created by `check`), the `listen` address; `--json`; and
//! `--version`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use crate::harness::pki::Pki;
use crate::harness::{http_addr, votegate_command, write_file, RunningChild};

/// A temp folder with generated certificates and a config whose `[uplink]` has `uplink_keys`.
struct Setup {
    dir: tempfile::TempDir,
    pki: Pki,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::generate(dir.path());
        for key in [
            &pki.gateway_key,
            &pki.expired_key,
            &pki.v1_key,
            &pki.stray_key,
        ] {
            chmod(key, 0o600);
        }
        Setup { dir, pki }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A config with `listen` and an `[uplink]` table made of `uplink_keys`.
    fn config(&self, listen: &str, uplink_keys: &str) -> PathBuf {
        let text = format!(
            r#"gateway-id = "gw-test"
site = "test-store"
data-dir = "{}"
time-zone = "UTC"
listen = "{listen}"

[uplink]
host = "127.0.0.1"
{uplink_keys}

[[terminal]]
id = "left"
kind = "simulated"
presses-per-minute = 6
"#,
            self.path("journal").display()
        );
        write_file(self.dir.path(), "votegate.toml", &text)
    }

    /// A config with mutual TLS from these files.
    fn tls_config(&self, ca: &Path, cert: &Path, key: &Path) -> PathBuf {
        self.config(
            "127.0.0.1:0",
            &format!(
                "ca-file = \"{}\"\nclient-cert = \"{}\"\nclient-key = \"{}\"",
                ca.display(),
                cert.display(),
                key.display()
            ),
        )
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn check(config: &Path, extra: &[&str]) -> Output {
    votegate_command()
        .args([
            "check",
            "--offline",
            "--config",
            config.to_str().expect("utf-8"),
        ])
        .args(extra)
        .output()
        .expect("votegate runs")
}

/// The report's line for `name`, and the exit code.
fn report_line(config: &Path, name: &str) -> (String, Option<i32>) {
    let output = check(config, &[]);
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let found = report
        .lines()
        .find(|l| {
            l.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{name:<10} ")))
        })
        .unwrap_or_else(|| {
            panic!(
                "no {name} line in:\n{report}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_string();
    (found, output.status.code())
}

#[test]
fn check_offline_passes_good_tls_files_and_says_what_it_found() {
    let setup = Setup::new();
    let pki = &setup.pki;
    let config = setup.tls_config(&pki.ca, &pki.gateway_cert, &pki.gateway_key);
    let output = check(&config, &[]);
    let report = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert!(
        report.contains(&format!(
            "ok    ca-file    uplink.ca-file {}: 1 CA certificate (CN=votegate test CA)",
            pki.ca.display()
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "ok    cert-file  uplink.client-cert {}: CN=gw-uplink, X.509 v3, valid until ",
            pki.gateway_cert.display()
        )),
        "{report}"
    );
    assert!(report.contains("matches uplink.client-cert"), "{report}");
}

#[test]
fn check_offline_fails_on_a_missing_ca_file() {
    let setup = Setup::new();
    let missing = setup.path("no-such-ca.pem");
    let config = setup.tls_config(&missing, &setup.pki.gateway_cert, &setup.pki.gateway_key);
    let (line, code) = report_line(&config, "ca-file");
    assert_eq!(
        line,
        format!(
            "FAIL  ca-file    uplink.ca-file {}: no such file",
            missing.display()
        )
    );
    assert_eq!(code, Some(1));
}

#[test]
fn check_offline_fails_on_a_folder_given_as_ca_file() {
    let setup = Setup::new();
    let folder = setup.dir.path();
    let config = setup.tls_config(folder, &setup.pki.gateway_cert, &setup.pki.gateway_key);
    let (line, code) = report_line(&config, "ca-file");
    assert_eq!(
        line,
        format!(
            "FAIL  ca-file    uplink.ca-file {} is a folder; name the PEM file in it",
            folder.display()
        )
    );
    assert_eq!(code, Some(1));
}

#[test]
fn check_offline_fails_on_a_ca_file_that_is_not_pem() {
    let setup = Setup::new();
    let text = write_file(setup.dir.path(), "ca.txt", "ask IT for the CA\n");
    let config = setup.tls_config(&text, &setup.pki.gateway_cert, &setup.pki.gateway_key);
    let (line, code) = report_line(&config, "ca-file");
    assert_eq!(
        line,
        format!(
            "FAIL  ca-file    uplink.ca-file {} is not PEM: no `-----BEGIN CERTIFICATE-----` block in it",
            text.display()
        )
    );
    assert_eq!(code, Some(1));
}

#[test]
fn check_offline_fails_on_a_v1_client_certificate_naming_the_openssl_fix() {
    let setup = Setup::new();
    let pki = &setup.pki;
    let config = setup.tls_config(&pki.ca, &pki.v1_cert, &pki.v1_key);
    let (line, code) = report_line(&config, "cert-file");
    assert_eq!(
        line,
        format!(
            "FAIL  cert-file  uplink.client-cert {} is an X.509 v1 certificate, made without extensions, which TLS refuses: sign it again with extensions (`openssl x509 -req … -extfile client.ext`, or `-copy_extensions copyall` with OpenSSL 3)",
            pki.v1_cert.display()
        )
    );
    assert_eq!(code, Some(1));
}

#[test]
fn check_offline_fails_on_an_expired_client_certificate() {
    let setup = Setup::new();
    let pki = &setup.pki;
    let config = setup.tls_config(&pki.ca, &pki.expired_cert, &pki.expired_key);
    let (line, code) = report_line(&config, "cert-file");
    assert_eq!(
        line,
        format!(
            "FAIL  cert-file  uplink.client-cert {} (CN=gw-expired) expired on 2021-01-01 00:00 UTC",
            pki.expired_cert.display()
        )
    );
    assert_eq!(code, Some(1));
}

#[test]
fn check_offline_fails_on_a_key_that_is_not_the_certificates() {
    let setup = Setup::new();
    let pki = &setup.pki;
    let config = setup.tls_config(&pki.ca, &pki.gateway_cert, &pki.stray_key);
    let (line, code) = report_line(&config, "key-file");
    assert_eq!(
        line,
        format!(
            "FAIL  key-file   uplink.client-key {} does not belong to uplink.client-cert {}: their public keys differ",
            pki.stray_key.display(),
            pki.gateway_cert.display()
        )
    );
    assert_eq!(code, Some(1));
}

#[test]
fn check_offline_fails_on_a_missing_password_file() {
    let setup = Setup::new();
    let missing = setup.path("mqtt-password");
    let config = setup.config(
        "127.0.0.1:0",
        &format!(
            "username = \"gw\"\npassword-file = \"{}\"",
            missing.display()
        ),
    );
    let (line, code) = report_line(&config, "password");
    assert_eq!(
        line,
        format!(
            "FAIL  password   uplink.password-file {}: no such file",
            missing.display()
        )
    );
    assert_eq!(code, Some(1));
}

#[test]
fn check_offline_warns_but_passes_when_everyone_may_read_a_secret() {
    let setup = Setup::new();
    let pki = &setup.pki;
    let password = write_file(setup.dir.path(), "mqtt-password", "s3cret\n");
    chmod(&password, 0o644);
    chmod(&pki.gateway_key, 0o644);
    let config = setup.config(
        "127.0.0.1:0",
        &format!(
            "ca-file = \"{}\"\nclient-cert = \"{}\"\nclient-key = \"{}\"\nusername = \"gw\"\npassword-file = \"{}\"",
            pki.ca.display(),
            pki.gateway_cert.display(),
            pki.gateway_key.display(),
            password.display()
        ),
    );
    let (key_line, code) = report_line(&config, "key-file");
    assert_eq!(
        key_line,
        format!(
            "WARN  key-file   uplink.client-key {}: ECDSA key, matches uplink.client-cert; but readable by every user of this machine (mode 644): `chmod o-r {}` (the daemon needs only owner or group read, e.g. root:votegate 640)",
            pki.gateway_key.display(),
            pki.gateway_key.display()
        )
    );
    assert_eq!(code, Some(0), "a warning keeps exit 0");
    let (password_line, _) = report_line(&config, "password");
    assert!(
        password_line.starts_with("WARN  password   uplink.password-file "),
        "{password_line}"
    );

    chmod(&password, 0o640);
    chmod(&pki.gateway_key, 0o640);
    let (password_line, _) = report_line(&config, "password");
    assert!(
        password_line.starts_with("ok    password   "),
        "{password_line}"
    );
}

#[test]
fn check_refuses_a_relative_serial_port_and_a_password_in_clear_text() {
    let setup = Setup::new();
    let relative = write_file(
        setup.dir.path(),
        "serial.toml",
        "gateway-id = \"gw\"\nsite = \"s\"\ndata-dir = \"/nonexistent/votegate\"\n\n[[terminal]]\nid = \"e\"\nkind = \"serial\"\nport = \"ttyUSB0\"\n",
    );
    let output = check(&relative, &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("line 8: key `terminal.port`: \"ttyUSB0\" is a relative path"),
        "{output:?}"
    );
    let password = write_file(setup.dir.path(), "mqtt-password", "s3cret\n");
    let keys = format!(
        "host = \"mqtt.example.com\"\ntls = false\nusername = \"gw\"\npassword-file = \"{}\"",
        password.display()
    );
    let clear = setup.config("127.0.0.1:0", &keys).to_path_buf();
    let text = std::fs::read_to_string(&clear)
        .expect("config")
        .replace("host = \"127.0.0.1\"\n", "");
    std::fs::write(&clear, &text).expect("write");
    let output = check(&clear, &[]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("key `uplink.tls`: false would send the password of `uplink.username` in clear text to mqtt.example.com"),
        "{output:?}"
    );
    std::fs::write(
        &clear,
        text.replace(
            "tls = false",
            "tls = false\nallow-plaintext-credentials = true",
        ),
    )
    .expect("write");
    assert_eq!(check(&clear, &[]).status.code(), Some(0));
}

#[test]
fn check_never_creates_the_data_dir() {
    let setup = Setup::new();
    let config = setup.config("127.0.0.1:0", "tls = false");
    let (line, code) = report_line(&config, "data-dir");
    assert!(
        line.starts_with(&format!(
            "ok    data-dir   {}: does not exist yet; the daemon creates it ({} is writable), ",
            setup.path("journal").display(),
            setup.dir.path().display()
        )),
        "{line}"
    );
    assert_eq!(code, Some(0));
    assert!(
        !setup.path("journal").exists(),
        "check created the data dir"
    );

    // A parent that is a file: nobody, not even root, can create the folder.
    write_file(setup.dir.path(), "journal", "not a folder");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("/journal\"", "/journal/votes\"")).expect("write");
    let (line, code) = report_line(&config, "data-dir");
    assert_eq!(
        line,
        format!(
            "FAIL  data-dir   cannot create {}: {} is not a folder",
            setup.path("journal/votes").display(),
            setup.path("journal").display()
        )
    );
    assert_eq!(code, Some(1));
}

#[test]
fn check_fails_when_another_program_holds_the_listen_address() {
    let setup = Setup::new();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = holder.local_addr().expect("addr");
    let config = setup.config(&addr.to_string(), "tls = false");
    let (line, code) = report_line(&config, "listen");
    assert_eq!(
        line,
        format!(
            "FAIL  listen     {addr} is in use by another program (`ss -ltnp 'sport = :{}'` names it): stop it or change `listen`",
            addr.port()
        )
    );
    assert_eq!(code, Some(1));
}

/// A gateway running on a config of its own; its HTTP address.
fn running_gateway(dir: &Path) -> (RunningChild, std::net::SocketAddr) {
    let config = write_file(
        dir,
        "running.toml",
        &format!(
            "gateway-id = \"gw-running\"\nsite = \"s\"\ndata-dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\n[[terminal]]\nid = \"e\"\nkind = \"simulated\"\npresses-per-minute = 60\n",
            dir.join("running-journal").display()
        ),
    );
    let child = votegate_command()
        .args(["run", "--config", config.to_str().expect("utf-8")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("votegate run starts");
    let gateway = RunningChild::new(child);
    let addr = http_addr(&gateway);
    (gateway, addr)
}

#[test]
fn check_and_status_speak_json_and_check_knows_the_daemon_holds_listen() {
    let setup = Setup::new();
    let (gateway, addr) = running_gateway(setup.dir.path());
    let config = setup.config(&addr.to_string(), "tls = false");
    let (line, code) = report_line(&config, "listen");
    assert!(
        line.starts_with(&format!(
            "ok    listen     {addr} is held by the running votegate "
        )),
        "{line}"
    );
    assert_eq!(code, Some(0));

    let output = check(&config, &["--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(report["result"], "ok", "{report}");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["config", "data-dir", "listen"]);
    assert!(report["checks"][2]["message"]
        .as_str()
        .expect("message")
        .contains("held by the running votegate"));

    let output = votegate_command()
        .args(["status", "--json", "--url", &format!("http://{addr}")])
        .output()
        .expect("status runs");
    let status: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(output.status.code(), Some(0), "{status}");
    assert_eq!(status["result"], "ok");
    assert_eq!(status["status"]["healthy"], true);
    assert_eq!(status["status"]["gateway_id"], "gw-running");
    assert!(status["status"]["journal"]["depth"].is_u64(), "{status}");
    assert!(status["tallies"].is_object(), "{status}");
    gateway.kill();
}

#[test]
fn check_json_reports_a_bad_config_as_a_failed_check() {
    let output = votegate_command()
        .args([
            "check",
            "--json",
            "--config",
            "tests/data/bad-when-full.toml",
        ])
        .output()
        .expect("votegate runs");
    assert_eq!(output.status.code(), Some(2));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(report["result"], "fail");
    assert_eq!(report["checks"][0]["name"], "config");
    assert_eq!(report["checks"][0]["result"], "fail");
    assert!(report["checks"][0]["message"]
        .as_str()
        .expect("message")
        .contains("journal.when-full"));
}

#[test]
fn version_names_the_commit_and_the_target() {
    let output = votegate_command().arg("--version").output().expect("runs");
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    let target = if cfg!(target_arch = "aarch64") {
        "aarch64-"
    } else {
        "x86_64-"
    };
    assert!(
        text.starts_with(&format!("votegate {} (commit ", env!("CARGO_PKG_VERSION")))
            && text.contains(&format!(", {target}"))
            && text.contains("-linux-"),
        "{text}"
    );
}

#[test]
fn check_offline_fails_on_a_der_ca_file_and_a_key_that_is_not_pem() {
    let setup = Setup::new();
    let pki = &setup.pki;
    let pem = std::fs::read_to_string(&pki.ca).expect("CA");
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM");
    let der = setup.path("ca.der");
    std::fs::write(&der, &block.contents).expect("write DER");
    let not_a_key = write_file(
        setup.dir.path(),
        "gw.key.txt",
        "the key is on the USB stick\n",
    );
    chmod(&not_a_key, 0o600);
    let config = setup.tls_config(&der, &pki.gateway_cert, &not_a_key);
    let (ca_line, code) = report_line(&config, "ca-file");
    assert_eq!(
        ca_line,
        format!(
            "FAIL  ca-file    uplink.ca-file {} is not PEM: no `-----BEGIN CERTIFICATE-----` block in it (it looks like binary DER: convert it with `openssl x509 -inform der -in FILE -out FILE.pem`)",
            der.display()
        )
    );
    assert_eq!(code, Some(1));
    let (key_line, _) = report_line(&config, "key-file");
    assert_eq!(
        key_line,
        format!(
            "FAIL  key-file   uplink.client-key {} is not PEM: no `-----BEGIN … PRIVATE KEY-----` block in it",
            not_a_key.display()
        )
    );
}
