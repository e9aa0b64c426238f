//! The consumer: batches from the broker into the store, each acknowledged (PUBACK) only after
//! its COMMIT. No rumqttc here: the connection is [`crate::uplink::mqtt::Subscription`] (the one
//! file that imports rumqttc and rustls), with manual acks and a persistent session under a stable
//! client id, so a message never acknowledged (the ingest died mid-transaction, PostgreSQL went
//! away) is sent again by the broker when this replica reconnects.
//!
//! Each replica writes with `connections` PostgreSQL connections at once. A batch goes to the
//! connection its gateway hashes to (one gateway's batches stay in order and never wait on each
//! other's ledger row lock); acknowledgements go out in arrival order ([`super::acks`]). A message
//! that is not a batch, or a batch that can never fit the schema, is logged as an ERROR and
//! acknowledged (it would otherwise come back forever); a database error drops the broker
//! connection with everything not yet acknowledged and reconnects both after a backoff: the broker
//! sends those messages again, and what was already committed comes back as duplicates.

use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::acks::{AckOrder, Ticket};
use super::metrics::{IngestMetrics, LedgerView};
use super::report::Report;
use super::store::{Store, StoreError};
use super::{IngestConfig, MqttSettings};
use crate::backoff::Backoff;
use crate::uplink::mqtt::{
    Delivery, SubscriberEvent, SubscriberSettings, Subscription, UplinkError,
};
use crate::uplink::payload::{self, BatchPayload};

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
        tls: mqtt.tls_settings(),
        credentials: mqtt.credentials.clone(),
        client_id: mqtt.client_id.clone(),
        filter: mqtt.shared_filter(),
        max_payload_bytes: MAX_PAYLOAD,
    }
}

/// Batches waiting for each connection, at most. Beyond it the dispatcher waits; what the broker
/// sends meanwhile waits in the subscription's channel, bounded by the broker's in-flight window
/// for this client (Mosquitto: `max_inflight_messages`, which must stay finite: README).
const QUEUE_PER_CONNECTION: usize = 8;

/// How long a shutdown waits for the batches being written, to acknowledge them.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Consumes until `shutdown`, reconnecting (with backoff) after any failure.
pub async fn run(
    config: &IngestConfig,
    mqtt: &MqttSettings,
    metrics: Arc<IngestMetrics>,
    shutdown: CancellationToken,
) {
    let settings = subscriber_settings(mqtt);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut rng = fastrand::Rng::new();
    loop {
        let result = connection(config, &settings, &metrics, &shutdown, &mut backoff).await;
        metrics.subscribed.store(false, Ordering::Relaxed);
        metrics.database_connections.store(0, Ordering::Relaxed);
        metrics.unacknowledged.store(0, Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(err) => {
                match err {
                    ConsumeError::Store(_) => &metrics.database_failures,
                    ConsumeError::Broker(_) => &metrics.broker_failures,
                }
                .fetch_add(1, Ordering::Relaxed);
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

/// A batch for a connection.
struct Job {
    ticket: Ticket,
    batch: BatchPayload,
}

/// A connection's word on a job: finished (committed, or refused for good), or failed.
struct Done {
    ticket: Ticket,
    failure: Option<StoreError>,
}

/// Which connection writes a gateway's batches.
fn connection_for(gateway_id: &str, connections: usize) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    gateway_id.hash(&mut hasher);
    (hasher.finish() % connections.max(1) as u64) as usize
}

/// One connection to the broker and `connections` to PostgreSQL; `Ok` only on shutdown.
async fn connection(
    config: &IngestConfig,
    settings: &SubscriberSettings,
    metrics: &Arc<IngestMetrics>,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), ConsumeError> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut writers = tokio::task::JoinSet::new();
    let mut queues = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let store = Store::open(&config.postgres_url).await?;
        metrics.database_connections.fetch_add(1, Ordering::Relaxed);
        let (job_tx, job_rx) = mpsc::channel(QUEUE_PER_CONNECTION);
        writers.spawn(write_batches(
            store,
            job_rx,
            done_tx.clone(),
            metrics.clone(),
        ));
        queues.push(job_tx);
    }
    // Only the writers hold senders now: the channel closes if they all end (a panic, say).
    drop(done_tx);
    let mut subscription = Subscription::open(settings)?;
    let mut order: AckOrder<Delivery> = AckOrder::default();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => {
                drain(&mut order, &mut done_rx, &subscription).await;
                subscription.disconnect().await;
                return Ok(());
            }
            done = done_rx.recv() => {
                let Some(done) = done else {
                    return Err(StoreError::Query {
                        what: "write batches",
                        cause: "every writer task ended".into(),
                    }
                    .into());
                };
                if let Some(err) = done.failure {
                    return Err(err.into());
                }
                acknowledge(&mut order, done.ticket, &subscription, metrics).await?;
                continue;
            }
            event = subscription.events.recv() => event,
        };
        let delivery = match event {
            None => return Err(UplinkError::Closed("the connection task ended".into()).into()),
            Some(SubscriberEvent::Lost(err)) => return Err(err.into()),
            Some(SubscriberEvent::Subscribed) => {
                backoff.reset();
                metrics.subscribed.store(true, Ordering::Relaxed);
                log::info!(
                    "ingest: subscribed to {} on {}:{} as {} with {} PostgreSQL connections",
                    settings.filter,
                    settings.host,
                    settings.port,
                    settings.client_id,
                    config.connections
                );
                continue;
            }
            Some(SubscriberEvent::Message(delivery)) => delivery,
        };
        let decoded = payload::decode(&delivery.payload);
        let topic = delivery.topic.clone();
        let ticket = order.arrive(delivery);
        metrics.unacknowledged.fetch_add(1, Ordering::Relaxed);
        match decoded {
            Err(err) => {
                metrics.rejected.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "ingest: a message on {topic} is not a votegate batch ({err}): acknowledged and dropped"
                );
                acknowledge(&mut order, ticket, &subscription, metrics).await?;
            }
            Ok(batch) => {
                let queue = &queues[connection_for(&batch.gateway_id, queues.len())];
                let sent = tokio::select! {
                    // A writer stuck on a hung database must not hold up a shutdown.
                    _ = shutdown.cancelled() => return Ok(()),
                    sent = queue.send(Job { ticket, batch }) => sent,
                };
                if sent.is_err() {
                    return Err(writer_ended(&mut done_rx));
                }
            }
        }
    }
}

