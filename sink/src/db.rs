//! Database flags shared by `serve` and `ingest`, and connecting with them.

use std::{path::PathBuf, str::FromStr, time::Duration};

use aljex_proto::names::normalize_name;
use anyhow::{bail, Context};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};

use crate::tables::TablesConfig;

/// Schema of the sink's own tables (change log, rejections, tombstones, ingest runs, migrations).
pub const INTERNAL_SCHEMA: &str = "aljex_sync";

/// Where the data goes (each flag also read from an environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Schema of the mirror tables.
    #[arg(long, env = "ALJEX_SCHEMA", default_value = "aljex")]
    pub schema: String,
    /// Tables config (TOML): keys, delete and ingest modes, file names per table. Built-in defaults when absent.
    #[arg(long, env = "ALJEX_TABLES")]
    pub tables: Option<PathBuf>,
    /// Most database connections in the pool, opened on demand. The live path keeps up to half of
    /// them connected between changes: set it to at least twice the posts expected in flight.
    #[arg(long, env = "ALJEX_DB_MAX_CONNECTIONS", default_value_t = 32)]
    pub db_max_connections: u32,
    /// Seconds to wait for a database connection before answering UNAVAILABLE.
    #[arg(long, env = "ALJEX_DB_ACQUIRE_TIMEOUT", default_value_t = 5.0)]
    pub db_acquire_timeout: f64,
}

impl DbArgs {
    /// Validates the flags, reads the tables config, connects and migrates.
    /// Returns the pool, the (folded) mirror schema and the tables config.
    pub async fn connect(&self) -> anyhow::Result<(PgPool, String, TablesConfig)> {
        let schema = normalize_name(&self.schema).context("--schema / ALJEX_SCHEMA")?;
        let tables = match &self.tables {
            Some(path) => TablesConfig::from_file(path)?,
            None => TablesConfig::default(),
        };
        if !(self.db_acquire_timeout > 0.0 && self.db_acquire_timeout <= 3600.0) {
            bail!("--db-acquire-timeout / ALJEX_DB_ACQUIRE_TIMEOUT must be between 0 and 3600 seconds");
        }
        if self.db_max_connections == 0 {
            bail!("--db-max-connections / ALJEX_DB_MAX_CONNECTIONS must be at least 1");
        }
        let pool = self.pool().await?;
        Ok((pool, schema, tables))
    }

    /// Connects the pool and brings the `aljex_sync` schema up to date.
    ///
    /// Every connection's `search_path` is `aljex_sync`, so the migrations table
    /// lives there too, whatever schemas the database user's name shadows. All
    /// other SQL names its schema.
    async fn pool(&self) -> anyhow::Result<PgPool> {
        let options = PgConnectOptions::from_str(&self.database_url)
            .context("--database-url / DATABASE_URL is not a PostgreSQL URL")?
            .options([("search_path", INTERNAL_SCHEMA)]);
        let pool = PgPoolOptions::new()
            .max_connections(self.db_max_connections)
            .acquire_timeout(Duration::from_secs_f64(self.db_acquire_timeout))
            // A broken connection fails its statement and is dropped; no ping per acquire.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .context("cannot connect to PostgreSQL (--database-url / DATABASE_URL)")?;
        let mut tx = pool.begin().await?;
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('aljex-sync schema aljex_sync', 0))",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {INTERNAL_SCHEMA}"))
            .execute(&mut *tx)
            .await
            .context(
                "cannot create the aljex_sync schema (does the user have CREATE on the database?)",
            )?;
        tx.commit().await?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("cannot migrate the aljex_sync schema")?;
        Ok(pool)
    }
}

/// The database's message when an error was caused by the data itself, so
/// retrying cannot help (SQLSTATE class 22, data exception, e.g. a NUL byte in
/// text; class 54, program limit, e.g. too many columns). `None` otherwise.
pub fn data_refusal(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => {
            let state = db.code()?;
            (state.starts_with("22") || state.starts_with("54")).then(|| db.message())
        }
        _ => None,
    }
}
