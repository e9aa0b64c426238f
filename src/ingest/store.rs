//! PostgreSQL: the only file that imports `tokio_postgres`. Opens a connection, applies the
//! migrations of [`super::schema`], writes batches (one transaction each) and reads what
//! `ingest report` audits.
//!
//! # Writing a batch
//! One transaction, six round trips at most, none of them per vote:
//! 1. upsert the gateway's `gateway_ledger` row; its row lock serialises the batches of one
//!    gateway across replicas (so 2. can tell duplicates from conflicts, and the counters are
//!    exact), while different gateways go in parallel;
//! 2. one statement inserts the votes from arrays (`unnest`) with `ON CONFLICT DO NOTHING` and
//!    returns, for each vote that was already there, whether the stored row has the same content;
//! 3. the conflicting ones (if any) go to `vote_conflicts`: the stored row is never overwritten;
//! 4. the reported dropped ranges (if any) go to `dropped_ranges`;
//! 5. only if the batch touches the contiguous mark ([`ledger::may_advance`]), one query walks the
//!    accounted spans above it to its new place;
//! 6. the ledger row's counters, highest seq and mark are updated; COMMIT.

use std::collections::BTreeMap;

use tokio_postgres::{Client, NoTls, Statement};

use super::ledger::{self, BatchError, Span};
use super::schema::{self, MIGRATIONS, MIGRATIONS_TABLE, MIGRATION_LOCK};
use crate::uplink::payload::{BatchPayload, WireVote};

/// What went wrong talking to PostgreSQL, or with the batch.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection.
    #[error("cannot connect to PostgreSQL at {target}: {cause}")]
    Connect {
        /// The URL, without a password.
        target: String,
        /// Why.
        cause: String,
    },
    /// A statement failed (the transaction, if any, was rolled back).
    #[error("PostgreSQL: {what}: {cause}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// The server's message (with its SQLSTATE) or the client's.
        cause: String,
    },
    /// The database was migrated by a newer build.
    #[error("the database's schema is at version {found}, newer than this build's {known}: run a newer votegate")]
    SchemaTooNew {
        /// Its version.
        found: i32,
        /// Ours.
        known: i32,
    },
    /// The batch can never be written.
    #[error(transparent)]
    Invalid(#[from] BatchError),
}

/// What writing one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Votes new to the store.
    pub inserted: u64,
    /// Votes already stored with the same content (redeliveries, absorbed).
    pub duplicates: u64,
    /// Votes already stored with different content (recorded in `vote_conflicts`, not written).
    pub conflicts: u64,
    /// Dropped ranges new to the store.
    pub dropped_ranges: u64,
}

/// Everything `ingest report` needs about one gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayRecord {
    /// The gateway.
    pub gateway_id: String,
    /// Its site (from its latest batch).
    pub site: String,
    /// Its received seqs as maximal runs, sorted.
    pub runs: Vec<Span>,
    /// Its reported dropped ranges, sorted.
    pub dropped: Vec<Span>,
    /// The highest seq the ingest ever wrote for it, and when.
    pub highest_known: Option<(u64, i64)>,
    /// Redelivered votes absorbed (ledger counter).
    pub duplicates: u64,
    /// Conflicting arrivals (ledger counter).
    pub conflict_arrivals: u64,
    /// Distinct votes with at least one conflict (from `vote_conflicts`).
    pub conflicted_votes: u64,
    /// Votes inserted (ledger counter; more than the rows in `votes` if rows were deleted).
    pub inserted: u64,
    /// The ledger's contiguous mark, as maintained batch by batch.
    pub contiguous_through: u64,
}

fn query_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |err| StoreError::Query {
        what,
        cause: describe(&err),
    }
}

fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{scheme}://{name}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The votes of a batch as column arrays, for `unnest`.
struct Columns<'a> {
    seq: Vec<i64>,
    terminal: Vec<&'a str>,
    button: Vec<i16>,
    ts_ms: Vec<i64>,
    clock_synced: Vec<bool>,
    restamped: Vec<bool>,
    filtered: Vec<bool>,
    term_seq: Vec<Option<i64>>,
}

