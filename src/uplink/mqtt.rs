//! The connection to the broker: the only file that imports rumqttc and rustls.
//!
//! rustls uses the ring provider; the broker's certificate is always verified (against
//! `ca-file` or the system's roots). Each [`Session`] is a fresh rumqttc client with a clean
//! session, driven by its own task that forwards what the uplink needs (connected, packet id
//! written, packet id acknowledged, lost) and stops at the first error: rumqttc never reconnects
//! by itself, so no publish is ever resent behind the uplink's back.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls::{self, pki_types, ClientConfig, RootCertStore};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    StateError, TlsConfiguration, Transport,
};
use rustls_pki_types::pem::PemObject;
use tokio::sync::mpsc;

use super::{CaSource, FaultKind, TlsSettings, UplinkSettings};

/// Incoming MQTT packets are small (acks); this bounds what a broker may send.
const MAX_INCOMING_PACKET: usize = 64 * 1024;
/// Room for the topic and the MQTT header around a payload.
const PACKET_OVERHEAD: usize = 4096;
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A broker problem, in one sentence that says which step failed and what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UplinkError {
    /// A key file could not be used.
    #[error("cannot use {what} {path}: {cause}")]
    File {
        /// Which file (CA file, client certificate, …).
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        cause: String,
    },
    /// The broker's name does not resolve.
    #[error("cannot resolve the broker's name {host}: {cause}")]
    Dns {
        /// The host.
        host: String,
        /// Why.
        cause: String,
    },
    /// No TCP connection.
    #[error("cannot connect to the broker at {addr}: {cause}")]
    Tcp {
        /// host:port.
        addr: String,
        /// Why.
        cause: String,
    },
    /// The broker's certificate is not trusted; the reason as a plain sentence.
    #[error("the broker's certificate was rejected: {0}")]
    ServerCertificate(String),
    /// The broker rejected our client certificate (the TLS alert, in words).
    #[error("the broker refused our client certificate ({0}): expired, or not signed by a CA the broker trusts? (`votegate check --offline` checks it)")]
    ClientCertificate(String),
    /// The broker ended the TLS handshake with an alert (no common protocol version, cipher
    /// or ALPN protocol): the two ends are configured for each other wrongly.
    #[error("the broker refused the TLS handshake: {0} (check uplink.alpn and the broker's TLS settings)")]
    TlsAlert(String),
    /// The system has no trusted CA certificates to check the broker's against.
    #[error("no trusted CA certificates found on this system (install ca-certificates, or set uplink.ca-file)")]
    NoTrustedRoots,
    /// Another TLS failure (often the connection breaking during the handshake).
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The broker refused the MQTT connection.
    #[error("the broker refused the connection: {0} (check uplink.username/password-file or the certificate's permissions)")]
    Refused(Refusal),
    /// The broker or the network closed the connection.
    #[error("the connection to the broker was closed: {0}")]
    Closed(String),
    /// No answer in time.
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    /// Anything else from the MQTT layer.
    #[error("MQTT error: {0}")]
    Protocol(String),
}

/// Why a broker refused an MQTT CONNECT (its CONNACK return code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The broker does not speak our MQTT version.
    ProtocolVersion,
    /// The client id is not allowed.
    BadClientId,
    /// The broker is up but not serving.
    ServiceUnavailable,
    /// Wrong user name or password.
    BadCredentials,
    /// Not authorised (ACL, certificate identity).
    NotAuthorized,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::ProtocolVersion => "unsupported protocol version",
            Refusal::BadClientId => "client id rejected",
            Refusal::ServiceUnavailable => "service unavailable",
            Refusal::BadCredentials => "bad user name or password",
            Refusal::NotAuthorized => "not authorised",
        })
    }
}

