//! Mirror tables: one PostgreSQL table per Aljex table, every field a TEXT
//! column, created on first sight and extended when a new field appears.
//!
//! DDL runs in its own short transaction under a per-table advisory lock with
//! `IF NOT EXISTS`, so concurrent first posts (or sink replicas) never fail on
//! a race. Known columns are cached so the steady state issues no DDL.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, Hash, Hasher},
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use aljex_proto::names::quote_ident;
use foldhash::fast::RandomState;
use sqlx::PgPool;

use crate::tables::TableSpec;

/// Internal columns every mirror table has (names start with `_`, which Aljex names cannot).
pub const INTERNAL_COLUMNS: [&str; 4] = ["_received_at", "_applied_at", "_source", "_deleted_at"];

/// Why a mirror table cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The existing table's primary key differs from the tables configuration.
    #[error("table {table} has primary key ({actual}) but the tables config says ({configured})")]
    KeyMismatch {
        /// Qualified table name.
        table: String,
        /// Primary key columns found in the database.
        actual: String,
        /// Key columns in the configuration.
        configured: String,
    },
}

/// The mirror schema and what is known of its tables.
#[derive(Debug)]
pub struct Mirror {
    schema: String,
    known_columns: RwLock<HashMap<String, KnownTable>>,
    statements: RwLock<HashMap<String, Arc<str>, RandomState>>,
    /// Hashes the column lists of [`KnownTable::verified`].
    list_hasher: RandomState,
}

/// Column names of one table, hashed with foldhash rather than SipHash (names
/// come from authenticated posts).
type ColumnSet = HashSet<String, RandomState>;

/// What is known of one mirror table.
#[derive(Debug, Default)]
struct KnownTable {
    /// Its columns.
    columns: ColumnSet,
    /// Hashes of column lists already checked against `columns`: Aljex sends
    /// the same list for every change of a table, so the steady state checks
    /// one hash instead of every name. Were two lists to collide, the missing
    /// column would fail the statement, and the caller's schema-drift retry
    /// ([`Mirror::forget`]) checks again name by name.
    verified: HashSet<u64, RandomState>,
}

/// Most column-list hashes kept per table (Aljex sends a handful of lists per table).
const VERIFIED_LISTS_CAPACITY: usize = 256;