impl<'a> Columns<'a> {
    /// Values already checked by [`ledger::validate`], so the conversions cannot wrap.
    fn of(votes: impl ExactSizeIterator<Item = &'a WireVote>) -> Columns<'a> {
        let n = votes.len();
        let mut c = Columns {
            seq: Vec::with_capacity(n),
            terminal: Vec::with_capacity(n),
            button: Vec::with_capacity(n),
            ts_ms: Vec::with_capacity(n),
            clock_synced: Vec::with_capacity(n),
            restamped: Vec::with_capacity(n),
            filtered: Vec::with_capacity(n),
            term_seq: Vec::with_capacity(n),
        };
        for vote in votes {
            c.seq.push(vote.seq as i64);
            c.terminal.push(&vote.terminal);
            c.button.push(i16::from(vote.button));
            c.ts_ms.push(vote.ts_ms as i64);
            c.clock_synced.push(vote.clock_synced);
            c.restamped.push(vote.restamped);
            c.filtered.push(vote.filtered);
            c.term_seq.push(vote.term_seq.map(|t| t as i64));
        }
        c
    }
}

const UPSERT_LEDGER: &str = "
INSERT INTO gateway_ledger (gateway_id, site) VALUES ($1, $2)
ON CONFLICT (gateway_id) DO UPDATE SET site = EXCLUDED.site
RETURNING contiguous_through";

/// `$3…$10`: the vote columns. Returns one row per vote that was already stored: its seq and
/// whether the stored content equals the newcomer's. The outer SELECT sees the table as it was
/// before the INSERT (one snapshot per statement), i.e. exactly the votes stored before (the
/// ledger row lock keeps another transaction of the same gateway from committing in between).
const INSERT_VOTES: &str = "
WITH input AS (
    SELECT * FROM unnest($3::bigint[], $4::text[], $5::smallint[], $6::bigint[],
                         $7::boolean[], $8::boolean[], $9::boolean[], $10::bigint[])
        AS t(seq, terminal, button, ts_ms, clock_synced, restamped, filtered, term_seq)
), inserted AS (
    INSERT INTO votes (gateway_id, seq, site, terminal, button, ts, clock_synced, restamped,
                       filtered, term_seq)
    SELECT $1::text, seq, $2::text, terminal, button,
           timestamptz 'epoch' + ts_ms * interval '1 millisecond',
           clock_synced, restamped, filtered, term_seq
    FROM input
    ON CONFLICT (gateway_id, seq) DO NOTHING
)
SELECT i.seq,
       (v.site, v.terminal, v.button, v.ts, v.clock_synced, v.restamped, v.filtered, v.term_seq)
       IS NOT DISTINCT FROM
       ($2::text, i.terminal, i.button, timestamptz 'epoch' + i.ts_ms * interval '1 millisecond',
        i.clock_synced, i.restamped, i.filtered, i.term_seq) AS same
FROM input i JOIN votes v ON v.gateway_id = $1::text AND v.seq = i.seq
    -- the batch's seq range (validated increasing), so the plan scans only it, never the
    -- gateway's whole history
    AND v.seq BETWEEN $3[1] AND $3[cardinality($3)]";

const INSERT_CONFLICTS: &str = "
INSERT INTO vote_conflicts (gateway_id, seq, batch_id, site, terminal, button, ts, clock_synced,
                            restamped, filtered, term_seq)
SELECT $1::text, seq, $2::bigint, $3::text, terminal, button,
       timestamptz 'epoch' + ts_ms * interval '1 millisecond',
       clock_synced, restamped, filtered, term_seq
FROM unnest($4::bigint[], $5::text[], $6::smallint[], $7::bigint[],
            $8::boolean[], $9::boolean[], $10::boolean[], $11::bigint[])
    AS t(seq, terminal, button, ts_ms, clock_synced, restamped, filtered, term_seq)";

const INSERT_DROPPED: &str = "
INSERT INTO dropped_ranges (gateway_id, first_seq, last_seq)
SELECT $1::text, f, l FROM unnest($2::bigint[], $3::bigint[]) AS t(f, l)
ON CONFLICT DO NOTHING";

/// `$2`: the mark. Walks the accounted spans above it (received seqs and dropped ranges) in seq
/// order; the new mark is the reach before the first span that leaves a gap, or the end of all.
const ADVANCE: &str = "
WITH spans AS (
    SELECT seq AS f, seq AS l FROM votes WHERE gateway_id = $1::text AND seq > $2::bigint
    UNION ALL
    SELECT first_seq, last_seq FROM dropped_ranges
    WHERE gateway_id = $1::text AND last_seq > $2::bigint
), walk AS (
    SELECT f, greatest($2::bigint, max(l) OVER (ORDER BY f, l
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)) AS reach
    FROM spans
)
SELECT coalesce(
    (SELECT reach FROM walk WHERE f > reach + 1 ORDER BY f LIMIT 1),
    (SELECT greatest($2::bigint, max(l)) FROM spans))";

const UPDATE_LEDGER: &str = "
UPDATE gateway_ledger SET
    received = received + $2::bigint,
    duplicates = duplicates + $3::bigint,
    conflicts = conflicts + $4::bigint,
    dropped_reports = dropped_reports + $5::bigint,
    batches = batches + 1,
    highest_seq_at = CASE WHEN $6::bigint > highest_seq THEN now() ELSE highest_seq_at END,
    highest_seq = greatest(highest_seq, $6::bigint),
    contiguous_through = greatest(contiguous_through, $7::bigint),
    last_batch_at = now()
WHERE gateway_id = $1::text";

/// The prepared statements of a batch.
struct Statements {
    upsert_ledger: Statement,
    insert_votes: Statement,
    insert_conflicts: Statement,
    insert_dropped: Statement,
    advance: Statement,
    update_ledger: Statement,
}

/// A connection to the ingest's database, migrated and with its statements prepared.
pub struct Store {
    client: Client,
    statements: Statements,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Store {
    /// Connects, applies the missing migrations and prepares the statements.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let (mut client, connection) =
            tokio_postgres::connect(url, NoTls)
                .await
                .map_err(|err| StoreError::Connect {
                    target: redact(url),
                    cause: describe(&err),
                })?;
        let connection = tokio::spawn(async move {
            if let Err(err) = connection.await {
                log::warn!("PostgreSQL connection closed: {}", describe(&err));
            }
        });
        migrate(&mut client).await?;
        let prepare = |sql: &'static str, what: &'static str| {
            let client = &client;
            async move { client.prepare(sql).await.map_err(query_error(what)) }
        };
        let statements = Statements {
            upsert_ledger: prepare(UPSERT_LEDGER, "prepare the ledger upsert").await?,
            insert_votes: prepare(INSERT_VOTES, "prepare the vote insert").await?,
            insert_conflicts: prepare(INSERT_CONFLICTS, "prepare the conflict insert").await?,
            insert_dropped: prepare(INSERT_DROPPED, "prepare the dropped-range insert").await?,
            advance: prepare(ADVANCE, "prepare the ledger walk").await?,
            update_ledger: prepare(UPDATE_LEDGER, "prepare the ledger update").await?,
        };
        Ok(Store {
            client,
            statements,
            connection,
        })
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(query_error("read schema_migrations"))?;
        Ok(row.get(0))
    }