impl UplinkError {
    /// Fills in the broker's host and port where the error did not know them.
    fn at(self, (host, port): &(String, u16)) -> UplinkError {
        match self {
            UplinkError::Dns { host: h, cause } if h.is_empty() => UplinkError::Dns {
                host: host.clone(),
                cause,
            },
            UplinkError::Tcp { addr, cause } if addr.is_empty() => UplinkError::Tcp {
                addr: format!("{host}:{port}"),
                cause,
            },
            other => other,
        }
    }

    /// Whether only a change of configuration (or of the broker's) can fix this, or time may.
    pub fn fault(&self) -> FaultKind {
        match self {
            UplinkError::File { .. }
            | UplinkError::ServerCertificate(_)
            | UplinkError::ClientCertificate(_)
            | UplinkError::TlsAlert(_)
            | UplinkError::NoTrustedRoots
            | UplinkError::Refused(
                Refusal::ProtocolVersion
                | Refusal::BadClientId
                | Refusal::BadCredentials
                | Refusal::NotAuthorized,
            ) => FaultKind::Configuration,
            UplinkError::Refused(Refusal::ServiceUnavailable)
            | UplinkError::Dns { .. }
            | UplinkError::Tcp { .. }
            | UplinkError::Tls(_)
            | UplinkError::Closed(_)
            | UplinkError::Timeout(_)
            | UplinkError::Protocol(_) => FaultKind::Network,
        }
    }
}

/// What a session reports to the uplink.
#[derive(Debug)]
pub enum SessionEvent {
    /// The broker accepted the connection (ConnAck).
    Connected,
    /// A publish was written with this packet id (0 for QoS 0), in request order.
    Written(u16),
    /// The broker acknowledged this packet id (PubAck).
    Acked(u16),
    /// The session is over.
    Lost(UplinkError),
}

/// One connection to the broker.
pub struct Session {
    client: AsyncClient,
    /// What happens on the connection.
    pub events: mpsc::UnboundedReceiver<SessionEvent>,
    driver: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Starts connecting. Reads the key files now, so their problems come back at once.
    pub fn open(settings: &UplinkSettings) -> Result<Session, UplinkError> {
        let options = options(settings, false)?;
        let (client, eventloop) = AsyncClient::new(options, 64);
        let (sender, events) = mpsc::unbounded_channel();
        let endpoint = (settings.host.clone(), settings.port);
        let driver = tokio::spawn(drive(eventloop, sender, endpoint));
        Ok(Session {
            client,
            events,
            driver,
        })
    }

    /// Requests a publish (QoS 1, or 0 when `at_least_once` is false). Returns once rumqttc has
    /// queued it; [`SessionEvent::Written`] follows when it is on the wire.
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        at_least_once: bool,
        retain: bool,
    ) -> Result<(), UplinkError> {
        let qos = if at_least_once {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .map_err(|err| UplinkError::Closed(err.to_string()))
    }

    /// Sends DISCONNECT (so the broker does not publish the last will) and waits briefly for it
    /// to leave.
    pub async fn disconnect(mut self) {
        disconnect_and_wait(&self.client, &mut self.events, |event| {
            matches!(event, SessionEvent::Lost(_))
        })
        .await;
    }
}

/// Sends DISCONNECT and waits up to 2 s for the event loop to report the connection gone.
async fn disconnect_and_wait<E>(
    client: &AsyncClient,
    events: &mut mpsc::UnboundedReceiver<E>,
    is_lost: impl Fn(&E) -> bool,
) {
    if client.disconnect().await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(event) = events.recv().await {
                if is_lost(&event) {
                    break;
                }
            }
        })
        .await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn drive(
    mut eventloop: EventLoop,
    sender: mpsc::UnboundedSender<SessionEvent>,
    endpoint: (String, u16),
) {
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => SessionEvent::Connected,
            Ok(Event::Incoming(Packet::PubAck(ack))) => SessionEvent::Acked(ack.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => SessionEvent::Written(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = sender.send(SessionEvent::Lost(UplinkError::Closed(
                    "we disconnected".into(),
                )));
                return;
            }
            Ok(_) => continue,
            Err(err) => {
                let _ = sender.send(SessionEvent::Lost(classify(&err).at(&endpoint)));
                return; // never poll again: that would reconnect behind the uplink's back
            }
        };
        if sender.send(event).is_err() {
            return;
        }
    }
}

