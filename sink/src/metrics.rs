//! Prometheus metrics of the sink: names, descriptions and the exporter.

use std::net::SocketAddr;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Changes handled, by `table`, `action` and `outcome`.
pub const CHANGES: &str = "aljex_sink_changes_total";
/// Seconds from receiving a change at the sink to its commit.
pub const APPLY_SECONDS: &str = "aljex_sink_apply_seconds";
/// Rejections stored, by `rejected_by`.
pub const REJECTIONS: &str = "aljex_sink_rejections_total";
/// Database pool connections, by `state` (`idle`, `in_use`).
pub const POOL_CONNECTIONS: &str = "aljex_sink_db_pool_connections";
/// Configured maximum of database pool connections.
pub const POOL_MAX: &str = "aljex_sink_db_pool_max_connections";

/// Morning files ingested, by `table` and `status`.
pub const INGEST_RUNS: &str = "aljex_sink_ingest_runs_total";
/// Morning rows, by `table` and `kind` (read, inserted, updated, deleted, rejected).
pub const INGEST_ROWS: &str = "aljex_sink_ingest_rows_total";
/// Seconds per morning file, by `table`.
pub const INGEST_SECONDS: &str = "aljex_sink_ingest_seconds";

/// Starts the `/metrics` HTTP listener on `listen` and describes every metric.
pub fn install_exporter(listen: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(APPLY_SECONDS.to_string()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )?
        .install()
        .map_err(|err| anyhow::anyhow!("cannot serve metrics on {listen}: {err}"))?;
    describe_counter!(
        CHANGES,
        "Live changes handled, by table, action and outcome."
    );
    describe_histogram!(
        APPLY_SECONDS,
        Unit::Seconds,
        "Time to apply and commit one live change."
    );
    describe_counter!(
        REJECTIONS,
        "Refused posts stored in aljex_sync.rejected_changes."
    );
    describe_gauge!(POOL_CONNECTIONS, "Database pool connections by state.");
    describe_gauge!(POOL_MAX, "Configured maximum database pool connections.");
    describe_counter!(INGEST_RUNS, "Morning files ingested, by table and status.");
    describe_counter!(INGEST_ROWS, "Morning rows by table and kind.");
    describe_histogram!(
        INGEST_SECONDS,
        Unit::Seconds,
        "Time to ingest one morning file."
    );
    Ok(())
}

/// Sets the pool gauges; `warm_idle` connections are idle but held by the live path.
pub fn observe_pool(pool: &sqlx::PgPool, warm_idle: usize) {
    let idle = (pool.num_idle() + warm_idle) as f64;
    let size = f64::from(pool.size());
    metrics::gauge!(POOL_CONNECTIONS, "state" => "idle").set(idle);
    metrics::gauge!(POOL_CONNECTIONS, "state" => "in_use").set(size - idle);
}
