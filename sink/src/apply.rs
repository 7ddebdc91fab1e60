//! Applying one validated live change to its mirror table, with its
//! change-log entry, in one transaction (design.md section 3).

use std::borrow::Cow;

use aljex_proto::{action::Action, change::ValidChange, names::quote_ident, v1::Outcome};
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, Postgres};

use crate::{
    mirror::Mirror,
    tables::{DeleteMode, TableSpec},
};

/// Where a change came from and when: everything besides the record itself.
#[derive(Debug, Clone, Copy)]
pub struct ChangeMeta<'a> {
    /// Receive time at the edge.
    pub received_at: DateTime<Utc>,
    /// `web_sync_action` as received.
    pub raw_action: &'a str,
    /// Request id from the edge.
    pub request_id: &'a str,
    /// Client IP from the edge.
    pub client_ip: &'a str,
}

/// The key values of `change` under `spec`, or a one-line reason why it has none.
pub fn key_values(change: &ValidChange<'_>, spec: &TableSpec) -> Result<Vec<String>, String> {
    spec.key
        .iter()
        .map(|column| match change.value(column) {
            None => Err(format!(
                "table {} is keyed by {column} but the post has no {column} field",
                change.table
            )),
            Some(value) if value.trim().is_empty() => Err(format!(
                "table {} is keyed by {column} but {column} is empty",
                change.table
            )),
            Some(value) => Ok(value.to_string()),
        })
        .collect()
}

/// Applies `change` and logs it atomically; returns once committed.
///
/// An upsert is one statement (mirror write and change-log row together, in
/// autocommit: one round trip). A delete needs a few statements in a transaction.
pub async fn apply_change(
    conn: &mut PgConnection,
    mirror: &Mirror,
    spec: &TableSpec,
    change: &ValidChange<'_>,
    key: &[String],
    meta: &ChangeMeta<'_>,
) -> Result<Outcome, sqlx::Error> {
    match change.action {
        Action::Upsert => upsert(conn, mirror, spec, change, key, meta).await,
        Action::Delete => {
            let mut tx = conn.begin().await?;
            let outcome = delete(&mut tx, mirror, spec, change, key, meta).await?;
            log_change(&mut tx, mirror, change, key, meta, outcome).await?;
            tx.commit().await?;
            Ok(outcome)
        }
    }
}

async fn upsert(
    conn: &mut PgConnection,
    mirror: &Mirror,
    spec: &TableSpec,
    change: &ValidChange<'_>,
    key: &[String],
    meta: &ChangeMeta<'_>,
) -> Result<Outcome, sqlx::Error> {
    let values: Vec<&str> = change.fields.iter().map(|(_, v)| *v).collect();
    let sql = mirror.upsert_statement(&change.table, &change.names(), |columns| {
        upsert_sql(mirror, spec, &change.table, columns)
    });
    let written = sqlx::query_scalar::<_, bool>(&sql)
        .bind(&values)
        .bind(meta.received_at)
        .bind(mirror.schema())
        .bind(&change.table)
        .bind(key)
        .bind(meta.raw_action)
        .bind(sqlx::types::Json(FieldsObject(&change.fields)))
        .bind(meta.request_id)
        .bind(meta.client_ip)
        .fetch_one(conn)
        .await?;
    Ok(if written {
        Outcome::Applied
    } else {
        Outcome::Stale
    })
}

/// The upsert statement for `columns` of `table`, with its change-log row.
///
/// Parameters: `$1` the values (text[], in `columns` order), `$2` receive
/// time, `$3` schema, `$4` table, `$5` key (text[]), `$6` raw action, `$7`
/// fields (JSONB), `$8` request id, `$9` client IP. Inserts unless a newer tombstone
/// exists; updates only rows received earlier. Returns true when written,
/// false when stale; the change log says `applied` or `stale` accordingly.
pub fn upsert_sql(mirror: &Mirror, spec: &TableSpec, table: &str, columns: &[&str]) -> String {
    let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let placeholders: Vec<String> = (1..=quoted.len()).map(|i| format!("v[{i}]")).collect();
    let updates: String = columns
        .iter()
        .zip(&quoted)
        .filter(|(name, _)| !spec.key.iter().any(|k| k == *name))
        .map(|(_, c)| format!("{c} = EXCLUDED.{c}, "))
        .collect();
    format!(
        "WITH written AS (\
         INSERT INTO {table} AS m ({columns}, \"_received_at\", \"_applied_at\", \"_source\", \"_deleted_at\") \
         SELECT {placeholders}, $2, now(), 'live', NULL FROM (SELECT $1::text[] AS v) AS input \
         WHERE NOT EXISTS (SELECT 1 FROM aljex_sync.tombstones t \
             WHERE t.schema_name = $3 AND t.table_name = $4 AND t.key = $5 AND t.received_at > $2) \
         ON CONFLICT ({key_columns}) DO UPDATE SET {updates}\
             \"_received_at\" = EXCLUDED.\"_received_at\", \"_applied_at\" = EXCLUDED.\"_applied_at\", \
             \"_source\" = EXCLUDED.\"_source\", \"_deleted_at\" = NULL \
         WHERE m.\"_received_at\" <= EXCLUDED.\"_received_at\" \
         RETURNING 1) \
         INSERT INTO aljex_sync.change_log (schema_name, table_name, key, action, raw_action, \
             fields, received_at, request_id, client_ip, outcome, source) \
         SELECT $3, $4, $5, 'upsert', $6, $7, $2, $8, $9, \
             CASE WHEN EXISTS (SELECT 1 FROM written) THEN 'applied' ELSE 'stale' END, 'live' \
         RETURNING outcome = 'applied'",
        table = mirror.qualified(table),
        columns = quoted.join(", "),
        placeholders = placeholders.join(", "),
        key_columns = key_column_list(spec),
    )
}

