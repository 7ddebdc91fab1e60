//! `aljex-sink serve`: the gRPC server with health, reflection, metrics and
//! graceful shutdown.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use aljex_proto::v1::sync_sink_server::SyncSinkServer;
use anyhow::{bail, Context};
use sqlx::PgPool;
use tokio::sync::watch;
use tonic_health::server::HealthReporter;

use crate::{
    db::DbArgs,
    ingest::{inbox::Inbox, load::IngestContext},
    metrics,
    mirror::Mirror,
    service::SyncSinkService,
    warm::WarmConnections,
};

/// Flags of `aljex-sink serve` (each also read from an environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Database, schema and tables config.
    #[command(flatten)]
    pub db: DbArgs,
    /// Address of the gRPC server.
    #[arg(long, env = "ALJEX_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// Address of the Prometheus `/metrics` endpoint, or `off`.
    #[arg(long, env = "ALJEX_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: String,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, env = "ALJEX_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout: u64,
    /// Folder where Aljex uploads the morning CSV files (morning sync is off without it).
    #[arg(long, env = "ALJEX_INBOX")]
    pub inbox: Option<PathBuf>,
    /// Seconds a file's size and mtime must stay unchanged before it is ingested.
    #[arg(long, env = "ALJEX_SETTLE", default_value_t = 5.0)]
    pub settle: f64,
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if !(args.settle >= 0.0 && args.settle <= 86_400.0) {
        bail!("--settle / ALJEX_SETTLE must be between 0 and 86400 seconds");
    }
    if args.metrics_listen != "off" {
        let listen: SocketAddr = args.metrics_listen.parse().with_context(|| {
            format!(
                "--metrics-listen / ALJEX_METRICS_LISTEN: {:?} is not an address or `off`",
                args.metrics_listen
            )
        })?;
        metrics::install_exporter(listen)?;
        ::metrics::gauge!(metrics::POOL_MAX).set(f64::from(args.db.db_max_connections));
        tracing::info!(%listen, "metrics at /metrics");
    }

    let (pool, schema, tables) = args.db.connect().await?;
    let mirror = Arc::new(Mirror::new(schema));
    mirror.create_schema(&pool).await?;

    let tables = Arc::new(tables);
    let connections = Arc::new(WarmConnections::new(pool.clone()));
    let service = SyncSinkService::new(
        pool.clone(),
        connections.clone(),
        mirror.clone(),
        tables.clone(),
    );
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
        connections.clone(),
        health_reporter,
        stop_rx.clone(),
    ));
    let inbox = args.inbox.clone().map(|dir| {
        let inbox = Inbox {
            dir,
            settle: Duration::from_secs_f64(args.settle),
        };
        let ctx = IngestContext {
            pool: pool.clone(),
            mirror: mirror.clone(),
            tables: tables.clone(),
        };
        tokio::spawn(inbox.run(ctx, stop_rx.clone()))
    });
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
    if let Some(inbox) = inbox {
        // Finishes the file in hand (its transaction) before stopping.
        if tokio::time::timeout(Duration::from_secs(args.shutdown_timeout), inbox)
            .await
            .is_err()
        {
            tracing::warn!(
                "the morning file in progress did not finish in time; it will be re-ingested"
            );
        }
    }
    connections.clear();
    pool.close().await;
    tracing::info!("stopped");
    Ok(())
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

/// Every 2 s: reports NOT_SERVING on the health service while the database is
/// unreachable, hands long-idle warm connections back to the pool, and sets the
/// pool gauges.
async fn watch_database(
    pool: PgPool,
    connections: Arc<WarmConnections>,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
        connections.sweep();
        metrics::observe_pool(&pool, connections.idle_count());
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
