//! The uplink's local files, checked the way the connection will use them (for `votegate check`,
//! also `--offline`): the CA file, the client certificate and its key, the password file. Besides
//! `mqtt.rs` the only file that imports rustls (to load a key as the connection would, with the
//! ring provider), and the only one that imports x509-parser (certificate version and validity,
//! which rustls does not expose).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustls::crypto::ring::default_provider;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

/// What is wrong with one of the uplink's files. Each names the config key and the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// Nothing at the path.
    #[error("{key} {}: no such file", path.display())]
    Missing {
        /// The config key naming the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A folder where a file belongs.
    #[error("{key} {} is a folder; name the PEM file in it", path.display())]
    Folder {
        /// The config key naming the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// The file exists but cannot be read (permissions, most often).
    #[error("{key} {}: cannot read it: {cause}", path.display())]
    Unreadable {
        /// The config key naming the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// The operating system's reason.
        cause: String,
    },
    /// No PEM block of the expected kind in the file.
    #[error("{key} {} is not PEM: no `-----BEGIN {label}-----` block in it{hint}", path.display())]
    NotPem {
        /// The config key naming the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// The PEM label expected.
        label: &'static str,
        /// How to convert the file, when it looks like binary DER.
        hint: &'static str,
    },
    /// A PEM block whose content is not a certificate or key.
    #[error("{key} {}: {cause}", path.display())]
    Malformed {
        /// The config key naming the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// What the parser found.
        cause: String,
    },
    /// An X.509 v1 (or v2) certificate: what `openssl x509 -req` makes without extensions.
    #[error("{key} {} is an X.509 v{version} certificate, made without extensions, which TLS refuses: sign it again with extensions (`openssl x509 -req … -extfile client.ext`, or `-copy_extensions copyall` with OpenSSL 3)", path.display())]
    OldVersion {
        /// The config key naming the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// The certificate's version (1 or 2).
        version: u32,
    },
    /// The certificate's validity ended.
    #[error("{key} {} ({subject}) expired on {not_after}", path.display())]
    Expired {
        /// The config key naming the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
        /// When it expired.
        not_after: String,
    },
    /// The certificate's validity has not begun.
    #[error("{key} {} ({subject}) is not valid before {not_before} (is the clock right?)", path.display())]
    NotYetValid {
        /// The config key naming the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
        /// When it becomes valid.
        not_before: String,
    },
    /// The key is not the certificate's.
    #[error("uplink.client-key {} does not belong to uplink.client-cert {}: their public keys differ", key_path.display(), cert_path.display())]
    KeyMismatch {
        /// The key file.
        key_path: PathBuf,
        /// The certificate file.
        cert_path: PathBuf,
    },
    /// The password file's first line is empty.
    #[error("{key} {}: the first line (the password) is empty", path.display())]
    EmptyPassword {
        /// The config key naming the file.
        key: &'static str,
        /// The path.
        path: PathBuf,
    },
}

/// `uplink.ca-file`: at least one PEM certificate, none expired. Returns what was found.
pub fn check_ca(path: &Path, now: i64) -> Result<String, FileError> {
    let key = "uplink.ca-file";
    let certs = read_certs(key, path)?;
    let mut subjects = Vec::new();
    for der in &certs {
        let cert = parse(key, path, der)?;
        check_validity(key, path, &cert, now)?;
        subjects.push(cert.tbs_certificate.subject.to_string());
    }
    Ok(format!(
        "uplink.ca-file {}: {} ({})",
        path.display(),
        count(certs.len(), "CA certificate"),
        subjects.join("; ")
    ))
}

/// `uplink.client-cert`: PEM, X.509 v3, valid now. Returns what was found.
pub fn check_client_cert(path: &Path, now: i64) -> Result<String, FileError> {
    let key = "uplink.client-cert";
    let certs = read_certs(key, path)?;
    let cert = parse(key, path, &certs[0])?;
    let version = cert.tbs_certificate.version.0 + 1;
    if version < 3 {
        return Err(FileError::OldVersion {
            key,
            path: path.to_path_buf(),
            version,
        });
    }
    check_validity(key, path, &cert, now)?;
    Ok(format!(
        "uplink.client-cert {}: {}, X.509 v3, valid until {}",
        path.display(),
        cert.tbs_certificate.subject,
        date(cert.tbs_certificate.validity.not_after.timestamp())
    ))
}

/// `uplink.client-key`: a PEM private key the connection can use, belonging to the certificate
/// at `cert_path` (not compared when that certificate is unusable: its own line says why).
pub fn check_client_key(path: &Path, cert_path: &Path) -> Result<String, FileError> {
    let key = "uplink.client-key";
    let bytes = read(key, path)?;
    let der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| match err {
        pem::Error::NoItemsFound => FileError::NotPem {
            key,
            path: path.to_path_buf(),
            label: "… PRIVATE KEY",
            hint: der_hint(&bytes, "pkey"),
        },
        other => malformed(key, path, other),
    })?;
    let signing_key = default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|err| malformed(key, path, format!("not a key TLS can use: {err}")))?;
    let found = format!(
        "uplink.client-key {}: {:?} key",
        path.display(),
        signing_key.algorithm()
    );
    let cert_der = read_certs("uplink.client-cert", cert_path)
        .ok()
        .and_then(|certs| certs.into_iter().next());
    let cert_spki = cert_der.as_ref().and_then(|der| {
        X509Certificate::from_der(der)
            .ok()
            .map(|(_, cert)| cert.tbs_certificate.subject_pki.raw.to_vec())
    });
    match (signing_key.public_key(), cert_spki) {
        (Some(public), Some(spki)) if public.as_ref() == spki.as_slice() => {
            Ok(format!("{found}, matches uplink.client-cert"))
        }
        (Some(_), Some(_)) => Err(FileError::KeyMismatch {
            key_path: path.to_path_buf(),
            cert_path: cert_path.to_path_buf(),
        }),
        (None, _) => Ok(format!("{found} (cannot compare it with the certificate)")),
        (_, None) => Ok(format!(
            "{found} (not compared: the certificate is unusable)"
        )),
    }
}