/// The change-log insert for deletes: schema, table, key, action, raw action,
/// fields (JSONB), receive time, request id, client IP, outcome.
const LOG_CHANGE_SQL: &str =
    "INSERT INTO aljex_sync.change_log (schema_name, table_name, key, action, raw_action, \
     fields, received_at, request_id, client_ip, outcome, source) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'live')";

/// Serializes fields as a JSON object in their order, without copying them.
struct FieldsObject<'a, 'b>(&'a [(Cow<'b, str>, &'b str)]);

impl serde::Serialize for FieldsObject<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
    }
}

/// Every field as a JSON object (folded name to value), as the change log stores it.
pub fn fields_json(change: &ValidChange<'_>) -> String {
    serde_json::to_string(&FieldsObject(&change.fields)).unwrap_or_default()
}

async fn delete(
    tx: &mut PgConnection,
    mirror: &Mirror,
    spec: &TableSpec,
    change: &ValidChange<'_>,
    key: &[String],
    meta: &ChangeMeta<'_>,
) -> Result<Outcome, sqlx::Error> {
    let table = mirror.qualified(&change.table);
    let key_match = key_predicate(spec, 1);
    let r = spec.key.len() + 1;
    let sql = match spec.delete {
        DeleteMode::Hard => format!(
            "DELETE FROM {table} WHERE {key_match} AND \"_received_at\" <= ${r} RETURNING 1"
        ),
        DeleteMode::Soft => format!(
            "UPDATE {table} SET \"_deleted_at\" = ${r}, \"_received_at\" = ${r}, \
             \"_applied_at\" = now(), \"_source\" = 'live' \
             WHERE {key_match} AND \"_received_at\" <= ${r} RETURNING 1"
        ),
    };
    let deleted = bind_key(sqlx::query(&sql), key)
        .bind(meta.received_at)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    if !deleted {
        let exists = bind_key(
            sqlx::query(&format!("SELECT 1 FROM {table} WHERE {key_match}")),
            key,
        )
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if exists {
            return Ok(Outcome::Stale);
        }
    }
    sqlx::query(
        "INSERT INTO aljex_sync.tombstones (schema_name, table_name, key, received_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (schema_name, table_name, key) \
         DO UPDATE SET received_at = GREATEST(aljex_sync.tombstones.received_at, EXCLUDED.received_at)",
    )
    .bind(mirror.schema())
    .bind(&change.table)
    .bind(key)
    .bind(meta.received_at)
    .execute(&mut *tx)
    .await?;
    Ok(if deleted {
        Outcome::Deleted
    } else {
        Outcome::NotFound
    })
}

async fn log_change(
    tx: &mut PgConnection,
    mirror: &Mirror,
    change: &ValidChange<'_>,
    key: &[String],
    meta: &ChangeMeta<'_>,
    outcome: Outcome,
) -> Result<(), sqlx::Error> {
    sqlx::query(LOG_CHANGE_SQL)
        .bind(mirror.schema())
        .bind(&change.table)
        .bind(key)
        .bind(change.action.as_str())
        .bind(meta.raw_action)
        .bind(sqlx::types::Json(FieldsObject(&change.fields)))
        .bind(meta.received_at)
        .bind(meta.request_id)
        .bind(meta.client_ip)
        .bind(outcome.label())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// `"k1", "k2"`
fn key_column_list(spec: &TableSpec) -> String {
    spec.key
        .iter()
        .map(|k| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `"k1" = $first AND "k2" = $first+1`
fn key_predicate(spec: &TableSpec, first: usize) -> String {
    spec.key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} = ${}", quote_ident(k), first + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn bind_key<'q>(
    mut query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    key: &'q [String],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for value in key {
        query = query.bind(value);
    }
    query
}
