//! Test certificates, generated fresh for each test with rcgen: a CA, a server certificate for
//! 127.0.0.1/localhost, client certificates (gateway, subscriber), an expired client certificate,
//! and an unrelated CA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// PEM files in a folder.
pub struct Pki {
    /// The CA that signed everything below.
    pub ca: PathBuf,
    /// The broker's certificate and key.
    pub server_cert: PathBuf,
    /// The broker's key.
    pub server_key: PathBuf,
    /// The gateway's client certificate and key.
    pub gateway_cert: PathBuf,
    /// The gateway's key.
    pub gateway_key: PathBuf,
    /// The test subscriber's certificate and key.
    pub subscriber_cert: PathBuf,
    /// The subscriber's key.
    pub subscriber_key: PathBuf,
    /// A gateway certificate that expired in 2021.
    pub expired_cert: PathBuf,
    /// Its key.
    pub expired_key: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

fn leaf(
    dir: &Path,
    name: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    expired: bool,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(sans).expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    if expired {
        params.not_before = time::OffsetDateTime::from_unix_timestamp(1_577_836_800).expect("2020");
        params.not_after = time::OffsetDateTime::from_unix_timestamp(1_609_459_200).expect("2021");
    }
    let cert = params.signed_by(&key, issuer).expect("sign");
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

impl Pki {
    /// Generates everything into `dir`.
    pub fn generate(dir: &Path) -> Pki {
        let authority = ca("votegate test CA");
        let other = ca("some other CA");
        let ca_path = dir.join("ca.pem");
        let other_path = dir.join("other-ca.pem");
        std::fs::write(&ca_path, authority.pem()).expect("write CA");
        std::fs::write(&other_path, other.pem()).expect("write CA");
        let server_sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let (server_cert, server_key) = leaf(
            dir,
            "broker",
            &authority,
            server_sans,
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        );
        let (gateway_cert, gateway_key) = leaf(
            dir,
            "gw-uplink",
            &authority,
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        );
        let (subscriber_cert, subscriber_key) = leaf(
            dir,
            "subscriber",
            &authority,
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        );
        let (expired_cert, expired_key) = leaf(
            dir,
            "gw-expired",
            &authority,
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
            true,
        );
        Pki {
            ca: ca_path,
            server_cert,
            server_key,
            gateway_cert,
            gateway_key,
            subscriber_cert,
            subscriber_key,
            expired_cert,
            expired_key,
            other_ca: other_path,
        }
    }
}