/// Why a writer's queue closed: its database error, waiting in `done_rx`.
fn writer_ended(done_rx: &mut mpsc::UnboundedReceiver<Done>) -> ConsumeError {
    while let Ok(done) = done_rx.try_recv() {
        if let Some(err) = done.failure {
            return err.into();
        }
    }
    StoreError::Query {
        what: "write batches",
        cause: "a writer task ended".into(),
    }
    .into()
}

/// Marks `ticket` finished and acknowledges what may be acknowledged now, in arrival order.
async fn acknowledge(
    order: &mut AckOrder<Delivery>,
    ticket: Ticket,
    subscription: &Subscription,
    metrics: &IngestMetrics,
) -> Result<(), UplinkError> {
    for delivery in order.finish(ticket) {
        subscription.ack(&delivery).await?;
        metrics.unacknowledged.fetch_sub(1, Ordering::Relaxed);
    }
    Ok(())
}

/// On shutdown: waits (briefly) for the batches being written and acknowledges them, so that a
/// clean stop leaves the broker nothing to send again.
async fn drain(
    order: &mut AckOrder<Delivery>,
    done_rx: &mut mpsc::UnboundedReceiver<Done>,
    subscription: &Subscription,
) {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    while !order.is_empty() {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(Done {
                ticket,
                failure: None,
            })) => {
                for delivery in order.finish(ticket) {
                    if subscription.ack(&delivery).await.is_err() {
                        return;
                    }
                }
            }
            _ => {
                log::warn!(
                    "ingest: stopping with {} messages not acknowledged: the broker will send them again",
                    order.len()
                );
                return;
            }
        }
    }
}

/// One PostgreSQL connection: writes the batches of the gateways hashed to it, one transaction
/// each, and says when each is done. Ends at the first database error (reported as a [`Done`]).
async fn write_batches(
    mut store: Store,
    mut jobs: mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Done>,
    metrics: Arc<IngestMetrics>,
) {
    while let Some(Job { ticket, batch }) = jobs.recv().await {
        let started = Instant::now();
        let failure = match store.ingest_batch(&batch).await {
            Ok(outcome) => {
                metrics.committed(&outcome, started.elapsed(), newest_vote_age(&batch));
                log::debug!(
                    gateway = batch.gateway_id.as_str(), batch = batch.batch_id;
                    "ingest: batch {} of {}: {} new, {} duplicates, {} conflicts",
                    batch.batch_id,
                    batch.gateway_id,
                    outcome.inserted,
                    outcome.duplicates,
                    outcome.conflicts
                );
                None
            }
            Err(StoreError::Invalid(err)) => {
                metrics.rejected.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    gateway = batch.gateway_id.as_str(), batch = batch.batch_id;
                    "ingest: {err}: acknowledged and dropped (it can never be written)"
                );
                None
            }
            Err(err) => Some(err),
        };
        let failed = failure.is_some();
        if done.send(Done { ticket, failure }).is_err() || failed {
            return;
        }
    }
}

/// How old the batch's newest vote is now (none when it has no votes or the clocks disagree).
fn newest_vote_age(batch: &BatchPayload) -> Option<Duration> {
    let newest = batch.votes.iter().map(|v| v.ts_ms).max()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    now.checked_sub(newest).map(Duration::from_millis)
}

/// Reads the ledger's live view into `metrics` every `interval` until `shutdown`.
pub async fn watch_ledger(
    config: IngestConfig,
    metrics: Arc<IngestMetrics>,
    shutdown: CancellationToken,
) {
    let mut store: Option<Store> = None;
    loop {
        if store.is_none() {
            match Store::open(&config.postgres_url).await {
                Ok(opened) => store = Some(opened),
                Err(err) => log::warn!("ingest: the ledger view for /metrics: {err}"),
            }
        }
        if let Some(open) = &store {
            match open.live_records().await {
                Ok((now, records)) => {
                    let report =
                        Report::build_live(&records, now, config.missing_grace.as_millis() as i64);
                    if let Ok(mut view) = metrics.ledger.lock() {
                        *view = LedgerView::Read(now, report);
                    }
                }
                Err(err) => {
                    log::warn!("ingest: the ledger view for /metrics: {err}");
                    store = None;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.ledger_interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_always_goes_to_the_same_connection_and_the_fleet_spreads() {
        let mut used = [0u32; 4];
        for n in 0..1000 {
            let gateway = format!("gw-{n:04}");
            let k = connection_for(&gateway, 4);
            assert_eq!(k, connection_for(&gateway, 4));
            used[k] += 1;
        }
        assert!(used.iter().all(|&n| n > 150), "{used:?}");
        assert_eq!(connection_for("gw", 1), 0);
    }
}
