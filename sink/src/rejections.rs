//! Storing refused posts in `aljex_sync.rejected_changes`, whole, so nothing
//! an authenticated client sent is lost.

use aljex_proto::v1::{ChangeRequest, Rejection};
use chrono::{DateTime, Utc};
use prost::Message;
use serde_json::Value;
use sqlx::PgPool;

/// Who refused the post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectedBy {
    /// The sink (bad names, action or key).
    Sink,
    /// The edge filter (bad form before it became a change).
    Edge,
}

impl RejectedBy {
    fn as_str(self) -> &'static str {
        match self {
            RejectedBy::Sink => "sink",
            RejectedBy::Edge => "edge",
        }
    }
}

/// Records a change the sink refused; returns the row id.
pub async fn record_refused_change(
    pool: &PgPool,
    request: &ChangeRequest,
    received_at: DateTime<Utc>,
    reason: &str,
) -> Result<i64, sqlx::Error> {
    // JSON text cannot hold NUL; the byte-exact protobuf in `request` keeps it.
    let readable = |text: &str| Value::String(text.replace('\0', "\u{fffd}"));
    let fields: Vec<Value> = request
        .fields
        .iter()
        .map(|f| Value::Array(vec![readable(&f.name), readable(&f.value)]))
        .collect();
    sqlx::query_scalar(
        "INSERT INTO aljex_sync.rejected_changes (received_at, rejected_by, reason, request_id, \
         client_ip, table_name, raw_action, fields, request) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(received_at)
    .bind(RejectedBy::Sink.as_str())
    .bind(reason.replace('\0', "\u{fffd}"))
    .bind(request.request_id.replace('\0', ""))
    .bind(request.client_ip.replace('\0', ""))
    .bind(request.table.replace('\0', "\u{fffd}"))
    .bind(request.action.replace('\0', "\u{fffd}"))
    .bind(sqlx::types::Json(Value::Array(fields)))
    .bind(request.encode_to_vec())
    .fetch_one(pool)
    .await
}

/// Records a post refused at the edge; returns the row id.
pub async fn record_edge_rejection(
    pool: &PgPool,
    rejection: &Rejection,
    received_at: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO aljex_sync.rejected_changes (received_at, rejected_by, reason, http_status, \
         request_id, client_ip, body) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(received_at)
    .bind(RejectedBy::Edge.as_str())
    .bind(rejection.reason.replace('\0', "\u{fffd}"))
    .bind(i32::try_from(rejection.http_status).ok())
    .bind(rejection.request_id.replace('\0', ""))
    .bind(rejection.client_ip.replace('\0', ""))
    .bind(&rejection.body)
    .fetch_one(pool)
    .await
}
