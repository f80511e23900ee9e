//! [`SqliteStore`]: the [`Store`] trait on one SQLite connection.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentbox_core::identity::{ApiKeyRecord, QuotaRecord};
use agentbox_core::model::{Pool, Sandbox, SandboxStatus, Slot, SlotPhase, Template};
use agentbox_core::store::{SandboxFilter, Store, StoreError};
use parking_lot::Mutex;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params, params_from_iter};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{backend, decode, encode, too_large};
use crate::schema::{MIGRATIONS, migrate};

/// How long a write waits for another process's write transaction before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection. `list_sandboxes` builds one statement per filter
/// shape (which filters are set, how many statuses), so this is larger than the fixed set.
const STATEMENT_CACHE: usize = 128;

/// A [`Store`] kept in one SQLite database file.
///
/// Guarantees:
/// - every write is one transaction and is committed before the call returns;
/// - the database runs in WAL mode with `synchronous=NORMAL`: a committed write survives a crash
///   (or `SIGKILL`) of the process, but a power loss or kernel crash may lose the last few
///   committed transactions (never corrupting the file). This is the durability agentbox
///   documents;
/// - [`Store::claim`] runs under `BEGIN IMMEDIATE`, so it is atomic even against other
///   processes writing the same file.
///
/// Assumes short calls: one connection sits behind a mutex, and callers (including async code)
/// call it directly. Several `SqliteStore`s (or processes) may open the same file; a writer waits
/// up to 5 s for another's transaction before failing with [`StoreError::Backend`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: Option<PathBuf>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (or create) the database at `path`, creating missing parent directories, and apply
    /// any schema migrations this version has that the file lacks.
    ///
    /// Fails if the file cannot be created or opened, if it is not an SQLite database, if WAL
    /// mode cannot be enabled (e.g. on some network filesystems), or if the file's schema is
    /// newer than this build knows.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!(
                    "sqlite: create directory {} for the database: {e}; check its permissions or choose another path",
                    dir.display()
                ))
            })?;
        }
        let conn = Connection::open(path).map_err(|e| backend(&format!("open {}", path.display()), e))?;
        Self::init(conn, Some(path.to_path_buf()))
    }

    /// A private database in memory, gone when the store is dropped. For tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(|e| backend("open in-memory database", e))?;
        Self::init(conn, None)
    }

    /// The database file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn init(mut conn: Connection, path: Option<PathBuf>) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| backend("set busy timeout", e))?;
        if let Some(p) = &path {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
                .map_err(|e| backend(&format!("enable wal mode on {}", p.display()), e))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Backend(format!(
                    "sqlite: {} stays in journal mode {mode:?} instead of wal; put the database on a local filesystem",
                    p.display()
                )));
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| backend("set synchronous=NORMAL", e))?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(|e| backend("enable foreign keys", e))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        migrate(&mut conn, MIGRATIONS)?;
        Ok(Self { conn: Mutex::new(conn), path })
    }
}

fn to_json<T: Serialize>(what: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| encode(what, e))
}

fn rv(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| too_large(what, v))
}

/// Run a query whose only column is a JSON document and decode every row.
fn query_json<T: DeserializeOwned>(
    conn: &Connection,
    what: &str,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| backend(what, e))?;
    let rows = stmt.query_map(args, |r| r.get::<_, String>(0)).map_err(|e| backend(what, e))?;
    let mut out = Vec::new();
    for row in rows {
        let json = row.map_err(|e| backend(what, e))?;
        out.push(serde_json::from_str(&json).map_err(|e| decode(what, e))?);
    }
    Ok(out)
}

fn query_one_json<T: DeserializeOwned>(
    conn: &Connection,
    what: &str,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Option<T>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached(sql)
        .and_then(|mut s| s.query_row(args, |r| r.get(0)).optional())
        .map_err(|e| backend(what, e))?;
    json.map(|j| serde_json::from_str(&j).map_err(|e| decode(what, e))).transpose()
}