/// Most distinct upsert statements kept (tables x column sets seen).
const STATEMENT_CACHE_CAPACITY: usize = 512;

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Mirror {
    /// A mirror in `schema` (already validated by the caller).
    pub fn new(schema: impl Into<String>) -> Self {
        Mirror {
            schema: schema.into(),
            known_columns: RwLock::new(HashMap::new()),
            statements: RwLock::new(HashMap::default()),
            list_hasher: RandomState::default(),
        }
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// `"schema"."table"`, quoted for SQL.
    pub fn qualified(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(table))
    }

    /// Creates the schema if it is missing.
    pub async fn create_schema(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("aljex-sync schema {}", self.schema))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(&self.schema)
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The upsert statement of `table` for `columns`, built by `build` on
    /// first use and cached (SQL for wide tables is large to build).
    pub fn upsert_statement(
        &self,
        table: &str,
        columns: &[&str],
        build: impl FnOnce(&[&str]) -> String,
    ) -> Arc<str> {
        let mut cache_key = String::with_capacity(table.len() + columns.len() * 16);
        cache_key.push_str(table);
        for name in columns {
            cache_key.push(',');
            cache_key.push_str(name);
        }
        if let Some(sql) = read(&self.statements).get(&cache_key) {
            return sql.clone();
        }
        let sql: Arc<str> = build(columns).into();
        let mut statements = write(&self.statements);
        if statements.len() >= STATEMENT_CACHE_CAPACITY {
            statements.clear();
        }
        statements.insert(cache_key, sql.clone());
        sql
    }

    /// Drops what is cached about `table` (after an error that suggests the
    /// table changed behind our back).
    pub fn forget(&self, table: &str) {
        self.write_cache().remove(table);
    }

    /// Makes sure `table` exists with its key and every column in `columns`.
    pub async fn ensure_columns<'a>(
        &self,
        pool: &PgPool,
        table: &str,
        spec: &TableSpec,
        columns: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<(), MirrorError> {
        let list = self.list_hash(columns.clone());
        // None: the table is not known yet, so every column counts as missing.
        let missing: Option<Vec<&str>> = match self.read_cache().get(table) {
            Some(known) if known.verified.contains(&list) => return Ok(()),
            Some(known) => Some(
                columns
                    .clone()
                    .into_iter()
                    .filter(|c| !known.columns.contains(*c))
                    .collect(),
            ),
            None => None,
        };
        if missing.as_ref().is_none_or(|missing| !missing.is_empty()) {
            let missing = missing.unwrap_or_else(|| columns.into_iter().collect());
            let columns = self.create_or_extend(pool, table, spec, &missing).await?;
            let known = KnownTable {
                columns,
                verified: HashSet::default(),
            };
            self.write_cache().insert(table.to_string(), known);
        }
        if let Some(known) = self.write_cache().get_mut(table) {
            if known.verified.len() >= VERIFIED_LISTS_CAPACITY {
                known.verified.clear();
            }
            known.verified.insert(list);
        }
        Ok(())
    }

    /// A hash of a column list, in order.
    fn list_hash<'a>(&self, columns: impl IntoIterator<Item = &'a str>) -> u64 {
        let mut hasher = self.list_hasher.build_hasher();
        for column in columns {
            column.hash(&mut hasher);
        }
        hasher.finish()
    }

    async fn create_or_extend(
        &self,
        pool: &PgPool,
        table: &str,
        spec: &TableSpec,
        columns: &[&str],
    ) -> Result<ColumnSet, MirrorError> {
        let qualified = self.qualified(table);
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("aljex-sync table {}.{}", self.schema, table))
            .execute(&mut *tx)
            .await?;
        let key_columns: Vec<String> = spec.key.iter().map(|k| quote_ident(k)).collect();
        let key_defs: String = key_columns
            .iter()
            .map(|k| format!("{k} text NOT NULL, "))
            .collect();
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {qualified} ({key_defs}\
             \"_received_at\" timestamptz NOT NULL, \
             \"_applied_at\" timestamptz NOT NULL DEFAULT now(), \
             \"_source\" text NOT NULL, \
             \"_deleted_at\" timestamptz, \
             PRIMARY KEY ({}))",
            key_columns.join(", ")
        ))
        .execute(&mut *tx)
        .await?;

        let primary_key: Vec<String> = sqlx::query_scalar(
            "SELECT a.attname::text FROM pg_index i \
             JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY k.ord",
        )
        .bind(&qualified)
        .fetch_all(&mut *tx)
        .await?;
        if primary_key != spec.key {
            return Err(MirrorError::KeyMismatch {
                table: format!("{}.{}", self.schema, table),
                actual: primary_key.join(", "),
                configured: spec.key.join(", "),
            });
        }

        let mut existing: ColumnSet = sqlx::query_scalar(
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
        )
        .bind(&qualified)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let additions: Vec<String> = columns
            .iter()
            .filter(|c| !existing.contains(**c))
            .map(|c| format!("ADD COLUMN IF NOT EXISTS {} text", quote_ident(c)))
            .collect();
        if !additions.is_empty() {
            sqlx::query(&format!("ALTER TABLE {qualified} {}", additions.join(", ")))
                .execute(&mut *tx)
                .await?;
            existing.extend(columns.iter().map(|c| c.to_string()));
        }
        tx.commit().await?;
        Ok(existing)
    }

    fn read_cache(&self) -> RwLockReadGuard<'_, HashMap<String, KnownTable>> {
        read(&self.known_columns)
    }

    fn write_cache(&self) -> RwLockWriteGuard<'_, HashMap<String, KnownTable>> {
        write(&self.known_columns)
    }
}
