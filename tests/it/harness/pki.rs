//! Test certificates, generated fresh for each test with rcgen: a CA, a server certificate for
//! 127.0.0.1/localhost, client certificates (gateway, subscriber), an expired client certificate,
//! an X.509 v1 client certificate (what `openssl x509 -req` makes without `-extfile`), a key that
//! belongs to no certificate, and an unrelated CA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SigningKey,
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
    /// A gateway certificate without extensions: X.509 v1, which TLS libraries refuse.
    pub v1_cert: PathBuf,
    /// Its key.
    pub v1_key: PathBuf,
    /// A key that belongs to no certificate here.
    pub stray_key: PathBuf,
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
        let (v1_cert, v1_key) = v1_leaf(dir, "gw-v1", &authority);
        let stray_key = dir.join("stray.key");
        std::fs::write(
            &stray_key,
            KeyPair::generate().expect("key").serialize_pem(),
        )
        .expect("write key");
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
            v1_cert,
            v1_key,
            stray_key,
        }
    }
}

/// A DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let length = content.len().to_be_bytes();
    let skip = length.iter().take_while(|b| **b == 0).count();
    match content.len() {
        0..=0x7f => out.push(content.len() as u8),
        _ => {
            out.push(0x80 | (length.len() - skip) as u8);
            out.extend_from_slice(&length[skip..]);
        }
    }
    out.extend_from_slice(content);
    out
}

/// What `openssl x509 -req -in gw.csr -CA ca.pem -CAkey ca.key` makes: a certificate with no
/// version field and no extensions (X.509 v1). rcgen only writes v3, so the TBS certificate is
/// put together here from the parts of a v3 one and signed with the CA's key.
fn v1_leaf(
    dir: &Path,
    name: &str,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (PathBuf, PathBuf) {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (v3_path, key_path) = leaf(
        dir,
        name,
        issuer,
        vec![],
        ExtendedKeyUsagePurpose::ClientAuth,
        false,
    );
    let pem = std::fs::read(&v3_path).expect("read v3");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
    let (_, v3) = X509Certificate::from_der(&pem.contents).expect("DER");
    let tbs = &v3.tbs_certificate;
    // ecdsa-with-SHA256, rcgen's default key type.
    let algorithm = der(
        0x30,
        &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
    );
    let validity = [der(0x17, b"200101000000Z"), der(0x17, b"491231235959Z")].concat();
    let body = [
        der(0x02, tbs.raw_serial()),
        algorithm.clone(),
        tbs.issuer.as_raw().to_vec(),
        der(0x30, &validity),
        tbs.subject.as_raw().to_vec(),
        tbs.subject_pki.raw.to_vec(),
    ]
    .concat();
    let tbs_der = der(0x30, &body);
    let signature = issuer.key().sign(&tbs_der).expect("sign");
    let bit_string = [&[0u8][..], &signature].concat();
    let cert = der(0x30, &[tbs_der, algorithm, der(0x03, &bit_string)].concat());
    let text = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64(&cert)
    );
    std::fs::write(&v3_path, text).expect("write v1 cert");
    (v3_path, key_path)
}

/// Standard base64, wrapped at 64 characters as PEM wants.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text.as_bytes()
        .chunks(64)
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}