fn options(settings: &UplinkSettings, probe: bool) -> Result<MqttOptions, UplinkError> {
    let client_id = if probe {
        format!("{}-check", settings.client_id)
    } else {
        settings.client_id.clone()
    };
    let mut options = MqttOptions::new(client_id, settings.host.clone(), settings.port);
    options
        .set_keep_alive(settings.keepalive)
        .set_clean_session(true)
        .set_max_packet_size(
            MAX_INCOMING_PACKET,
            settings.max_payload_bytes + PACKET_OVERHEAD,
        )
        .set_inflight(u16::try_from(settings.max_in_flight + 8).unwrap_or(u16::MAX));
    if !probe {
        options.set_last_will(LastWill::new(
            settings.status_topic(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
    }
    if let (Some(username), Some(file)) = (&settings.username, &settings.password_file) {
        let text =
            std::fs::read_to_string(file).map_err(|e| file_error("password file", file, e))?;
        let password = text.lines().next().unwrap_or_default().to_string();
        options.set_credentials(username.clone(), password);
    }
    if let Some(tls) = &settings.tls {
        let config = client_config(tls)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )));
    }
    Ok(options)
}

fn file_error(what: &'static str, path: &Path, cause: impl ToString) -> UplinkError {
    UplinkError::File {
        what,
        path: path.display().to_string(),
        cause: cause.to_string(),
    }
}

