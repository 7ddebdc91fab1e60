//! The `aljex.sync.v1.SyncSink` gRPC service.

use std::{sync::Arc, time::Instant};

use aljex_proto::{
    change::{validate, ValidChange},
    names::truncate_for_message,
    v1::{sync_sink_server::SyncSink, ChangeReply, ChangeRequest, Rejection, RejectionReply},
};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::{
    apply::{apply_change, key_values, ChangeMeta},
    db::data_refusal,
    metrics::{APPLY_SECONDS, CHANGES, REJECTIONS},
    mirror::{Mirror, MirrorError},
    rejections::{record_edge_rejection, record_refused_change},
    tables::{TableSpec, TablesConfig},
    warm::WarmConnections,
};

/// Applies live changes to the mirror tables in PostgreSQL.
#[derive(Debug, Clone)]
pub struct SyncSinkService {
    pool: PgPool,
    connections: Arc<WarmConnections>,
    mirror: Arc<Mirror>,
    tables: Arc<TablesConfig>,
}

impl SyncSinkService {
    /// A service writing to `mirror` through `pool`; live changes through `connections` (taken from `pool`).
    pub fn new(
        pool: PgPool,
        connections: Arc<WarmConnections>,
        mirror: Arc<Mirror>,
        tables: Arc<TablesConfig>,
    ) -> Self {
        SyncSinkService {
            connections,
            pool,
            mirror,
            tables,
        }
    }

    async fn apply(
        &self,
        change: &ValidChange<'_>,
        spec: &TableSpec,
        key: &[String],
        meta: &ChangeMeta<'_>,
    ) -> Result<aljex_proto::v1::Outcome, MirrorError> {
        let columns = change.fields.iter().map(|(name, _)| name.as_ref());
        self.mirror
            .ensure_columns(&self.pool, &change.table, spec, columns)
            .await?;
        let mut connection = self.connections.lease().await?;
        let outcome = apply_change(&mut connection, &self.mirror, spec, change, key, meta).await?;
        connection.keep();
        Ok(outcome)
    }

    /// Applies once, and once more if the table changed behind the cache's back.
    async fn apply_with_retry(
        &self,
        change: &ValidChange<'_>,
        spec: &TableSpec,
        key: &[String],
        meta: &ChangeMeta<'_>,
    ) -> Result<aljex_proto::v1::Outcome, MirrorError> {
        match self.apply(change, spec, key, meta).await {
            Err(MirrorError::Database(err)) if is_schema_drift(&err) => {
                tracing::warn!(table = %change.table, error = %err, "mirror table changed outside the sink; retrying");
                self.mirror.forget(&change.table);
                self.apply(change, spec, key, meta).await
            }
            other => other,
        }
    }

    async fn refuse(
        &self,
        request: &ChangeRequest,
        received_at: DateTime<Utc>,
        reason: String,
    ) -> Status {
        match record_refused_change(&self.pool, request, received_at, &reason).await {
            Ok(id) => {
                metrics::counter!(REJECTIONS, "rejected_by" => "sink").increment(1);
                tracing::info!(request_id = %request.request_id, rejection_id = id, %reason, "change refused");
                Status::invalid_argument(reason)
            }
            Err(err) => {
                tracing::error!(request_id = %request.request_id, error = %err, "cannot record refused change");
                database_status(&err)
            }
        }
    }
}

#[tonic::async_trait]
impl SyncSink for SyncSinkService {
    async fn apply_change(
        &self,
        request: Request<ChangeRequest>,
    ) -> Result<Response<ChangeReply>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let received_at = received_time(request.received_at_unix_micros);
        let change = match validate(&request) {
            Ok(change) => change,
            Err(err) => {
                count(
                    &truncate_for_message(&request.table.to_ascii_lowercase()),
                    "unknown",
                    "rejected",
                );
                return Err(self.refuse(&request, received_at, err.to_string()).await);
            }
        };
        let spec = self.tables.spec(&change.table);
        let key = match key_values(&change, spec) {
            Ok(key) => key,
            Err(reason) => {
                count(&change.table, change.action.as_str(), "rejected");
                return Err(self.refuse(&request, received_at, reason).await);
            }
        };
        let meta = ChangeMeta {
            received_at,
            raw_action: &request.action,
            request_id: &request.request_id,
            client_ip: &request.client_ip,
        };
        let result = self.apply_with_retry(&change, spec, &key, &meta).await;
        match result {
            Ok(outcome) => {
                let label = outcome.label();
                count(&change.table, change.action.as_str(), label);
                metrics::histogram!(APPLY_SECONDS, "table" => change.table.clone())
                    .record(started.elapsed().as_secs_f64());
                tracing::debug!(request_id = %request.request_id, table = %change.table, key = ?key, outcome = label, "change applied");
                Ok(Response::new(ChangeReply {
                    outcome: outcome.into(),
                    table: change.table,
                    key: key.join("|"),
                }))
            }
            Err(MirrorError::Database(err)) => {
                count(&change.table, change.action.as_str(), "error");
                tracing::error!(request_id = %request.request_id, table = %change.table, error = %err, "change not applied");
                if let Some(message) = data_refusal(&err) {
                    let reason = format!("database refused the change: {message}");
                    return Err(self.refuse(&request, received_at, reason).await);
                }
                Err(database_status(&err))
            }
            Err(err @ MirrorError::KeyMismatch { .. }) => {
                count(&change.table, change.action.as_str(), "error");
                tracing::error!(request_id = %request.request_id, error = %err, "change not applied");
                Err(Status::failed_precondition(err.to_string()))
            }
        }
    }

    async fn record_rejection(
        &self,
        request: Request<Rejection>,
    ) -> Result<Response<RejectionReply>, Status> {
        let rejection = request.into_inner();
        let received_at = received_time(rejection.received_at_unix_micros);
        match record_edge_rejection(&self.pool, &rejection, received_at).await {
            Ok(id) => {
                metrics::counter!(REJECTIONS, "rejected_by" => "edge").increment(1);
                tracing::info!(request_id = %rejection.request_id, rejection_id = id, reason = %rejection.reason, "edge rejection recorded");
                Ok(Response::new(RejectionReply { id }))
            }
            Err(err) => {
                tracing::error!(request_id = %rejection.request_id, error = %err, "cannot record edge rejection");
                Err(database_status(&err))
            }
        }
    }
}

fn count(table: &str, action: &'static str, outcome: &'static str) {
    metrics::counter!(CHANGES, "table" => table.to_string(), "action" => action, "outcome" => outcome)
        .increment(1);
}

/// The edge's receive time, or now when the caller sent none.
fn received_time(micros: i64) -> DateTime<Utc> {
    if micros == 0 {
        return Utc::now();
    }
    DateTime::from_timestamp_micros(micros).unwrap_or_else(Utc::now)
}

/// A table or column missing that the cache thought was there.
fn is_schema_drift(err: &sqlx::Error) -> bool {
    matches!(sqlx_state(err).as_deref(), Some("42P01" | "42703"))
}

fn sqlx_state(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// The gRPC status for a database failure: retryable ones are `UNAVAILABLE`.
pub fn database_status(err: &sqlx::Error) -> Status {
    let retryable = match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => matches!(
            sqlx_state(err).as_deref().and_then(|s| s.get(..2)),
            Some("08" | "40" | "53" | "57" | "58")
        ),
        _ => false,
    };
    if retryable {
        Status::unavailable(format!("database unavailable: {err}"))
    } else {
        Status::internal(format!("database error: {err}"))
    }
}
