//! The consumer: batches from the broker into the store, each acknowledged (PUBACK) only after
//! its COMMIT. No rumqttc here: the connection is [`crate::uplink::mqtt::Subscription`] (the one
//! file that imports rumqttc and rustls), with manual acks and a persistent session under a stable
//! client id, so a message never acknowledged (the ingest died mid-transaction, PostgreSQL went
//! away) is sent again by the broker when this replica reconnects.
//!
//! One message at a time per replica: decode, write (one transaction), acknowledge. A message
//! that is not a batch, or a batch that can never fit the schema, is logged as an ERROR and
//! acknowledged (it would otherwise come back forever); a database error drops the connection
//! unacknowledged and reconnects both after a backoff.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::store::{Store, StoreError};
use super::{IngestConfig, MqttSettings};
use crate::backoff::Backoff;
use crate::uplink::mqtt::{SubscriberEvent, SubscriberSettings, Subscription, UplinkError};
use crate::uplink::payload;
use crate::uplink::{CaSource, TlsSettings};

/// The largest batch accepted: the gateway's `max-payload-size` limit.
const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// PostgreSQL.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker.
    #[error(transparent)]
    Broker(#[from] UplinkError),
}

/// The subscriber settings of an ingest's `[mqtt]`.
pub fn subscriber_settings(mqtt: &MqttSettings) -> SubscriberSettings {
    SubscriberSettings {
        host: mqtt.host.clone(),
        port: mqtt.port,
        tls: mqtt.tls.then(|| TlsSettings {
            ca: match &mqtt.ca_file {
                Some(path) => CaSource::File(path.clone()),
                None => CaSource::System,
            },
            client_auth: mqtt.client_cert.clone(),
            alpn: Vec::new(),
        }),
        credentials: mqtt.credentials.clone(),
        client_id: mqtt.client_id.clone(),
        filter: mqtt.shared_filter(),
        max_payload_bytes: MAX_PAYLOAD,
    }
}

/// Consumes until `shutdown`, reconnecting (with backoff) after any failure.
pub async fn run(config: &IngestConfig, mqtt: &MqttSettings, shutdown: CancellationToken) {
    let settings = subscriber_settings(mqtt);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut rng = fastrand::Rng::new();
    loop {
        match connection(&config.postgres_url, &settings, &shutdown, &mut backoff).await {
            Ok(()) => return,
            Err(err) => {
                let delay = backoff.next_delay(&mut rng);
                log::warn!("ingest: {err}; messages not acknowledged will come again; reconnecting in {} ms", delay.as_millis());
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// One connection to each side; `Ok` only on shutdown.
async fn connection(
    url: &str,
    settings: &SubscriberSettings,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), ConsumeError> {
    let mut store = Store::open(url).await?;
    let mut subscription = Subscription::open(settings)?;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => {
                subscription.disconnect().await;
                return Ok(());
            }
            event = subscription.events.recv() => event,
        };
        let delivery = match event {
            None => return Err(UplinkError::Closed("the connection task ended".into()).into()),
            Some(SubscriberEvent::Lost(err)) => return Err(err.into()),
            Some(SubscriberEvent::Subscribed) => {
                backoff.reset();
                log::info!(
                    "ingest: subscribed to {} on {}:{} as {}",
                    settings.filter,
                    settings.host,
                    settings.port,
                    settings.client_id
                );
                continue;
            }
            Some(SubscriberEvent::Message(delivery)) => delivery,
        };
        match payload::decode(&delivery.payload) {
            Err(err) => log::error!(
                "ingest: a message on {} is not a votegate batch ({err}): acknowledged and dropped",
                delivery.topic
            ),
            Ok(batch) => match store.ingest_batch(&batch).await {
                Ok(outcome) => log::debug!(
                    "ingest: batch {} of {}: {} new, {} duplicates, {} conflicts",
                    batch.batch_id,
                    batch.gateway_id,
                    outcome.inserted,
                    outcome.duplicates,
                    outcome.conflicts
                ),
                Err(StoreError::Invalid(err)) => {
                    log::error!("ingest: {err}: acknowledged and dropped (it can never be written)")
                }
                // Not acknowledged: dropping the connection makes the broker send it again.
                Err(err) => return Err(err.into()),
            },
        }
        subscription.ack(&delivery).await?;
    }
}