/// The rustls configuration: ring provider, verified server certificate, optional client
/// certificate and ALPN.
fn client_config(tls: &TlsSettings) -> Result<ClientConfig, UplinkError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        CaSource::File(path) => {
            let certs = read_certs("CA file", path)?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| file_error("CA file", path, e))?;
            }
        }
        CaSource::System => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(UplinkError::NoTrustedRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UplinkError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &tls.client_auth {
        Some((cert_path, key_path)) => {
            let chain = read_certs("client certificate", cert_path)?;
            let key = pki_types::PrivateKeyDer::from_pem_file(key_path).map_err(|e| match e {
                pki_types::pem::Error::NoItemsFound => {
                    file_error("client key", key_path, "no PEM private key in it")
                }
                other => file_error("client key", key_path, other),
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                file_error(
                    "client certificate and key",
                    cert_path,
                    client_auth_problem(&e),
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(config)
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<pki_types::CertificateDer<'static>>, UplinkError> {
    let certs: Vec<_> = pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The rustls error behind an error, however deep rumqttc wrapped it (TLS alerts that arrive
/// after the handshake come as I/O errors inside MQTT (de)serialisation errors).
fn rustls_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return Some(tls);
            }
        }
        current = error.source();
    }
    None
}

/// Turns a rumqttc error into the step that failed.
fn classify(err: &ConnectionError) -> UplinkError {
    if let Some(tls) = rustls_cause(err) {
        return classify_rustls(tls);
    }
    match err {
        ConnectionError::Io(io) => classify_io(io),
        ConnectionError::MqttState(StateError::Io(io)) => classify_io(io),
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            UplinkError::Closed("by the broker".into())
        }
        ConnectionError::MqttState(other) => UplinkError::Protocol(other.to_string()),
        ConnectionError::Tls(rumqttc::TlsError::TLS(tls)) => classify_rustls(tls),
        ConnectionError::Tls(rumqttc::TlsError::Io(io)) => classify_io(io),
        ConnectionError::Tls(other) => UplinkError::Tls(other.to_string()),
        ConnectionError::ConnectionRefused(code) => UplinkError::Refused(refusal(*code)),
        ConnectionError::NetworkTimeout | ConnectionError::FlushTimeout => {
            UplinkError::Timeout(STEP_TIMEOUT)
        }
        other => UplinkError::Protocol(other.to_string()),
    }
}

fn refusal(code: rumqttc::ConnectReturnCode) -> Refusal {
    use rumqttc::ConnectReturnCode as Code;
    match code {
        Code::RefusedProtocolVersion => Refusal::ProtocolVersion,
        Code::BadClientId => Refusal::BadClientId,
        Code::ServiceUnavailable => Refusal::ServiceUnavailable,
        Code::BadUserNamePassword => Refusal::BadCredentials,
        // `Success` never comes as a refusal.
        Code::NotAuthorized | Code::Success => Refusal::NotAuthorized,
    }
}

fn classify_io(io: &std::io::Error) -> UplinkError {
    if let Some(tls) = io
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return classify_rustls(tls);
    }
    let text = io.to_string();
    match io.kind() {
        _ if text.contains("lookup address") || text.contains("Name or service not known") => {
            UplinkError::Dns {
                host: String::new(),
                cause: text,
            }
        }
        std::io::ErrorKind::ConnectionRefused
        | std::io::ErrorKind::TimedOut
        | std::io::ErrorKind::HostUnreachable
        | std::io::ErrorKind::NetworkUnreachable => UplinkError::Tcp {
            addr: String::new(),
            cause: text,
        },
        _ => UplinkError::Closed(text),
    }
}

fn classify_rustls(err: &rustls::Error) -> UplinkError {
    use rustls::AlertDescription as Alert;
    match err {
        rustls::Error::InvalidCertificate(reason) => {
            UplinkError::ServerCertificate(server_certificate_problem(reason))
        }
        rustls::Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::CertificateExpired
            | Alert::CertificateRevoked
            | Alert::CertificateUnknown
            | Alert::UnknownCA
            | Alert::CertificateRequired
            | Alert::UnsupportedCertificate),
        ) => UplinkError::ClientCertificate(alert_words(alert)),
        rustls::Error::AlertReceived(
            alert @ (Alert::HandshakeFailure
            | Alert::ProtocolVersion
            | Alert::InsufficientSecurity
            | Alert::NoApplicationProtocol
            | Alert::AccessDenied),
        ) => UplinkError::TlsAlert(alert_words(alert)),
        other => UplinkError::Tls(other.to_string()),
    }
}

/// What the X.509 v1 refusal says: webpki reports it only as an "other" error.
const V1_CERTIFICATE: &str = "UnsupportedCertVersion";

/// Why rustls refused the broker's certificate, as a plain sentence that says what to change.
fn server_certificate_problem(err: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match err {
        E::UnknownIssuer => "it is not signed by a CA in uplink.ca-file (or, without ca-file, by one this system trusts)".into(),
        E::NotValidForNameContext { expected, presented } => format!(
            "it is not valid for {} (it names: {}): set uplink.host to one of those, or have the certificate reissued for this name",
            expected.to_str(),
            presented_names(presented)
        ),
        E::NotValidForName => "it is not valid for uplink.host".into(),
        E::ExpiredContext { not_after, .. } => {
            format!("it expired on {}", utc_date(not_after.as_secs()))
        }
        E::Expired => "it has expired".into(),
        E::NotValidYetContext { not_before, .. } => format!(
            "it is not valid before {} (is this machine's clock right?)",
            utc_date(not_before.as_secs())
        ),
        E::NotValidYet => "it is not valid yet (is this machine's clock right?)".into(),
        E::Revoked => "it has been revoked".into(),
        E::BadSignature => "its signature does not verify with its CA's key".into(),
        E::BadEncoding => "it is malformed".into(),
        E::InvalidPurpose | E::InvalidPurposeContext { .. } => {
            "it is not made for a TLS server (its extended key usage lacks serverAuth)".into()
        }
        E::UnhandledCriticalExtension => "it has a critical extension TLS does not know".into(),
        E::Other(other) if other.to_string().contains(V1_CERTIFICATE) => {
            "it is an X.509 v1 certificate, made without extensions, which TLS refuses: the broker's certificate must be signed again with extensions (`openssl x509 -req … -extfile`, or `-copy_extensions copyall` with OpenSSL 3)".into()
        }
        other => format!("it failed verification ({other:?})"),
    }
}

