//! The schema and its forward-only migrations.
//!
//! The schema version is SQLite's `PRAGMA user_version` (stored in the database header, changed
//! inside the migration transaction, so a crash mid-migration leaves the old version and the old
//! schema). Step `i` of [`MIGRATIONS`] moves the database from version `i` to `i + 1`. Steps are
//! never edited once released; a schema change is a new step appended at the end.

use agentbox_core::store::StoreError;
use rusqlite::{Connection, TransactionBehavior};

use crate::error::backend;

/// Every schema step, oldest first. Append only.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: initial schema. Whole objects live in `json`; the other columns are copies of fields the
    // store filters, orders or checks on.
    r#"
    CREATE TABLE templates (
        name             TEXT PRIMARY KEY NOT NULL,
        resource_version INTEGER NOT NULL,
        json             TEXT NOT NULL
    ) STRICT;

    CREATE TABLE pools (
        namespace        TEXT NOT NULL,
        name             TEXT NOT NULL,
        resource_version INTEGER NOT NULL,
        json             TEXT NOT NULL,
        PRIMARY KEY (namespace, name)
    ) STRICT;

    CREATE TABLE slots (
        slot_id    TEXT PRIMARY KEY NOT NULL,
        pool       TEXT NOT NULL,
        namespace  TEXT NOT NULL,
        phase      TEXT NOT NULL,
        sandbox_id TEXT,
        json       TEXT NOT NULL
    ) STRICT;
    CREATE INDEX slots_by_pool ON slots (namespace, pool, phase);

    CREATE TABLE sandboxes (
        sandbox_id    TEXT PRIMARY KEY NOT NULL,
        namespace     TEXT NOT NULL,
        pool          TEXT NOT NULL,
        team          TEXT NOT NULL,
        user          TEXT NOT NULL,
        status        TEXT NOT NULL,
        claimed_at    TEXT NOT NULL,
        terminated_at TEXT,
        json          TEXT NOT NULL
    ) STRICT;
    CREATE INDEX sandboxes_by_time      ON sandboxes (claimed_at DESC, sandbox_id);
    CREATE INDEX sandboxes_by_namespace ON sandboxes (namespace, claimed_at DESC, sandbox_id);
    CREATE INDEX sandboxes_by_pool      ON sandboxes (pool, claimed_at DESC, sandbox_id);
    CREATE INDEX sandboxes_by_team      ON sandboxes (team, claimed_at DESC, sandbox_id);
    CREATE INDEX sandboxes_by_user      ON sandboxes (user, claimed_at DESC, sandbox_id);
    CREATE INDEX sandboxes_by_status    ON sandboxes (status, claimed_at DESC, sandbox_id);
    "#,
    // 2: API keys (by token hash; the raw token only sealed inside `json`) and quotas.
    r#"
    CREATE TABLE api_keys (
        key_id     TEXT PRIMARY KEY NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        team       TEXT NOT NULL,
        user       TEXT NOT NULL,
        issued_at  TEXT NOT NULL,
        json       TEXT NOT NULL
    ) STRICT;
    CREATE INDEX api_keys_by_owner ON api_keys (team, user, issued_at, key_id);

    CREATE TABLE quotas (
        name             TEXT PRIMARY KEY NOT NULL,
        quota_url        TEXT NOT NULL,
        resource_version INTEGER NOT NULL,
        json             TEXT NOT NULL
    ) STRICT;
    "#,
];

/// Bring `conn` to the newest schema version in `steps`, in one `BEGIN IMMEDIATE` transaction
/// (so two processes opening the same new file do not both apply step 1). Returns the version
/// the database had before. Fails without changing anything if the database is newer than
/// `steps` knows (written by a later agentbox).
pub(crate) fn migrate(conn: &mut Connection, steps: &[&str]) -> Result<u32, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| backend("begin schema migration", e))?;
    let current: u32 =
        tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| backend("read schema version", e))?;
    let target = u32::try_from(steps.len()).unwrap_or(u32::MAX);
    if current > target {
        return Err(StoreError::Backend(format!(
            "database schema version {current} is newer than this agentbox supports ({target}); \
             upgrade agentbox or point it at another database file"
        )));
    }
    for (i, sql) in steps.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(|e| backend(&format!("apply schema migration {}", i + 1), e))?;
    }
    if current != target {
        // PRAGMA takes no bound parameters; `target` is an integer we computed.
        tx.execute_batch(&format!("PRAGMA user_version = {target}")).map_err(|e| backend("write schema version", e))?;
    }
    tx.commit().map_err(|e| backend("commit schema migration", e))?;
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> u32 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn fresh_database_gets_every_step() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn, MIGRATIONS).unwrap(), 0);
        assert_eq!(version(&conn) as usize, MIGRATIONS.len());
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, ["api_keys", "pools", "quotas", "sandboxes", "slots", "templates"]);
    }

    #[test]
    fn reopening_applies_only_new_steps() {
        let mut conn = Connection::open_in_memory().unwrap();
        // Each step would fail if run twice (CREATE TABLE without IF NOT EXISTS).
        let v1: &[&str] = &["CREATE TABLE a (x INTEGER); INSERT INTO a VALUES (1);"];
        let v2: &[&str] = &[v1[0], "CREATE TABLE b (y INTEGER); INSERT INTO a VALUES (2);"];
        assert_eq!(migrate(&mut conn, v1).unwrap(), 0);
        assert_eq!(migrate(&mut conn, v1).unwrap(), 1, "no step left to apply");
        assert_eq!(migrate(&mut conn, v2).unwrap(), 1);
        assert_eq!(version(&conn), 2);
        let rows: i64 = conn.query_row("SELECT COUNT(*) FROM a", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 2, "step 1 ran once, step 2 ran once");
    }

    #[test]
    fn failed_step_rolls_back_the_whole_migration() {
        let mut conn = Connection::open_in_memory().unwrap();
        let steps: &[&str] = &["CREATE TABLE a (x INTEGER);", "THIS IS NOT SQL;"];
        let err = migrate(&mut conn, steps).unwrap_err();
        assert!(err.to_string().contains("apply schema migration 2"), "{err}");
        assert_eq!(version(&conn), 0);
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'a'", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "step 1 was rolled back with step 2");
    }

    #[test]
    fn newer_database_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        let err = migrate(&mut conn, MIGRATIONS).unwrap_err();
        assert!(err.to_string().contains("newer than this agentbox supports"), "{err}");
        assert_eq!(version(&conn), 99);
    }
}