    /// Writes one batch in one transaction (see the module doc): idempotent on
    /// `(gateway_id, seq)`; a vote stored with other content is recorded as a conflict and kept.
    pub async fn ingest_batch(&mut self, batch: &BatchPayload) -> Result<BatchOutcome, StoreError> {
        ledger::validate(batch)?;
        let st = &self.statements;
        let gateway = batch.gateway_id.as_str();
        let site = batch.site.as_str();
        let tx = self
            .client
            .transaction()
            .await
            .map_err(query_error("BEGIN"))?;
        let contiguous: i64 = tx
            .query_one(&st.upsert_ledger, &[&gateway, &site])
            .await
            .map_err(query_error("lock the gateway's ledger row"))?
            .get(0);
        let c = Columns::of(batch.votes.iter());
        let stored = tx
            .query(
                &st.insert_votes,
                &[
                    &gateway,
                    &site,
                    &c.seq,
                    &c.terminal,
                    &c.button,
                    &c.ts_ms,
                    &c.clock_synced,
                    &c.restamped,
                    &c.filtered,
                    &c.term_seq,
                ],
            )
            .await
            .map_err(query_error("insert votes"))?;
        let mut outcome = BatchOutcome {
            inserted: (batch.votes.len() - stored.len()) as u64,
            ..BatchOutcome::default()
        };
        let mut conflicting = Vec::new();
        for row in &stored {
            let seq: i64 = row.get(0);
            if row.get::<_, Option<bool>>(1) == Some(true) {
                outcome.duplicates += 1;
            } else if let Ok(at) = batch.votes.binary_search_by_key(&(seq as u64), |v| v.seq) {
                conflicting.push(&batch.votes[at]);
            }
        }
        outcome.conflicts = conflicting.len() as u64;
        if !conflicting.is_empty() {
            let k = Columns::of(conflicting.iter().copied());
            tx.execute(
                &st.insert_conflicts,
                &[
                    &gateway,
                    &(batch.batch_id as i64),
                    &site,
                    &k.seq,
                    &k.terminal,
                    &k.button,
                    &k.ts_ms,
                    &k.clock_synced,
                    &k.restamped,
                    &k.filtered,
                    &k.term_seq,
                ],
            )
            .await
            .map_err(query_error("record conflicts"))?;
        }
        if !batch.dropped.is_empty() {
            let firsts: Vec<i64> = batch.dropped.iter().map(|r| r.first_seq as i64).collect();
            let lasts: Vec<i64> = batch.dropped.iter().map(|r| r.last_seq as i64).collect();
            outcome.dropped_ranges = tx
                .execute(&st.insert_dropped, &[&gateway, &firsts, &lasts])
                .await
                .map_err(query_error("record dropped ranges"))?;
        }
        let mut mark = contiguous;
        if ledger::may_advance(contiguous as u64, batch) {
            mark = tx
                .query_one(&st.advance, &[&gateway, &contiguous])
                .await
                .map_err(query_error("walk the ledger"))?
                .get(0);
        }
        let highest = ledger::accounted_bounds(batch).map_or(0, |(_, hi)| hi as i64);
        tx.execute(
            &st.update_ledger,
            &[
                &gateway,
                &(outcome.inserted as i64),
                &(outcome.duplicates as i64),
                &(outcome.conflicts as i64),
                &(outcome.dropped_ranges as i64),
                &highest,
                &mark,
            ],
        )
        .await
        .map_err(query_error("update the ledger"))?;
        tx.commit().await.map_err(query_error("COMMIT"))?;
        for vote in conflicting {
            log::error!(
                gateway = gateway, seq = vote.seq, batch = batch.batch_id;
                "conflict: gateway {gateway} sent vote {} again with different content; the stored row is kept, the newcomer is in vote_conflicts",
                vote.seq
            );
        }
        Ok(outcome)
    }