fn exec(conn: &Connection, what: &str, sql: &str, args: impl rusqlite::Params) -> Result<usize, StoreError> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute(args)).map_err(|e| backend(what, e))
}

fn write_slot(conn: &Connection, s: &Slot) -> Result<(), StoreError> {
    let what = format!("write slot {}", s.slot_id);
    exec(
        conn,
        &what,
        "INSERT INTO slots (slot_id, pool, namespace, phase, sandbox_id, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (slot_id) DO UPDATE SET pool = excluded.pool, namespace = excluded.namespace,
           phase = excluded.phase, sandbox_id = excluded.sandbox_id, json = excluded.json",
        params![s.slot_id, s.pool, s.namespace, s.phase.as_str(), s.sandbox_id, to_json(&what, s)?],
    )?;
    Ok(())
}

fn write_sandbox(conn: &Connection, s: &Sandbox) -> Result<(), StoreError> {
    let what = format!("write sandbox {}", s.sandbox_id);
    exec(
        conn,
        &what,
        "INSERT INTO sandboxes (sandbox_id, namespace, pool, team, user, status, claimed_at, terminated_at, json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (sandbox_id) DO UPDATE SET namespace = excluded.namespace, pool = excluded.pool,
           team = excluded.team, user = excluded.user, status = excluded.status,
           claimed_at = excluded.claimed_at, terminated_at = excluded.terminated_at, json = excluded.json",
        params![
            s.sandbox_id,
            s.namespace,
            s.pool_name,
            s.team,
            s.user,
            s.status.as_str(),
            s.claimed_at,
            s.terminated_at,
            to_json(&what, s)?
        ],
    )?;
    Ok(())
}

/// The WHERE clause and its arguments for every filter of `f` except paging.
fn sandbox_where(f: &SandboxFilter) -> (String, Vec<Value>) {
    let mut conds = Vec::new();
    let mut args = Vec::new();
    let mut eq = |col: &str, v: &Option<String>| {
        if let Some(v) = v {
            args.push(Value::Text(v.clone()));
            conds.push(format!("{col} = ?{}", args.len()));
        }
    };
    eq("namespace", &f.namespace);
    eq("pool", &f.pool);
    eq("team", &f.team);
    eq("user", &f.user);
    if !f.statuses.is_empty() {
        // Sorted and deduplicated so equal filters share one cached statement.
        let mut statuses = f.statuses.clone();
        statuses.sort();
        statuses.dedup();
        let mut marks = Vec::new();
        for s in statuses {
            args.push(Value::Text(s.as_str().to_string()));
            marks.push(format!("?{}", args.len()));
        }
        conds.push(format!("status IN ({})", marks.join(", ")));
    }
    let clause = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
    (clause, args)
}

