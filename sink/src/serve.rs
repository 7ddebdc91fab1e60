//! `aljex-sink serve`: the gRPC server with health, reflection, metrics and
//! graceful shutdown.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use aljex_proto::{names::normalize_name, v1::sync_sink_server::SyncSinkServer};
use anyhow::{bail, Context};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};
use tokio::sync::watch;
use tonic_health::server::HealthReporter;

use crate::{metrics, mirror::Mirror, service::SyncSinkService, tables::TablesConfig};

/// Schema of the sink's own tables (change log, rejections, tombstones, migrations).
pub const INTERNAL_SCHEMA: &str = "aljex_sync";

/// Flags of `aljex-sink serve` (each also read from an environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Address of the gRPC server.
    #[arg(long, env = "ALJEX_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// Schema of the mirror tables.
    #[arg(long, env = "ALJEX_SCHEMA", default_value = "aljex")]
    pub schema: String,
    /// Tables config (TOML): key columns and delete mode per table. Built-in defaults when absent.
    #[arg(long, env = "ALJEX_TABLES")]
    pub tables: Option<PathBuf>,
    /// Address of the Prometheus `/metrics` endpoint, or `off`.
    #[arg(long, env = "ALJEX_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: String,
    /// Most database connections in the pool.
    #[arg(long, env = "ALJEX_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Seconds to wait for a database connection before answering UNAVAILABLE.
    #[arg(long, env = "ALJEX_DB_ACQUIRE_TIMEOUT", default_value_t = 5.0)]
    pub db_acquire_timeout: f64,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, env = "ALJEX_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let schema = normalize_name(&args.schema).context("--schema / ALJEX_SCHEMA")?;
    let tables = match &args.tables {
        Some(path) => TablesConfig::from_file(path)?,
        None => TablesConfig::default(),
    };
    if !(args.db_acquire_timeout > 0.0 && args.db_acquire_timeout <= 3600.0) {
        bail!("--db-acquire-timeout / ALJEX_DB_ACQUIRE_TIMEOUT must be between 0 and 3600 seconds");
    }
    if args.db_max_connections == 0 {
        bail!("--db-max-connections / ALJEX_DB_MAX_CONNECTIONS must be at least 1");
    }
    if args.metrics_listen != "off" {
        let listen: SocketAddr = args.metrics_listen.parse().with_context(|| {
            format!(
                "--metrics-listen / ALJEX_METRICS_LISTEN: {:?} is not an address or `off`",
                args.metrics_listen
            )
        })?;
        metrics::install_exporter(listen)?;
        ::metrics::gauge!(metrics::POOL_MAX).set(f64::from(args.db_max_connections));
        tracing::info!(%listen, "metrics at /metrics");
    }

    let pool = connect(&args).await?;
    let mirror = Arc::new(Mirror::new(schema));
    mirror.create_schema(&pool).await?;

    let service = SyncSinkService::new(pool.clone(), mirror.clone(), Arc::new(tables.clone()));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SyncSinkServer<SyncSinkService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(aljex_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build gRPC reflection")?;

    let listener = tokio::net::TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--grpc-listen)", args.grpc_listen))?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(watch_database(
        pool.clone(),
        health_reporter,
        stop_rx.clone(),
    ));
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(SyncSinkServer::new(service))
        .serve_with_incoming_shutdown(tokio_stream_listener(listener), async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        });
    tracing::info!(
        grpc = %args.grpc_listen,
        schema = %mirror.schema(),
        tables = %tables.listed().map(|(n, s)| format!("{n}: {s}")).collect::<Vec<_>>().join("; "),
        "aljex-sink serving"
    );
    let mut server = tokio::spawn(server);
    tokio::select! {
        result = &mut server => {
            result.context("server task failed")?.context("gRPC server failed")?;
        }
        () = shutdown_signal() => {
            tracing::info!(timeout_secs = args.shutdown_timeout, "shutting down");
            let _ = stop_tx.send(true);
            match tokio::time::timeout(Duration::from_secs(args.shutdown_timeout), &mut server).await {
                Ok(result) => result.context("server task failed")?.context("gRPC server failed")?,
                Err(_) => {
                    tracing::warn!("in-flight requests did not finish in time; stopping anyway");
                    server.abort();
                }
            }
        }
    }
    watcher.abort();
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Connects the pool and brings the `aljex_sync` schema up to date.
///
/// Every connection's `search_path` is `aljex_sync`, so the migrations table
/// lives there too, whatever schemas the database user's name shadows. All
/// other SQL names its schema.
async fn connect(args: &ServeArgs) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&args.database_url)
        .context("--database-url / DATABASE_URL is not a PostgreSQL URL")?
        .options([("search_path", INTERNAL_SCHEMA)]);
    let pool = PgPoolOptions::new()
        .max_connections(args.db_max_connections)
        .acquire_timeout(Duration::from_secs_f64(args.db_acquire_timeout))
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

/// Accepted connections with TCP_NODELAY: replies are small, and Nagle's
/// algorithm with delayed ACKs would hold some of them for ~40 ms.
fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.and_then(|stream| {
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    })
}

/// Reports NOT_SERVING on the health service while the database is unreachable.
async fn watch_database(pool: PgPool, reporter: HealthReporter, mut stop: watch::Receiver<bool>) {
    let mut serving = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
        let healthy = tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(&pool),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if healthy != serving {
            serving = healthy;
            if healthy {
                tracing::info!("database reachable again; serving");
                reporter
                    .set_serving::<SyncSinkServer<SyncSinkService>>()
                    .await;
            } else {
                tracing::warn!("database unreachable; health is NOT_SERVING");
                reporter
                    .set_not_serving::<SyncSinkServer<SyncSinkService>>()
                    .await;
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