    /// Every gateway's runs, dropped ranges and ledger row, and the server's clock (Unix ms):
    /// what `ingest report` audits. Reads every row of `votes`.
    pub async fn gateway_records(&self) -> Result<(i64, Vec<GatewayRecord>), StoreError> {
        self.records(ALL_RUNS).await
    }

    /// Like [`Store::gateway_records`], but with only the runs the ledger does not vouch for:
    /// above each gateway's contiguous mark, and inside reported dropped ranges (to tell dropped
    /// from received). Index range scans only, so `/metrics` can afford it every few seconds;
    /// [`ledger::audit_live`] makes the audit of it.
    pub async fn live_records(&self) -> Result<(i64, Vec<GatewayRecord>), StoreError> {
        self.records(LIVE_RUNS).await
    }

    /// Reads everything in one snapshot: a batch committing between two reads (moving a mark
    /// over a gap) would otherwise look like a gap.
    async fn records(&self, runs_query: &str) -> Result<(i64, Vec<GatewayRecord>), StoreError> {
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(query_error("BEGIN (a snapshot for the report)"))?;
        match self.records_in_snapshot(runs_query).await {
            Ok(records) => {
                self.client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(query_error("end the report's snapshot"))?;
                Ok(records)
            }
            Err(err) => {
                // The first error says what went wrong; the connection may be gone anyway.
                let _ = self.client.batch_execute("ROLLBACK").await;
                Err(err)
            }
        }
    }