impl Store for SqliteStore {
    fn create_template(&self, t: &Template) -> Result<(), StoreError> {
        let what = format!("insert template {:?}", t.name);
        let n = exec(
            &self.conn.lock(),
            &what,
            "INSERT INTO templates (name, resource_version, json) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
            params![t.name, rv(&what, t.resource_version)?, to_json(&what, t)?],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("template {:?} exists", t.name)));
        }
        Ok(())
    }

    fn update_template(&self, t: &Template, expected_rv: u64) -> Result<(), StoreError> {
        let what = format!("update template {:?}", t.name);
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| backend(&what, e))?;
        let n = exec(
            &tx,
            &what,
            "UPDATE templates SET resource_version = ?2, json = ?3 WHERE name = ?1 AND resource_version = ?4",
            params![t.name, rv(&what, t.resource_version)?, to_json(&what, t)?, rv(&what, expected_rv)?],
        )?;
        if n == 0 {
            let exists = tx
                .prepare_cached("SELECT 1 FROM templates WHERE name = ?1")
                .and_then(|mut s| s.exists([&t.name]))
                .map_err(|e| backend(&what, e))?;
            return Err(if exists {
                StoreError::Conflict(format!("template {:?} changed; read it again and retry", t.name))
            } else {
                StoreError::NotFound(format!("template {:?}", t.name))
            });
        }
        tx.commit().map_err(|e| backend(&what, e))
    }

    fn get_template(&self, name: &str) -> Result<Option<Template>, StoreError> {
        query_one_json(
            &self.conn.lock(),
            &format!("read template {name:?}"),
            "SELECT json FROM templates WHERE name = ?1",
            [name],
        )
    }

    fn list_templates(&self) -> Result<Vec<Template>, StoreError> {
        query_json(&self.conn.lock(), "list templates", "SELECT json FROM templates ORDER BY name", [])
    }

    fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        let n = exec(
            &self.conn.lock(),
            &format!("delete template {name:?}"),
            "DELETE FROM templates WHERE name = ?1",
            [name],
        )?;
        Ok(n > 0)
    }

    fn create_pool(&self, p: &Pool) -> Result<(), StoreError> {
        let what = format!("insert pool {}/{}", p.namespace, p.name);
        let n = exec(
            &self.conn.lock(),
            &what,
            "INSERT INTO pools (namespace, name, resource_version, json) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (namespace, name) DO NOTHING",
            params![p.namespace, p.name, rv(&what, p.resource_version)?, to_json(&what, p)?],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("pool {}/{} exists", p.namespace, p.name)));
        }
        Ok(())
    }

    fn update_pool(&self, p: &Pool, expected_rv: u64) -> Result<(), StoreError> {
        let what = format!("update pool {}/{}", p.namespace, p.name);
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| backend(&what, e))?;
        let n = exec(
            &tx,
            &what,
            "UPDATE pools SET resource_version = ?3, json = ?4
             WHERE namespace = ?1 AND name = ?2 AND resource_version = ?5",
            params![p.namespace, p.name, rv(&what, p.resource_version)?, to_json(&what, p)?, rv(&what, expected_rv)?],
        )?;
        if n == 0 {
            let exists = tx
                .prepare_cached("SELECT 1 FROM pools WHERE namespace = ?1 AND name = ?2")
                .and_then(|mut s| s.exists([&p.namespace, &p.name]))
                .map_err(|e| backend(&what, e))?;
            return Err(if exists {
                StoreError::Conflict(format!("pool {}/{} changed; read it again and retry", p.namespace, p.name))
            } else {
                StoreError::NotFound(format!("pool {}/{}", p.namespace, p.name))
            });
        }
        tx.commit().map_err(|e| backend(&what, e))
    }

    fn get_pool(&self, namespace: &str, name: &str) -> Result<Option<Pool>, StoreError> {
        query_one_json(
            &self.conn.lock(),
            &format!("read pool {namespace}/{name}"),
            "SELECT json FROM pools WHERE namespace = ?1 AND name = ?2",
            [namespace, name],
        )
    }

    fn list_pools(&self, namespace: Option<&str>) -> Result<Vec<Pool>, StoreError> {
        let conn = self.conn.lock();
        match namespace {
            Some(ns) => query_json(
                &conn,
                &format!("list pools of namespace {ns}"),
                "SELECT json FROM pools WHERE namespace = ?1 ORDER BY namespace, name",
                [ns],
            ),
            None => query_json(&conn, "list pools", "SELECT json FROM pools ORDER BY namespace, name", []),
        }
    }

    fn delete_pool(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let n = exec(
            &self.conn.lock(),
            &format!("delete pool {namespace}/{name}"),
            "DELETE FROM pools WHERE namespace = ?1 AND name = ?2",
            [namespace, name],
        )?;
        Ok(n > 0)
    }

    fn put_slot(&self, s: &Slot) -> Result<(), StoreError> {
        write_slot(&self.conn.lock(), s)
    }

    fn get_slot(&self, slot_id: &str) -> Result<Option<Slot>, StoreError> {
        query_one_json(
            &self.conn.lock(),
            &format!("read slot {slot_id}"),
            "SELECT json FROM slots WHERE slot_id = ?1",
            [slot_id],
        )
    }

    fn list_slots(&self) -> Result<Vec<Slot>, StoreError> {
        query_json(&self.conn.lock(), "list slots", "SELECT json FROM slots ORDER BY slot_id", [])
    }

    fn delete_slot(&self, slot_id: &str) -> Result<(), StoreError> {
        exec(&self.conn.lock(), &format!("delete slot {slot_id}"), "DELETE FROM slots WHERE slot_id = ?1", [slot_id])?;
        Ok(())
    }

    fn claim(&self, slot: &Slot, expected: SlotPhase, sandbox: &Sandbox) -> Result<(), StoreError> {
        let what = format!("claim slot {} for sandbox {}", slot.slot_id, sandbox.sandbox_id);
        let mut conn = self.conn.lock();
        // IMMEDIATE takes the write lock up front: another process cannot change the slot between
        // our phase check and our write.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| backend(&what, e))?;
        let phase: Option<String> = tx
            .prepare_cached("SELECT phase FROM slots WHERE slot_id = ?1")
            .and_then(|mut s| s.query_row([&slot.slot_id], |r| r.get(0)).optional())
            .map_err(|e| backend(&what, e))?;
        match phase {
            None => return Err(StoreError::NotFound(format!("slot {}", slot.slot_id))),
            Some(p) if p != expected.as_str() => {
                return Err(StoreError::Conflict(format!("slot {} is {p}", slot.slot_id)));
            }
            Some(_) => {}
        }
        let taken = tx
            .prepare_cached("SELECT 1 FROM sandboxes WHERE sandbox_id = ?1")
            .and_then(|mut s| s.exists([&sandbox.sandbox_id]))
            .map_err(|e| backend(&what, e))?;
        if taken {
            return Err(StoreError::Conflict(format!("sandbox {} exists", sandbox.sandbox_id)));
        }
        write_slot(&tx, slot)?;
        write_sandbox(&tx, sandbox)?;
        tx.commit().map_err(|e| backend(&what, e))
    }

    fn put_slot_and_sandbox(&self, slot: &Slot, sandbox: &Sandbox) -> Result<(), StoreError> {
        let what = format!("write slot {} and sandbox {}", slot.slot_id, sandbox.sandbox_id);
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| backend(&what, e))?;
        write_slot(&tx, slot)?;
        write_sandbox(&tx, sandbox)?;
        tx.commit().map_err(|e| backend(&what, e))
    }

    fn put_sandbox(&self, s: &Sandbox) -> Result<(), StoreError> {
        write_sandbox(&self.conn.lock(), s)
    }

    fn get_sandbox(&self, sandbox_id: &str) -> Result<Option<Sandbox>, StoreError> {
        query_one_json(
            &self.conn.lock(),
            &format!("read sandbox {sandbox_id}"),
            "SELECT json FROM sandboxes WHERE sandbox_id = ?1",
            [sandbox_id],
        )
    }

    fn list_sandboxes(&self, filter: &SandboxFilter) -> Result<(Vec<Sandbox>, u64), StoreError> {
        let what = "list sandboxes";
        let (clause, mut args) = sandbox_where(filter);
        let mut conn = self.conn.lock();
        // One read transaction so the page and the total see the same snapshot.
        let tx = conn.transaction().map_err(|e| backend(what, e))?;
        let total: i64 = tx
            .prepare_cached(&format!("SELECT COUNT(*) FROM sandboxes{clause}"))
            .and_then(|mut s| s.query_row(params_from_iter(&args), |r| r.get(0)))
            .map_err(|e| backend(what, e))?;
        // SQLite reads a negative LIMIT as "no limit".
        args.push(Value::Integer(if filter.limit == 0 { -1 } else { i64::from(filter.limit) }));
        args.push(Value::Integer(i64::from(filter.offset)));
        let n = args.len();
        let sql = format!(
            "SELECT json FROM sandboxes{clause} ORDER BY claimed_at DESC, sandbox_id ASC LIMIT ?{} OFFSET ?{n}",
            n - 1
        );
        let items = query_json(&tx, what, &sql, params_from_iter(&args))?;
        tx.commit().map_err(|e| backend(what, e))?;
        Ok((items, u64::try_from(total).unwrap_or(0)))
    }

    fn count_sandboxes(&self, namespace: Option<&str>) -> Result<BTreeMap<SandboxStatus, u64>, StoreError> {
        let what = "count sandboxes";
        let conn = self.conn.lock();
        let (sql, args): (&str, Vec<&str>) = match namespace {
            Some(ns) => ("SELECT status, COUNT(*) FROM sandboxes WHERE namespace = ?1 GROUP BY status", vec![ns]),
            None => ("SELECT status, COUNT(*) FROM sandboxes GROUP BY status", vec![]),
        };
        let mut stmt = conn.prepare_cached(sql).map_err(|e| backend(what, e))?;
        let rows = stmt
            .query_map(params_from_iter(args), |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| backend(what, e))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (status, n) = row.map_err(|e| backend(what, e))?;
            let status = SandboxStatus::parse(&status).ok_or_else(|| {
                StoreError::Backend(format!(
                    "sqlite: {what}: unknown sandbox status {status:?} in the database; upgrade agentbox"
                ))
            })?;
            out.insert(status, u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    fn prune_history(&self, before: &str) -> Result<u64, StoreError> {
        let mut args = vec![Value::Text(before.to_string())];
        let mut marks = Vec::new();
        for s in SandboxStatus::ALL.iter().filter(|s| s.is_terminal()) {
            args.push(Value::Text(s.as_str().to_string()));
            marks.push(format!("?{}", args.len()));
        }
        let sql = format!(
            "DELETE FROM sandboxes WHERE status IN ({}) AND COALESCE(terminated_at, claimed_at) < ?1",
            marks.join(", ")
        );
        let n = exec(&self.conn.lock(), &format!("prune history before {before}"), &sql, params_from_iter(args))?;
        Ok(n as u64)
    }

    fn create_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        let what = format!("insert api key {}", k.key_id);
        let n = exec(
            &self.conn.lock(),
            &what,
            "INSERT INTO api_keys (key_id, token_hash, team, user, issued_at, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT DO NOTHING",
            params![k.key_id, k.token_hash, k.team, k.user, k.issued_at, to_json(&what, k)?],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("api key {} exists", k.key_id)));
        }
        Ok(())
    }

    fn put_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        let what = format!("write api key {}", k.key_id);
        exec(
            &self.conn.lock(),
            &what,
            "INSERT OR REPLACE INTO api_keys (key_id, token_hash, team, user, issued_at, json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![k.key_id, k.token_hash, k.team, k.user, k.issued_at, to_json(&what, k)?],
        )?;
        Ok(())
    }

    fn get_api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        query_one_json(
            &self.conn.lock(),
            &format!("read api key {key_id}"),
            "SELECT json FROM api_keys WHERE key_id = ?1",
            [key_id],
        )
    }

    fn find_api_key_by_hash(&self, token_hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        query_one_json(
            &self.conn.lock(),
            "look up api key by hash",
            "SELECT json FROM api_keys WHERE token_hash = ?1",
            [token_hash],
        )
    }

    fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        query_json(
            &self.conn.lock(),
            "list api keys",
            "SELECT json FROM api_keys ORDER BY team, user, issued_at, key_id",
            [],
        )
    }

    fn delete_api_key(&self, key_id: &str) -> Result<bool, StoreError> {
        let n = exec(
            &self.conn.lock(),
            &format!("delete api key {key_id}"),
            "DELETE FROM api_keys WHERE key_id = ?1",
            [key_id],
        )?;
        Ok(n > 0)
    }

    fn create_quota(&self, q: &QuotaRecord) -> Result<(), StoreError> {
        let what = format!("insert quota {:?}", q.name);
        let n = exec(
            &self.conn.lock(),
            &what,
            "INSERT INTO quotas (name, quota_url, resource_version, json) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO NOTHING",
            params![q.name, q.quota_url, rv(&what, q.resource_version)?, to_json(&what, q)?],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!("quota {:?} exists", q.name)));
        }
        Ok(())
    }

    fn update_quota(&self, q: &QuotaRecord, expected_rv: u64) -> Result<(), StoreError> {
        let what = format!("update quota {:?}", q.name);
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| backend(&what, e))?;
        let n = exec(
            &tx,
            &what,
            "UPDATE quotas SET quota_url = ?2, resource_version = ?3, json = ?4 WHERE name = ?1 AND resource_version = ?5",
            params![q.name, q.quota_url, rv(&what, q.resource_version)?, to_json(&what, q)?, rv(&what, expected_rv)?],
        )?;
        if n == 0 {
            let exists = tx
                .prepare_cached("SELECT 1 FROM quotas WHERE name = ?1")
                .and_then(|mut s| s.exists([&q.name]))
                .map_err(|e| backend(&what, e))?;
            return Err(if exists {
                StoreError::Conflict(format!("quota {:?} changed; read it again and retry", q.name))
            } else {
                StoreError::NotFound(format!("quota {:?}", q.name))
            });
        }
        tx.commit().map_err(|e| backend(&what, e))
    }

    fn get_quota(&self, name: &str) -> Result<Option<QuotaRecord>, StoreError> {
        query_one_json(
            &self.conn.lock(),
            &format!("read quota {name:?}"),
            "SELECT json FROM quotas WHERE name = ?1",
            [name],
        )
    }

    fn list_quotas(&self) -> Result<Vec<QuotaRecord>, StoreError> {
        query_json(&self.conn.lock(), "list quotas", "SELECT json FROM quotas ORDER BY quota_url, name", [])
    }

    fn delete_quota(&self, name: &str) -> Result<bool, StoreError> {
        let n =
            exec(&self.conn.lock(), &format!("delete quota {name:?}"), "DELETE FROM quotas WHERE name = ?1", [name])?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_clause_numbers_placeholders_in_argument_order() {
        let f = SandboxFilter {
            namespace: Some("ns".into()),
            user: Some("bob".into()),
            statuses: vec![SandboxStatus::Running, SandboxStatus::Starting, SandboxStatus::Running],
            ..Default::default()
        };
        let (clause, args) = sandbox_where(&f);
        assert_eq!(clause, " WHERE namespace = ?1 AND user = ?2 AND status IN (?3, ?4)");
        let texts: Vec<_> = args
            .iter()
            .map(|v| match v {
                Value::Text(t) => t.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(texts, ["ns", "bob", "Starting", "Running"]);
        assert_eq!(sandbox_where(&SandboxFilter::default()).0, "");
    }

    #[test]
    fn undecodable_row_is_a_backend_error_not_a_panic() {
        let store = SqliteStore::open_in_memory().unwrap();
        store
            .conn
            .lock()
            .execute("INSERT INTO templates (name, resource_version, json) VALUES ('bad', 1, '{not json')", [])
            .unwrap();
        match store.get_template("bad") {
            Err(StoreError::Backend(m)) => assert!(m.contains("read template \"bad\""), "{m}"),
            other => panic!("expected a backend error, got {other:?}"),
        }
    }

    #[test]
    fn resource_version_beyond_i64_is_refused() {
        let store = SqliteStore::open_in_memory().unwrap();
        let mut t = agentbox_core::store::conformance::template("big", "1.0.0");
        t.resource_version = u64::MAX;
        assert!(matches!(store.create_template(&t), Err(StoreError::Backend(m)) if m.contains("exceeds")));
        assert!(store.get_template("big").unwrap().is_none());
    }

    #[test]
    fn list_uses_an_index_for_the_default_order() {
        let store = SqliteStore::open_in_memory().unwrap();
        let conn = store.conn.lock();
        let plan: Vec<String> = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT json FROM sandboxes WHERE pool = ?1 \
                 ORDER BY claimed_at DESC, sandbox_id ASC LIMIT 10",
            )
            .unwrap()
            .query_map(["p"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("; ");
        assert!(plan.contains("sandboxes_by_pool"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "ordering should come from the index: {plan}");
    }
}