/// `uplink.password-file`: readable, with a password on its first line.
pub fn check_password(path: &Path) -> Result<String, FileError> {
    let key = "uplink.password-file";
    let bytes = read(key, path)?;
    let text = String::from_utf8_lossy(&bytes);
    if text.lines().next().unwrap_or_default().is_empty() {
        return Err(FileError::EmptyPassword {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(format!("{key} {}: readable, not empty", path.display()))
}

/// A warning when every user of the machine may read a secret (a key or a password). Group
/// read is fine: the recommended setup is `root:votegate 0640`.
pub fn readable_by_others(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "readable by every user of this machine (mode {:03o}): `chmod o-r {}` (the daemon needs only owner or group read, e.g. root:votegate 640)",
            mode & 0o777,
            path.display()
        )
    })
}

/// The file's bytes, or why there are none.
fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
    let meta = std::fs::metadata(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => FileError::Missing {
            key,
            path: path.to_path_buf(),
        },
        _ => unreadable(key, path, err),
    })?;
    if meta.is_dir() {
        return Err(FileError::Folder {
            key,
            path: path.to_path_buf(),
        });
    }
    std::fs::read(path).map_err(|err| unreadable(key, path, err))
}

/// The PEM certificates in a file, at least one.
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| malformed(key, path, err))?;
    if certs.is_empty() {
        return Err(FileError::NotPem {
            key,
            path: path.to_path_buf(),
            label: "CERTIFICATE",
            hint: der_hint(&bytes, "x509"),
        });
    }
    Ok(certs)
}

fn parse<'a>(
    key: &'static str,
    path: &Path,
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, FileError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|err| malformed(key, path, format!("not an X.509 certificate: {err}")))
}

fn check_validity(
    key: &'static str,
    path: &Path,
    cert: &X509Certificate<'_>,
    now: i64,
) -> Result<(), FileError> {
    let validity = &cert.tbs_certificate.validity;
    let subject = cert.tbs_certificate.subject.to_string();
    if now > validity.not_after.timestamp() {
        return Err(FileError::Expired {
            key,
            path: path.to_path_buf(),
            subject,
            not_after: date(validity.not_after.timestamp()),
        });
    }
    if now < validity.not_before.timestamp() {
        return Err(FileError::NotYetValid {
            key,
            path: path.to_path_buf(),
            subject,
            not_before: date(validity.not_before.timestamp()),
        });
    }
    Ok(())
}

/// A hint for binary DER files (they start with a SEQUENCE tag), which need converting.
fn der_hint(bytes: &[u8], openssl_command: &str) -> &'static str {
    match (bytes.first(), openssl_command) {
        (Some(0x30), "x509") => {
            " (it looks like binary DER: convert it with `openssl x509 -inform der -in FILE -out FILE.pem`)"
        }
        (Some(0x30), _) => {
            " (it looks like binary DER: convert it with `openssl pkey -inform der -in FILE -out FILE.pem`)"
        }
        _ => "",
    }
}

fn unreadable(key: &'static str, path: &Path, err: std::io::Error) -> FileError {
    FileError::Unreadable {
        key,
        path: path.to_path_buf(),
        cause: err.to_string(),
    }
}

fn malformed(key: &'static str, path: &Path, cause: impl ToString) -> FileError {
    FileError::Malformed {
        key,
        path: path.to_path_buf(),
        cause: cause.to_string(),
    }
}

fn count(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

/// A Unix time as `2027-03-01 12:00 UTC`.
fn date(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| format!("{unix} s after 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_utc() {
        assert_eq!(date(1_609_459_200), "2021-01-01 00:00 UTC");
    }

    #[test]
    fn der_files_get_a_conversion_hint() {
        assert!(der_hint(&[0x30, 0x82], "x509").contains("openssl x509 -inform der"));
        assert!(der_hint(&[0x30, 0x82], "pkey").contains("openssl pkey -inform der"));
        assert_eq!(der_hint(b"hello", "x509"), "");
    }
}