    async fn records_in_snapshot(
        &self,
        runs_query: &str,
    ) -> Result<(i64, Vec<GatewayRecord>), StoreError> {
        let ms = |column: &str| format!("(extract(epoch FROM {column}) * 1000)::bigint");
        let now: i64 = self
            .client
            .query_one(&format!("SELECT {}", ms("now()")), &[])
            .await
            .map_err(query_error("read the clock"))?
            .get(0);
        let mut records: BTreeMap<String, GatewayRecord> = BTreeMap::new();
        let ledger_rows = self
            .client
            .query(
                &format!(
                    "SELECT gateway_id, site, received, duplicates, conflicts, highest_seq,
                            {}, contiguous_through FROM gateway_ledger",
                    ms("coalesce(highest_seq_at, last_batch_at)")
                ),
                &[],
            )
            .await
            .map_err(query_error("read gateway_ledger"))?;
        for row in ledger_rows {
            let gateway_id: String = row.get(0);
            let highest: i64 = row.get(5);
            records.insert(
                gateway_id.clone(),
                GatewayRecord {
                    gateway_id,
                    site: row.get(1),
                    inserted: row.get::<_, i64>(2) as u64,
                    duplicates: row.get::<_, i64>(3) as u64,
                    conflict_arrivals: row.get::<_, i64>(4) as u64,
                    highest_known: (highest > 0).then(|| (highest as u64, row.get(6))),
                    contiguous_through: row.get::<_, i64>(7) as u64,
                    ..GatewayRecord::default()
                },
            );
        }
        // Runs of consecutive seqs: within a run, seq − row_number() is constant.
        let runs = self
            .client
            .query(
                &format!(
                    "SELECT gateway_id, min(seq), max(seq), {} FROM (
                         SELECT gateway_id, seq, received_at,
                                seq - row_number() OVER (PARTITION BY gateway_id ORDER BY seq) AS run
                         FROM ({runs_query}) s) r
                     GROUP BY gateway_id, run ORDER BY gateway_id, 2",
                    ms("min(received_at)")
                ),
                &[],
            )
            .await
            .map_err(query_error("read the runs of votes"))?;
        let entry = |records: &mut BTreeMap<String, GatewayRecord>, gateway_id: String| {
            let record = records.entry(gateway_id.clone()).or_default();
            record.gateway_id = gateway_id;
        };
        for row in runs {
            let gateway_id: String = row.get(0);
            entry(&mut records, gateway_id.clone());
            if let Some(record) = records.get_mut(&gateway_id) {
                record.runs.push(span(row.get(1), row.get(2), row.get(3)));
            }
        }
        let dropped = self
            .client
            .query(
                &format!(
                    "SELECT gateway_id, first_seq, last_seq, {} FROM dropped_ranges
                     ORDER BY gateway_id, first_seq, last_seq",
                    ms("reported_at")
                ),
                &[],
            )
            .await
            .map_err(query_error("read dropped_ranges"))?;
        for row in dropped {
            let gateway_id: String = row.get(0);
            entry(&mut records, gateway_id.clone());
            if let Some(record) = records.get_mut(&gateway_id) {
                record
                    .dropped
                    .push(span(row.get(1), row.get(2), row.get(3)));
            }
        }
        let conflicts = self
            .client
            .query(
                "SELECT gateway_id, count(DISTINCT seq) FROM vote_conflicts GROUP BY gateway_id",
                &[],
            )
            .await
            .map_err(query_error("read vote_conflicts"))?;
        for row in conflicts {
            let gateway_id: String = row.get(0);
            entry(&mut records, gateway_id.clone());
            if let Some(record) = records.get_mut(&gateway_id) {
                record.conflicted_votes = row.get::<_, i64>(1) as u64;
            }
        }
        Ok((now, records.into_values().collect()))
    }
}

/// The votes `ingest report` audits: all of them.
const ALL_RUNS: &str = "SELECT gateway_id, seq, received_at FROM votes";

/// The votes the ledger does not vouch for: above the contiguous mark, or inside a reported
/// dropped range. `LATERAL … OFFSET 0` keeps each part a primary-key range scan per gateway (or
/// per range): joined plainly, the planner cannot see how few rows lie above a mark and may scan
/// the whole table.
const LIVE_RUNS: &str = "
SELECT l.gateway_id, v.seq, v.received_at
FROM gateway_ledger l CROSS JOIN LATERAL (
    SELECT seq, received_at FROM votes
    WHERE gateway_id = l.gateway_id AND seq > l.contiguous_through OFFSET 0) v
UNION
SELECT d.gateway_id, v.seq, v.received_at
FROM dropped_ranges d CROSS JOIN LATERAL (
    SELECT seq, received_at FROM votes
    WHERE gateway_id = d.gateway_id AND seq BETWEEN d.first_seq AND d.last_seq OFFSET 0) v";

fn span(first: i64, last: i64, arrived_ms: i64) -> Span {
    Span {
        first: first as u64,
        last: last as u64,
        arrived_ms,
    }
}

/// Applies the migrations the database lacks, in one transaction under an advisory lock.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(query_error("BEGIN (migrations)"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(query_error("take the migration lock"))?;
    tx.batch_execute(MIGRATIONS_TABLE)
        .await
        .map_err(query_error("create schema_migrations"))?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .map_err(query_error("read schema_migrations"))?
        .get(0);
    if current > schema::latest_version() {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known: schema::latest_version(),
        });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(migration.sql)
            .await
            .map_err(query_error("apply a migration"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(query_error("record a migration"))?;
        log::info!(
            "schema migration {} applied: {}",
            migration.version,
            migration.name
        );
    }
    tx.commit()
        .await
        .map_err(query_error("COMMIT (migrations)"))?;
    Ok(())
}