/// Why rustls refused our client certificate and key when loading them.
fn client_auth_problem(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))
            if other.to_string().contains(V1_CERTIFICATE) =>
        {
            "it is an X.509 v1 certificate, made without extensions, which TLS refuses: sign it again with extensions (`openssl x509 -req … -extfile client.ext`, or `-copy_extensions copyall` with OpenSSL 3)".into()
        }
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            "uplink.client-key does not belong to this certificate (their public keys differ)".into()
        }
        rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding) => {
            "the certificate is malformed".into()
        }
        other => other.to_string(),
    }
}

/// The names a certificate holds, as webpki lists them (`DnsName("x")`, `IpAddress(1.2.3.4)`).
fn presented_names(presented: &[String]) -> String {
    if presented.is_empty() {
        return "no host names at all".into();
    }
    presented
        .iter()
        .map(|name| {
            let inner = name
                .split_once('(')
                .map_or(name.as_str(), |(_, rest)| rest.trim_end_matches(')'));
            inner.trim_matches('"').to_string()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A TLS alert in words: `CertificateExpired` → "certificate expired".
fn alert_words(alert: &rustls::AlertDescription) -> String {
    let name = format!("{alert:?}");
    let mut words = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
        let prev_lower = i > 0 && chars[i - 1].is_lowercase();
        if i > 0 && c.is_uppercase() && (prev_lower || next_lower) {
            words.push(' ');
        }
        if c.is_uppercase() && next_lower {
            words.extend(c.to_lowercase());
        } else {
            words.push(*c);
        }
    }
    format!("TLS alert: {words}")
}

/// Seconds since 1970 as `2027-03-01 12:00 UTC`.
fn utc_date(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| format!("{unix} s after 1970"))
}

/// `votegate check`: each step in turn (DNS, TCP, TLS, MQTT CONNECT), with a client id of its
/// own and no last will, so it never disturbs a running daemon's session. Returns what passed,
/// or the step that failed.
pub async fn probe(settings: &UplinkSettings) -> Result<String, (&'static str, UplinkError)> {
    let options = options(settings, true).map_err(|e| ("configuration", e))?;
    let host = settings.host.clone();
    let addrs: Vec<_> = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), settings.port)),
    )
    .await
    .map_err(|_| ("DNS", UplinkError::Timeout(STEP_TIMEOUT)))?
    .map_err(|e| {
        (
            "DNS",
            UplinkError::Dns {
                host: host.clone(),
                cause: e.to_string(),
            },
        )
    })?
    .collect();
    let addr = *addrs.first().ok_or((
        "DNS",
        UplinkError::Dns {
            host: host.clone(),
            cause: "no address".into(),
        },
    ))?;
    let tcp = tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| ("TCP", UplinkError::Timeout(STEP_TIMEOUT)))?
        .map_err(|e| {
            (
                "TCP",
                UplinkError::Tcp {
                    addr: addr.to_string(),
                    cause: e.to_string(),
                },
            )
        })?;
    if let Some(tls) = &settings.tls {
        let config = client_config(tls).map_err(|e| ("TLS", e))?;
        let name = pki_types::ServerName::try_from(host.clone()).map_err(|e| {
            (
                "TLS",
                UplinkError::Tls(format!("{host:?} is not a valid server name: {e}")),
            )
        })?;
        let connector = rumqttc::tokio_rustls::TlsConnector::from(Arc::new(config));
        tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| ("TLS", UplinkError::Timeout(STEP_TIMEOUT)))?
            .map_err(|e| ("TLS", classify_io(&e)))?;
    }
    let (client, eventloop) = AsyncClient::new(options, 4);
    let (sender, mut events) = mpsc::unbounded_channel();
    let driver = tokio::spawn(drive(eventloop, sender, (host, settings.port)));
    let result = tokio::time::timeout(STEP_TIMEOUT, events.recv()).await;
    let _ = client.disconnect().await;
    driver.abort();
    match result {
        Ok(Some(SessionEvent::Connected)) => Ok(format!(
            "{}:{} accepts {} (MQTT CONNECT as {}-check)",
            settings.host,
            settings.port,
            match &settings.tls {
                Some(tls) if tls.client_auth.is_some() => "TLS with our client certificate",
                Some(_) => "TLS",
                None => "a plain connection",
            },
            settings.client_id
        )),
        Ok(Some(SessionEvent::Lost(UplinkError::ClientCertificate(detail)))) => Err((
            "TLS (client certificate)",
            UplinkError::ClientCertificate(detail),
        )),
        Ok(Some(SessionEvent::Lost(err @ UplinkError::Refused(_)))) => Err(("authorisation", err)),
        Ok(Some(SessionEvent::Lost(err))) => Err(("MQTT", err)),
        Ok(Some(_)) | Ok(None) => Err((
            "MQTT",
            UplinkError::Protocol("unexpected first event".into()),
        )),
        Err(_) => Err(("MQTT", UplinkError::Timeout(STEP_TIMEOUT))),
    }
}

