//! The ingest's PostgreSQL schema, as numbered migrations (README § Cloud ingest documents it for
//! analysts). `votegate ingest` applies the missing ones at start, in one transaction under an
//! advisory lock (replicas may start together), and records each in `schema_migrations`. A
//! migration, once released, never changes: a change is a new migration.

/// One step of the schema.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    /// Its number: applied in increasing order, each once.
    pub version: i32,
    /// What it does, for `schema_migrations.name`.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// The table recording the applied migrations (created before any migration runs).
pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// The advisory lock key that serialises migrations between replicas ("votegate" in ASCII).
pub const MIGRATION_LOCK: i64 = 0x766f_7465_6761_7465;

/// Every migration, by version.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "votes, conflicts, dropped ranges, ledger",
    sql: "
CREATE TABLE votes (
    gateway_id   text        NOT NULL,
    seq          bigint      NOT NULL CHECK (seq > 0),
    site         text        NOT NULL,
    terminal     text        NOT NULL,
    button       smallint    NOT NULL CHECK (button BETWEEN 1 AND 4),
    ts           timestamptz NOT NULL,
    clock_synced boolean     NOT NULL,
    restamped    boolean     NOT NULL,
    filtered     boolean     NOT NULL,
    term_seq     bigint,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, seq)
);
CREATE INDEX votes_site_ts ON votes (site, ts);

-- A redelivered vote whose content differs from the stored one: the stored row is kept, the
-- newcomer lands here, once per arrival.
CREATE TABLE vote_conflicts (
    id           bigserial   PRIMARY KEY,
    gateway_id   text        NOT NULL,
    seq          bigint      NOT NULL,
    batch_id     bigint      NOT NULL,
    site         text        NOT NULL,
    terminal     text        NOT NULL,
    button       smallint    NOT NULL,
    ts           timestamptz NOT NULL,
    clock_synced boolean     NOT NULL,
    restamped    boolean     NOT NULL,
    filtered     boolean     NOT NULL,
    term_seq     bigint,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vote_conflicts_vote ON vote_conflicts (gateway_id, seq);

-- Seqs a gateway reported it dropped (drop-oldest, a full disk): they will never arrive. A range
-- is reported until a batch carrying it is acknowledged, so the same range may come again.
CREATE TABLE dropped_ranges (
    gateway_id   text        NOT NULL,
    first_seq    bigint      NOT NULL,
    last_seq     bigint      NOT NULL,
    reported_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, first_seq, last_seq),
    CHECK (first_seq > 0 AND first_seq <= last_seq)
);

-- One row per gateway, updated in every batch's transaction (its row lock serialises the batches
-- of one gateway, so the counters are exact).
CREATE TABLE gateway_ledger (
    gateway_id         text        PRIMARY KEY,
    site               text        NOT NULL,
    received           bigint      NOT NULL DEFAULT 0,
    duplicates         bigint      NOT NULL DEFAULT 0,
    conflicts          bigint      NOT NULL DEFAULT 0,
    dropped_reports    bigint      NOT NULL DEFAULT 0,
    batches            bigint      NOT NULL DEFAULT 0,
    highest_seq        bigint      NOT NULL DEFAULT 0,
    highest_seq_at     timestamptz,
    contiguous_through bigint      NOT NULL DEFAULT 0,
    first_batch_at     timestamptz NOT NULL DEFAULT now(),
    last_batch_at      timestamptz NOT NULL DEFAULT now()
);
",
}];

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_start_at_one_and_increase_by_one() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version as usize, index + 1, "{}", migration.name);
        }
        assert_eq!(latest_version() as usize, MIGRATIONS.len());
    }
}
