//! Applying one validated live change to its mirror table, with its
//! change-log entry, in one transaction (design.md section 3).

use aljex_proto::{action::Action, change::ValidChange, names::quote_ident, v1::Outcome};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::{PgConnection, Postgres};

use crate::{
    mirror::Mirror,
    tables::{DeleteMode, TableSpec},
};

/// Where a change came from and when: everything besides the record itself.
#[derive(Debug, Clone)]
pub struct ChangeMeta {
    /// Receive time at the edge.
    pub received_at: DateTime<Utc>,
    /// `web_sync_action` as received.
    pub raw_action: String,
    /// Request id from the edge.
    pub request_id: String,
    /// Client IP from the edge.
    pub client_ip: String,
}

/// Label of an outcome for the change log, metrics and replies.
pub fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Applied => "applied",
        Outcome::Deleted => "deleted",
        Outcome::NotFound => "not_found",
        Outcome::Stale => "stale",
        Outcome::Unspecified => "unspecified",
    }
}

/// The key values of `change` under `spec`, or a one-line reason why it has none.
pub fn key_values(change: &ValidChange, spec: &TableSpec) -> Result<Vec<String>, String> {
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

/// Applies `change` inside the caller's transaction and logs it; the caller commits.
pub async fn apply_change(
    tx: &mut PgConnection,
    mirror: &Mirror,
    spec: &TableSpec,
    change: &ValidChange,
    key: &[String],
    meta: &ChangeMeta,
) -> Result<Outcome, sqlx::Error> {
    let outcome = match change.action {
        Action::Upsert => upsert(tx, mirror, spec, change, key, meta).await?,
        Action::Delete => delete(tx, mirror, spec, change, key, meta).await?,
    };
    log_change(tx, mirror, change, key, meta, outcome).await?;
    Ok(outcome)
}

async fn upsert(
    tx: &mut PgConnection,
    mirror: &Mirror,
    spec: &TableSpec,
    change: &ValidChange,
    key: &[String],
    meta: &ChangeMeta,
) -> Result<Outcome, sqlx::Error> {
    let columns: Vec<String> = change.fields.iter().map(|(n, _)| quote_ident(n)).collect();
    let n = columns.len();
    let placeholders: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    let updates: String = columns
        .iter()
        .filter(|c| !spec.key.iter().any(|k| quote_ident(k) == **c))
        .map(|c| format!("{c} = EXCLUDED.{c}, "))
        .collect();
    let sql = format!(
        "INSERT INTO {table} AS m ({columns}, \"_received_at\", \"_applied_at\", \"_source\", \"_deleted_at\") \
         SELECT {placeholders}, ${r}, now(), 'live', NULL \
         WHERE NOT EXISTS (SELECT 1 FROM aljex_sync.tombstones t \
             WHERE t.schema_name = ${s} AND t.table_name = ${t} AND t.key = ${k} AND t.received_at > ${r}) \
         ON CONFLICT ({key_columns}) DO UPDATE SET {updates}\
             \"_received_at\" = EXCLUDED.\"_received_at\", \"_applied_at\" = EXCLUDED.\"_applied_at\", \
             \"_source\" = EXCLUDED.\"_source\", \"_deleted_at\" = NULL \
         WHERE m.\"_received_at\" <= EXCLUDED.\"_received_at\" \
         RETURNING 1",
        table = mirror.qualified(&change.table),
        columns = columns.join(", "),
        placeholders = placeholders.join(", "),
        r = n + 1,
        s = n + 2,
        t = n + 3,
        k = n + 4,
        key_columns = key_column_list(spec),
    );
    let mut query = sqlx::query(&sql);
    for (_, value) in &change.fields {
        query = query.bind(value);
    }
    let written = query
        .bind(meta.received_at)
        .bind(mirror.schema())
        .bind(&change.table)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
    Ok(if written.is_some() {
        Outcome::Applied
    } else {
        Outcome::Stale
    })
}

async fn delete(
    tx: &mut PgConnection,
    mirror: &Mirror,
    spec: &TableSpec,
    change: &ValidChange,
    key: &[String],
    meta: &ChangeMeta,
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
    change: &ValidChange,
    key: &[String],
    meta: &ChangeMeta,
    outcome: Outcome,
) -> Result<(), sqlx::Error> {
    let fields: Map<String, Value> = change
        .fields
        .iter()
        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
        .collect();
    sqlx::query(
        "INSERT INTO aljex_sync.change_log (schema_name, table_name, key, action, raw_action, \
         fields, received_at, request_id, client_ip, outcome, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'live')",
    )
    .bind(mirror.schema())
    .bind(&change.table)
    .bind(key)
    .bind(change.action.as_str())
    .bind(&meta.raw_action)
    .bind(sqlx::types::Json(Value::Object(fields)))
    .bind(meta.received_at)
    .bind(&meta.request_id)
    .bind(&meta.client_ip)
    .bind(outcome_label(outcome))
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