/// A subscriber's broker settings (the cloud ingest's `[mqtt]`): the uplink's connection keys,
/// plus a topic filter it subscribes to at QoS 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriberSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS, or `None` for plain MQTT.
    pub tls: Option<TlsSettings>,
    /// Username and password file.
    pub credentials: Option<(String, std::path::PathBuf)>,
    /// Client id: stable, so that the broker keeps the session (and the messages not yet
    /// acknowledged) while the client is away.
    pub client_id: String,
    /// What to subscribe to, e.g. `$share/votegate-ingest/votegate/+/+/votes`.
    pub filter: String,
    /// The largest message accepted.
    pub max_payload_bytes: usize,
}

/// What happens on a subscriber's connection.
#[derive(Debug)]
pub enum SubscriberEvent {
    /// The broker granted the subscription.
    Subscribed,
    /// A message: acknowledge it with [`Subscription::ack`] once it is safe.
    Message(Delivery),
    /// The connection is over (refused, lost, or the subscription was refused).
    Lost(UplinkError),
}

/// A message received at QoS 1, not yet acknowledged.
#[derive(Debug)]
pub struct Delivery {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    publish: rumqttc::Publish,
}

/// One subscriber connection with manual acknowledgements and a persistent session: a message is
/// acknowledged (PUBACK) only when [`Subscription::ack`] says so; one never acknowledged is sent
/// again by the broker when this client id reconnects. Like [`Session`], it stops at the first
/// error (the caller reconnects).
pub struct Subscription {
    client: AsyncClient,
    /// What happens on the connection.
    pub events: mpsc::UnboundedReceiver<SubscriberEvent>,
    driver: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// Starts connecting; subscribes after the broker's CONNACK.
    pub fn open(settings: &SubscriberSettings) -> Result<Subscription, UplinkError> {
        let mut options = MqttOptions::new(
            settings.client_id.clone(),
            settings.host.clone(),
            settings.port,
        );
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(
                settings.max_payload_bytes + PACKET_OVERHEAD,
                MAX_INCOMING_PACKET,
            );
        if let Some((username, file)) = &settings.credentials {
            let text =
                std::fs::read_to_string(file).map_err(|e| file_error("password file", file, e))?;
            let password = text.lines().next().unwrap_or_default().to_string();
            options.set_credentials(username.clone(), password);
        }
        if let Some(tls) = &settings.tls {
            let config = client_config(tls)?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(config),
            )));
        }
        let (client, eventloop) = AsyncClient::new(options, 64);
        let (sender, events) = mpsc::unbounded_channel();
        let endpoint = (settings.host.clone(), settings.port);
        let driver = tokio::spawn(drive_subscriber(
            eventloop,
            client.clone(),
            settings.filter.clone(),
            sender,
            endpoint,
        ));
        Ok(Subscription {
            client,
            events,
            driver,
        })
    }

    /// Acknowledges a message (PUBACK): the broker may forget it.
    pub async fn ack(&self, delivery: &Delivery) -> Result<(), UplinkError> {
        self.client
            .ack(&delivery.publish)
            .await
            .map_err(|err| UplinkError::Closed(err.to_string()))
    }

    /// Sends DISCONNECT and waits briefly for it to leave.
    pub async fn disconnect(mut self) {
        disconnect_and_wait(&self.client, &mut self.events, |event| {
            matches!(event, SubscriberEvent::Lost(_))
        })
        .await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn drive_subscriber(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filter: String,
    sender: mpsc::UnboundedSender<SubscriberEvent>,
    endpoint: (String, u16),
) {
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // try_subscribe: this task must never wait on the request queue it drains.
                if let Err(err) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    SubscriberEvent::Lost(UplinkError::Closed(err.to_string()))
                } else {
                    continue;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|code| matches!(code, rumqttc::SubscribeReasonCode::Failure));
                if refused {
                    SubscriberEvent::Lost(UplinkError::Closed(format!(
                        "the broker refused the subscription to {filter} (not authorised?)"
                    )))
                } else {
                    SubscriberEvent::Subscribed
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => SubscriberEvent::Message(Delivery {
                topic: publish.topic.clone(),
                payload: publish.payload.to_vec(),
                publish,
            }),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = sender.send(SubscriberEvent::Lost(UplinkError::Closed(
                    "we disconnected".into(),
                )));
                return;
            }
            Ok(_) => continue,
            Err(err) => {
                let _ = sender.send(SubscriberEvent::Lost(classify(&err).at(&endpoint)));
                return;
            }
        };
        let lost = matches!(event, SubscriberEvent::Lost(_));
        if sender.send(event).is_err() || lost {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use rustls::CertificateError as E;

    #[test]
    fn a_name_mismatch_reads_as_one_sentence() {
        let err = rustls::Error::InvalidCertificate(E::NotValidForNameContext {
            expected: pki_types::ServerName::IpAddress(
                std::net::IpAddr::from([127, 0, 0, 1]).into(),
            ),
            presented: vec![
                "DnsName(\"broker.example.com\")".into(),
                "IpAddress(10.0.0.7)".into(),
            ],
        });
        assert_eq!(
            classify_rustls(&err).to_string(),
            "the broker's certificate was rejected: it is not valid for 127.0.0.1 (it names: broker.example.com, 10.0.0.7): set uplink.host to one of those, or have the certificate reissued for this name"
        );
    }

    #[test]
    fn a_v1_certificate_names_the_openssl_fix() {
        let other = || {
            E::Other(rustls::OtherError(Arc::new(std::io::Error::other(
                "UnsupportedCertVersion",
            ))))
        };
        let server = classify_rustls(&rustls::Error::InvalidCertificate(other())).to_string();
        assert!(
            server.starts_with(
                "the broker's certificate was rejected: it is an X.509 v1 certificate"
            ) && server.contains("-extfile"),
            "{server}"
        );
        let client = client_auth_problem(&rustls::Error::InvalidCertificate(other()));
        assert!(
            client.contains("X.509 v1") && client.contains("-copy_extensions"),
            "{client}"
        );
    }

    #[test]
    fn certificate_verdicts_name_no_rust_types() {
        let verdicts = [
            E::UnknownIssuer,
            E::ExpiredContext {
                time: pki_types::UnixTime::since_unix_epoch(Duration::from_secs(1_700_000_000)),
                not_after: pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
                    1_609_459_200,
                )),
            },
            E::NotValidYet,
            E::BadSignature,
            E::InvalidPurpose,
        ];
        for verdict in verdicts {
            let text = classify_rustls(&rustls::Error::InvalidCertificate(verdict)).to_string();
            assert!(
                text.starts_with("the broker's certificate was rejected: it")
                    && !text.contains("Context")
                    && !text.contains('{'),
                "{text}"
            );
        }
        assert!(server_certificate_problem(&E::ExpiredContext {
            time: pki_types::UnixTime::now(),
            not_after: pki_types::UnixTime::since_unix_epoch(Duration::from_secs(1_609_459_200)),
        })
        .ends_with("expired on 2021-01-01 00:00 UTC"));
        assert_eq!(
            client_auth_problem(&rustls::Error::InconsistentKeys(
                rustls::InconsistentKeys::KeyMismatch
            )),
            "uplink.client-key does not belong to this certificate (their public keys differ)"
        );
    }

    #[test]
    fn alerts_read_as_words() {
        use rustls::AlertDescription as A;
        assert_eq!(
            alert_words(&A::CertificateExpired),
            "TLS alert: certificate expired"
        );
        assert_eq!(alert_words(&A::UnknownCA), "TLS alert: unknown CA");
        assert_eq!(
            alert_words(&A::BadCertificate),
            "TLS alert: bad certificate"
        );
    }

    use crate::uplink::PayloadFormat;

    fn settings(ca_file: &Path) -> UplinkSettings {
        UplinkSettings {
            host: "broker.test".into(),
            port: 8883,
            tls: Some(TlsSettings {
                ca: CaSource::File(ca_file.to_path_buf()),
                client_auth: None,
                alpn: vec!["votegate-test".into()],
            }),
            username: None,
            password_file: None,
            client_id: "gw-test".into(),
            topic_prefix: "votegate/site/gw-test".into(),
            format: PayloadFormat::Json,
            max_batch_votes: 100,
            max_payload_bytes: 64 * 1024,
            max_batch_age: Duration::from_secs(1),
            max_in_flight: 4,
            keepalive: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(60),
            telemetry_interval: Duration::from_secs(60),
            max_publishes_per_second: None,
            max_bytes_per_second: None,
        }
    }

    /// deny.toml ignores the advisories of rustls-webpki 0.102, which rumqttc 0.25 pins, because
    /// rumqttc never builds a TLS configuration of its own for votegate: it gets the finished
    /// rustls `ClientConfig` (ring provider, rustls's own verifier on rustls-webpki 0.103) and
    /// passes it to tokio-rustls as it is. Were this a `TlsConfiguration::Simple`, rumqttc would
    /// parse the PEM files itself (with rustls-pemfile) and build the config.
    #[test]
    fn rumqttc_gets_the_client_config_votegate_built() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = rcgen::generate_simple_self_signed(vec!["broker.test".into()]).expect("a CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert.pem()).expect("write the CA");
        let options = options(&settings(&ca_file), false).expect("options");
        let Transport::Tls(TlsConfiguration::Rustls(config)) = options.transport() else {
            panic!("rumqttc must get votegate's own rustls ClientConfig");
        };
        // Ours: the ALPN list votegate set, and ring's cipher suites (not aws-lc's).
        assert_eq!(config.alpn_protocols, [b"votegate-test".to_vec()]);
        let suites = |provider: &rustls::crypto::CryptoProvider| {
            provider
                .cipher_suites
                .iter()
                .map(|suite| suite.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            suites(config.crypto_provider()),
            suites(&rustls::crypto::ring::default_provider())
        );
    }
}
