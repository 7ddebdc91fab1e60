//! Loading one morning file into its mirror table, all or nothing: COPY into
//! a temporary staging table, keep the last row per key, merge, and (for
//! snapshot files) remove the rows the file no longer has.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use aljex_proto::names::quote_ident;
use anyhow::Context;
use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;

use super::{
    names::file_stem,
    reader::{check_row, inspect, open_csv, Header, KeyFilter},
};
use crate::{
    db::data_refusal,
    metrics::{INGEST_ROWS, INGEST_RUNS, INGEST_SECONDS},
    mirror::{Mirror, MirrorError},
    tables::{DeleteMode, IngestMode, TableSpec, TablesConfig},
};

/// COPY data is sent in chunks of about this size.
const COPY_CHUNK_BYTES: usize = 1 << 20;
/// Chunks parsed ahead of the database (bounds memory).
const CHUNKS_IN_FLIGHT: usize = 4;

/// What ingestion needs: the database and the tables configuration.
#[derive(Debug, Clone)]
pub struct IngestContext {
    /// Database pool.
    pub pool: PgPool,
    /// The mirror schema.
    pub mirror: Arc<Mirror>,
    /// Tables configuration.
    pub tables: Arc<TablesConfig>,
}

/// One file to ingest.
#[derive(Debug, Clone)]
pub struct IngestJob {
    /// Where the file is now.
    pub path: PathBuf,
    /// Its name as delivered (for the run record).
    pub file_name: String,
    /// The table, overriding the file-name mapping.
    pub table: Option<String>,
    /// Apply a snapshot even if it is empty or much smaller than the table.
    pub force: bool,
    /// When Aljex exported the file; live changes received later win.
    pub export_time: DateTime<Utc>,
    /// Where to write the rejected rows (`line,reason,record`), if any.
    pub rejects_path: PathBuf,
    /// Progress by bytes read, for the CLI.
    pub progress: Option<ProgressBar>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Committed.
    Applied,
    /// Same content as a file already applied; nothing done.
    Duplicate,
    /// Refused or broken; nothing applied.
    Failed,
}

impl RunStatus {
    /// `applied`, `duplicate` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Applied => "applied",
            RunStatus::Duplicate => "duplicate",
            RunStatus::Failed => "failed",
        }
    }
}

/// The outcome of one file, as recorded in `aljex_sync.ingest_runs`.
#[derive(Debug, Clone, Default)]
pub struct IngestSummary {
    /// Row id in `ingest_runs`.
    pub run_id: i64,
    /// File name.
    pub file_name: String,
    /// Target table, when known.
    pub table: Option<String>,
    /// How it ended.
    pub status: Option<RunStatus>,
    /// `snapshot` or `window`.
    pub mode: Option<IngestMode>,
    /// `UTF-8` or `windows-1252`.
    pub encoding: String,
    /// File size.
    pub bytes: u64,
    /// Data rows in the file.
    pub rows_read: u64,
    /// New rows.
    pub rows_inserted: u64,
    /// Changed rows.
    pub rows_updated: u64,
    /// Rows already equal, or kept because a newer live change exists.
    pub rows_unchanged: u64,
    /// Rows removed because a snapshot no longer has them.
    pub rows_deleted: u64,
    /// Rows refused (see the rejects file).
    pub rows_rejected: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Why a load did not commit.
enum FileFailure {
    /// The file is refused (not retried).
    Refused(String),
    /// The direct first load met a repeated key: load again through staging.
    RepeatedKey,
}

/// Ingests one file. `Ok` for every data outcome (applied, duplicate,
/// failed); `Err` only when the database is unavailable, so the caller keeps
/// the file and tries again later.
pub async fn ingest(ctx: &IngestContext, job: &IngestJob) -> anyhow::Result<IngestSummary> {
    let started = Instant::now();
    let path = job.path.clone();
    let facts = tokio::task::spawn_blocking(move || inspect(&path))
        .await?
        .with_context(|| format!("cannot read {}", job.path.display()))?;
    let table = job.table.clone().or_else(|| {
        ctx.tables
            .table_for_file(&file_stem(Path::new(&job.file_name)))
            .map(str::to_string)
    });
    let mut summary = IngestSummary {
        file_name: job.file_name.clone(),
        table: table.clone(),
        encoding: facts.encoding.name().to_string(),
        bytes: facts.bytes,
        ..IngestSummary::default()
    };
    let spec = table.as_deref().map(|t| ctx.tables.spec(t).clone());
    summary.mode = spec.as_ref().map(|s| s.mode);
    // A run of the same content left `running` was cut short (the sink stopped).
    sqlx::query(
        "UPDATE aljex_sync.ingest_runs SET status = 'interrupted', finished_at = now() \
         WHERE schema_name = $1 AND sha256 = $2 AND status = 'running'",
    )
    .bind(ctx.mirror.schema())
    .bind(&facts.sha256)
    .execute(&ctx.pool)
    .await?;
    summary.run_id = sqlx::query_scalar(
        "INSERT INTO aljex_sync.ingest_runs (file_name, schema_name, table_name, sha256, mode, \
         encoding, bytes, export_time, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running') RETURNING id",
    )
    .bind(&job.file_name)
    .bind(ctx.mirror.schema())
    .bind(&table)
    .bind(&facts.sha256)
    .bind(summary.mode.map(IngestMode::as_str))
    .bind(&summary.encoding)
    .bind(i64::try_from(facts.bytes).unwrap_or(i64::MAX))
    .bind(job.export_time)
    .fetch_one(&ctx.pool)
    .await?;

    let outcome = match (table.as_deref(), spec.as_ref()) {
        (Some(table), Some(spec)) => {
            let first = load(ctx, job, table, spec, &facts.sha256, facts.encoding, true, &mut summary).await;
            match first {
                Ok(Err(FileFailure::RepeatedKey)) => {
                    load(ctx, job, table, spec, &facts.sha256, facts.encoding, false, &mut summary).await
                }
                other => other,
            }
        }
        _ => Ok(Err(FileFailure::Refused(format!(
            "no table for file {:?} (normalised name {:?}); add it to a table's `files` in the tables config",
            job.file_name,
            file_stem(Path::new(&job.file_name))
        )))),
    };
    let status = match outcome? {
        Ok(status) => status,
        Err(FileFailure::Refused(reason)) => {
            summary.error = Some(reason);
            RunStatus::Failed
        }
        Err(FileFailure::RepeatedKey) => {
            summary.error = Some("a key repeats in the file".to_string());
            RunStatus::Failed
        }
    };
    summary.status = Some(status);
    summary.seconds = started.elapsed().as_secs_f64();
    if status != RunStatus::Applied {
        finish_run(&ctx.pool, &summary).await?;
    }
    if summary.rows_rejected > 0 {
        store_rejects(&ctx.pool, summary.run_id, &job.file_name, &job.rejects_path).await?;
    }
    let table_label = table.unwrap_or_else(|| "unknown".to_string());
    metrics::counter!(INGEST_RUNS, "table" => table_label.clone(), "status" => status.as_str())
        .increment(1);
    metrics::histogram!(INGEST_SECONDS, "table" => table_label.clone()).record(summary.seconds);
    for (kind, rows) in [
        ("read", summary.rows_read),
        ("inserted", summary.rows_inserted),
        ("updated", summary.rows_updated),
        ("deleted", summary.rows_deleted),
        ("rejected", summary.rows_rejected),
    ] {
        metrics::counter!(INGEST_ROWS, "table" => table_label.clone(), "kind" => kind)
            .increment(rows);
    }
    Ok(summary)
}

/// Records the end of a run that did not commit data.
async fn finish_run(pool: &PgPool, summary: &IngestSummary) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE aljex_sync.ingest_runs SET status = $2, error = $3, rows_read = $4, rows_rejected = $5, \
         finished_at = now() WHERE id = $1",
    )
    .bind(summary.run_id)
    .bind(summary.status.map(RunStatus::as_str).unwrap_or("failed"))
    .bind(&summary.error)
    .bind(count(summary.rows_read))
    .bind(count(summary.rows_rejected))
    .execute(pool)
    .await?;
    Ok(())
}

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Counts a refusal by the database caused by the data as a file failure.
fn data_failure(err: sqlx::Error) -> anyhow::Result<Result<RunStatus, FileFailure>> {
    match data_refusal(&err) {
        Some(message) => Ok(Err(FileFailure::Refused(format!(
            "database refused the file: {message}"
        )))),
        None => Err(err.into()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn load(
    ctx: &IngestContext,
    job: &IngestJob,
    table: &str,
    spec: &TableSpec,
    sha256: &str,
    encoding: &'static encoding_rs::Encoding,
    allow_direct: bool,
    summary: &mut IngestSummary,
) -> anyhow::Result<Result<RunStatus, FileFailure>> {
    if already_applied(&ctx.pool, ctx.mirror.schema(), sha256).await? {
        return Ok(Ok(RunStatus::Duplicate));
    }
    let path = job.path.clone();
    let key = spec.key.clone();
    let header = tokio::task::spawn_blocking(move || -> Result<Header, String> {
        let mut reader = open_csv(&path, encoding).map_err(|e| e.to_string())?;
        let raw = reader
            .headers()
            .map_err(|e| format!("cannot read the header row: {e}"))?
            .clone();
        Header::parse(&raw, &key)
    })
    .await?;
    let header = match header {
        Ok(header) => header,
        Err(reason) => return Ok(Err(FileFailure::Refused(reason))),
    };
    match ctx
        .mirror
        .ensure_columns(
            &ctx.pool,
            table,
            spec,
            header.columns.iter().map(String::as_str),
        )
        .await
    {
        Ok(()) => {}
        Err(MirrorError::Database(err)) => return data_failure(err),
        Err(err @ MirrorError::KeyMismatch { .. }) => {
            return Ok(Err(FileFailure::Refused(err.to_string())))
        }
    }

    let mut tx = ctx.pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!(
            "aljex-sync ingest {}.{}",
            ctx.mirror.schema(),
            table
        ))
        .execute(&mut *tx)
        .await?;
    if already_applied(&mut *tx, ctx.mirror.schema(), sha256).await? {
        return Ok(Ok(RunStatus::Duplicate));
    }
    let mirror_table = ctx.mirror.qualified(table);
    // First load of an empty table with no newer live delete: COPY straight
    // into it. A repeated key (or a racing live insert) fails the COPY, and the
    // file is loaded again through the staging table.
    let direct = allow_direct
        && {
            let sql = format!(
            "SELECT NOT EXISTS (SELECT 1 FROM {mirror_table}) AND NOT EXISTS (SELECT 1 FROM aljex_sync.tombstones \
             WHERE schema_name = $1 AND table_name = $2 AND received_at > $3)"
        );
            sqlx::query_scalar::<_, bool>(&sql)
                .bind(ctx.mirror.schema())
                .bind(table)
                .bind(job.export_time)
                .fetch_one(&mut *tx)
                .await?
        };
    let target = if direct {
        CopyTarget::Mirror {
            table: mirror_table.clone(),
            received_at: job.export_time.to_rfc3339(),
        }
    } else {
        CopyTarget::Stage
    };
    let stats = match copy_file(&mut tx, job, &header, encoding, target).await {
        Ok(Ok(stats)) => stats,
        Ok(Err(failure)) => return Ok(Err(failure)),
        Err(err) => match err.downcast::<sqlx::Error>() {
            Ok(db) if direct && is_unique_violation(&db) => {
                return Ok(Err(FileFailure::RepeatedKey))
            }
            Ok(db) => return data_failure(db),
            Err(other) => return Err(other),
        },
    };
    summary.rows_read = stats.rows_read;
    summary.rows_rejected = stats.rows_rejected;
    if stats.rows_rejected as f64 > spec.max_reject_ratio * stats.rows_read as f64 {
        return Ok(Err(FileFailure::Refused(format!(
            "{} of {} rows rejected, more than the limit of {}%: nothing applied (see the rejects)",
            stats.rows_rejected,
            stats.rows_read,
            spec.max_reject_ratio * 100.0
        ))));
    }

    if direct {
        if spec.mode == IngestMode::Snapshot && stats.keys_staged == 0 && !job.force {
            return Ok(Err(FileFailure::Refused(
                "snapshot refused: the file has no rows (use --force to apply it anyway)"
                    .to_string(),
            )));
        }
        summary.rows_inserted = stats.rows_valid;
        return commit_applied(tx, summary).await.map(Ok);
    }

    let key_list = quoted_list(&spec.key, "");
    let stage_keys = quoted_list(&spec.key, "s.");
    if spec.mode == IngestMode::Snapshot {
        // Statistics for the anti-join that finds rows the snapshot no longer has.
        sqlx::query("ANALYZE pg_temp.aljex_stage")
            .execute(&mut *tx)
            .await?;
        let file_keys: i64 = if stats.maybe_repeated {
            sqlx::query_scalar(&format!(
                "SELECT count(*) FROM (SELECT DISTINCT {key_list} FROM pg_temp.aljex_stage) k"
            ))
            .fetch_one(&mut *tx)
            .await?
        } else {
            count(stats.keys_staged)
        };
        let current: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {mirror_table} WHERE \"_deleted_at\" IS NULL"
        ))
        .fetch_one(&mut *tx)
        .await?;
        let too_small = (file_keys as f64) < spec.min_snapshot_ratio * current as f64;
        if !job.force && (file_keys == 0 || too_small) {
            return Ok(Err(FileFailure::Refused(format!(
                "snapshot refused: the file has {file_keys} rows and the table {current}; \
                 a snapshot needs at least {} and at least {}% of the table's rows (use --force to apply it anyway)",
                1,
                spec.min_snapshot_ratio * 100.0
            ))));
        }
    }

    let empty_target: bool =
        sqlx::query_scalar(&format!("SELECT NOT EXISTS (SELECT 1 FROM {mirror_table})"))
            .fetch_one(&mut *tx)
            .await?;
    let merged = if empty_target && !stats.maybe_repeated {
        // First load: a plain insert (a live insert racing it fails the
        // transaction, and the file is retried as an upsert).
        let sql = insert_sql(ctx.mirror.as_ref(), table, spec, &header.columns);
        sqlx::query(&sql)
            .bind(job.export_time)
            .bind(ctx.mirror.schema())
            .bind(table)
            .execute(&mut *tx)
            .await
            .map(|done| (0, count(done.rows_affected()), 0))
    } else {
        let sql = merge_sql(
            ctx.mirror.as_ref(),
            table,
            spec,
            &header.columns,
            stats.maybe_repeated,
        );
        sqlx::query_as::<_, (i64, i64, i64)>(&sql)
            .bind(job.export_time)
            .bind(ctx.mirror.schema())
            .bind(table)
            .fetch_one(&mut *tx)
            .await
    };
    let merged = match merged {
        Ok(merged) => merged,
        Err(err) => return data_failure(err),
    };
    let (distinct, inserted, updated) = merged;
    let distinct = if stats.maybe_repeated {
        distinct
    } else {
        count(stats.rows_valid)
    };
    summary.rows_inserted = u64::try_from(inserted).unwrap_or(0);
    summary.rows_updated = u64::try_from(updated).unwrap_or(0);
    summary.rows_unchanged = u64::try_from(distinct - inserted - updated).unwrap_or(0);

    if spec.mode == IngestMode::Snapshot {
        let absent = format!(
            "m.\"_received_at\" <= $1 AND NOT EXISTS (SELECT 1 FROM pg_temp.aljex_stage s WHERE ({stage_keys}) = ({}))",
            quoted_list(&spec.key, "m.")
        );
        let sql = match spec.delete {
            DeleteMode::Hard => format!("DELETE FROM {mirror_table} m WHERE {absent}"),
            DeleteMode::Soft => format!(
                "UPDATE {mirror_table} m SET \"_deleted_at\" = $1, \"_applied_at\" = now(), \"_source\" = 'morning' \
                 WHERE m.\"_deleted_at\" IS NULL AND {absent}"
            ),
        };
        let deleted = sqlx::query(&sql)
            .bind(job.export_time)
            .execute(&mut *tx)
            .await?;
        summary.rows_deleted = deleted.rows_affected();
    }

    commit_applied(tx, summary).await.map(Ok)
}

/// Records the run as applied and commits it with the data.
async fn commit_applied(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    summary: &mut IngestSummary,
) -> anyhow::Result<RunStatus> {
    summary.status = Some(RunStatus::Applied);
    sqlx::query(
        "UPDATE aljex_sync.ingest_runs SET status = 'applied', rows_read = $2, rows_inserted = $3, \
         rows_updated = $4, rows_unchanged = $5, rows_deleted = $6, rows_rejected = $7, finished_at = now() \
         WHERE id = $1",
    )
    .bind(summary.run_id)
    .bind(count(summary.rows_read))
    .bind(count(summary.rows_inserted))
    .bind(count(summary.rows_updated))
    .bind(count(summary.rows_unchanged))
    .bind(count(summary.rows_deleted))
    .bind(count(summary.rows_rejected))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(RunStatus::Applied)
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

async fn already_applied<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    schema: &str,
    sha256: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM aljex_sync.ingest_runs WHERE schema_name = $1 AND sha256 = $2 AND status = 'applied')",
    )
    .bind(schema)
    .bind(sha256)
    .fetch_one(executor)
    .await
}

/// `"a", "b"` with an optional prefix on each.
fn quoted_list(columns: &[String], prefix: &str) -> String {
    columns
        .iter()
        .map(|c| format!("{prefix}{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What staging saw.
#[derive(Debug, Default, Clone, Copy)]
struct StageStats {
    /// Data rows in the file.
    rows_read: u64,
    /// Rows refused.
    rows_rejected: u64,
    /// Staged rows: valid ones, plus the keys of refused ones.
    keys_staged: u64,
    /// Valid rows staged.
    rows_valid: u64,
    /// Whether some key may appear twice (then the merge deduplicates).
    maybe_repeated: bool,
}

/// Where COPY sends the rows.
enum CopyTarget {
    /// `pg_temp.aljex_stage`, created here; merged afterwards.
    Stage,
    /// Straight into the (empty) mirror table, with these internal values.
    Mirror {
        /// Qualified table name.
        table: String,
        /// `_received_at` of every row (the export time).
        received_at: String,
    },
}

/// Streams the file into `target` with COPY.
///
/// Into the staging table, valid rows are staged whole and a rejected row
/// whose key can be read is staged as its key only (`_rejected`), so a
/// snapshot does not delete it. Into the mirror table, only valid rows go.
async fn copy_file(
    tx: &mut PgConnection,
    job: &IngestJob,
    header: &Header,
    encoding: &'static encoding_rs::Encoding,
    target: CopyTarget,
) -> anyhow::Result<Result<StageStats, FileFailure>> {
    let columns = quoted_list(&header.columns, "");
    let statement = match &target {
        CopyTarget::Stage => {
            let definitions: String = header
                .columns
                .iter()
                .map(|c| format!(", {} text", quote_ident(c)))
                .collect();
            sqlx::query(&format!(
                "CREATE TEMP TABLE aljex_stage (\"_line\" bigint NOT NULL, \"_rejected\" boolean NOT NULL{definitions}) ON COMMIT DROP"
            ))
            .execute(&mut *tx)
            .await?;
            format!(
                "COPY pg_temp.aljex_stage (\"_line\", \"_rejected\", {columns}) FROM STDIN \
                 WITH (FORMAT csv, FORCE_NOT_NULL ({columns}))"
            )
        }
        CopyTarget::Mirror { table, .. } => format!(
            "COPY {table} ({columns}, \"_received_at\", \"_source\") FROM STDIN \
             WITH (FORMAT csv, FORCE_NOT_NULL ({columns}))"
        ),
    };
    let direct = match target {
        CopyTarget::Stage => None,
        CopyTarget::Mirror { received_at, .. } => Some(received_at),
    };

    let (sender, mut receiver) = mpsc::channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let producer = {
        let job = job.clone();
        let header = header.clone();
        tokio::task::spawn_blocking(move || {
            produce(&job, &header, encoding, direct.as_deref(), &sender)
        })
    };
    let mut copy = tx.copy_in_raw(&statement).await?;
    while let Some(chunk) = receiver.recv().await {
        if let Err(err) = copy.send(chunk).await {
            drop(receiver);
            let _ = producer.await;
            return Err(err.into());
        }
    }
    let produced = producer.await?;
    match produced {
        Ok(stats) => {
            copy.finish().await?;
            Ok(Ok(stats))
        }
        Err(reason) => {
            copy.abort("the file could not be read").await?;
            Ok(Err(FileFailure::Refused(reason)))
        }
    }
}

/// Parses the file and sends COPY chunks; writes rejected rows to `job.rejects_path`.
fn produce(
    job: &IngestJob,
    header: &Header,
    encoding: &'static encoding_rs::Encoding,
    direct: Option<&str>,
    sender: &mpsc::Sender<Vec<u8>>,
) -> Result<StageStats, String> {
    let mut reader = open_csv(&job.path, encoding).map_err(|e| e.to_string())?;
    let _ = reader.headers().map_err(|e| e.to_string())?;
    let new_writer = || {
        csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(Vec::with_capacity(COPY_CHUNK_BYTES + 64 * 1024))
    };
    let mut out = new_writer();
    let mut rejects: Option<csv::Writer<std::fs::File>> = None;
    let mut stats = StageStats::default();
    let mut record = csv::StringRecord::new();
    let key_only: Vec<bool> = (0..header.columns.len())
        .map(|i| header.key_positions.contains(&i))
        .collect();
    let mut keys_seen = KeyFilter::default();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(err) => return Err(format!("CSV error: {err}")),
        }
        stats.rows_read += 1;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let line_text = line.to_string();
        match check_row(header, &record) {
            Ok(()) => {
                match direct {
                    Some(received_at) => {
                        let fields = record.iter().chain([received_at, "morning"]);
                        out.write_record(fields).map_err(|e| e.to_string())?;
                    }
                    None => {
                        let fields = [line_text.as_str(), "f"].into_iter().chain(record.iter());
                        out.write_record(fields).map_err(|e| e.to_string())?;
                    }
                }
                stats.rows_valid += 1;
                stats.keys_staged += 1;
                let key = header.key_positions.iter().filter_map(|&p| record.get(p));
                stats.maybe_repeated |= keys_seen.insert(key);
            }
            Err(reason) => {
                stats.rows_rejected += 1;
                let writer = match &mut rejects {
                    Some(writer) => writer,
                    None => {
                        let mut writer =
                            csv::Writer::from_path(&job.rejects_path).map_err(|e| {
                                format!("cannot write {}: {e}", job.rejects_path.display())
                            })?;
                        writer
                            .write_record(["line", "reason", "record"])
                            .map_err(|e| e.to_string())?;
                        rejects.insert(writer)
                    }
                };
                let mut raw = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(Vec::new());
                raw.write_record(record.iter()).map_err(|e| e.to_string())?;
                let raw = raw.into_inner().map_err(|e| e.to_string())?;
                let raw = String::from_utf8_lossy(&raw)
                    .trim_end()
                    .replace('\0', "\u{fffd}");
                writer
                    .write_record([line_text.as_str(), reason.as_str(), raw.as_str()])
                    .map_err(|e| e.to_string())?;
                // Keep the key so a snapshot does not delete the row.
                let keys: Vec<&str> = header
                    .key_positions
                    .iter()
                    .filter_map(|&p| record.get(p))
                    .collect();
                if direct.is_none()
                    && keys.len() == header.key_positions.len()
                    && keys
                        .iter()
                        .all(|k| !k.trim().is_empty() && !k.contains('\0'))
                {
                    stats.keys_staged += 1;
                    stats.maybe_repeated |= keys_seen.insert(keys.iter().copied());
                    let mut keys = keys.into_iter();
                    let fields: Vec<&str> = [line_text.as_str(), "t"]
                        .into_iter()
                        .chain(key_only.iter().map(|&is_key| {
                            if is_key {
                                keys.next().unwrap_or("")
                            } else {
                                ""
                            }
                        }))
                        .collect();
                    out.write_record(fields).map_err(|e| e.to_string())?;
                }
            }
        }
        if out.get_ref().len() >= COPY_CHUNK_BYTES {
            let chunk = std::mem::replace(&mut out, new_writer())
                .into_inner()
                .map_err(|e| e.to_string())?;
            if sender.blocking_send(chunk).is_err() {
                return Err("the database stopped reading".to_string());
            }
            if let Some(progress) = &job.progress {
                progress.set_position(reader.position().byte());
            }
        }
    }
    let rest = out.into_inner().map_err(|e| e.to_string())?;
    if !rest.is_empty() && sender.blocking_send(rest).is_err() {
        return Err("the database stopped reading".to_string());
    }
    if let Some(mut writer) = rejects {
        writer.flush().map_err(|e| e.to_string())?;
    }
    if let Some(progress) = &job.progress {
        progress.set_position(reader.position().byte());
    }
    Ok(stats)
}

/// The merge of the staged rows into the mirror table; with `deduplicate`,
/// only the last occurrence of each key. `$1` export time, `$2` schema, `$3`
/// table. Returns (distinct rows, or 0 without `deduplicate`; inserted; updated).
fn merge_sql(
    mirror: &Mirror,
    table: &str,
    spec: &TableSpec,
    columns: &[String],
    deduplicate: bool,
) -> String {
    let all = quoted_list(columns, "");
    let keys = quoted_list(&spec.key, "");
    let src_keys = quoted_list(&spec.key, "src.");
    let others: Vec<&String> = columns.iter().filter(|c| !spec.key.contains(c)).collect();
    let updates: String = others
        .iter()
        .map(|c| {
            let c = quote_ident(c);
            format!("{c} = EXCLUDED.{c}, ")
        })
        .collect();
    let changed = if others.is_empty() {
        "m.\"_deleted_at\" IS NOT NULL".to_string()
    } else {
        let old: Vec<String> = others
            .iter()
            .map(|c| format!("m.{}", quote_ident(c)))
            .collect();
        let new: Vec<String> = others
            .iter()
            .map(|c| format!("EXCLUDED.{}", quote_ident(c)))
            .collect();
        format!(
            "(m.\"_deleted_at\" IS NOT NULL OR ROW({}) IS DISTINCT FROM ROW({}))",
            old.join(", "),
            new.join(", ")
        )
    };
    let (source, distinct) = if deduplicate {
        (
            format!(
                "WITH src AS MATERIALIZED (SELECT DISTINCT ON ({keys}) {all} FROM pg_temp.aljex_stage \
                 WHERE NOT \"_rejected\" ORDER BY {keys}, \"_line\" DESC), "
            ),
            "(SELECT count(*) FROM src)",
        )
    } else {
        (
            format!(
                "WITH src AS NOT MATERIALIZED (SELECT {all} FROM pg_temp.aljex_stage WHERE NOT \"_rejected\"), "
            ),
            "0::bigint",
        )
    };
    format!(
        "{source}\
         merged AS (\
             INSERT INTO {target} AS m ({all}, \"_received_at\", \"_applied_at\", \"_source\", \"_deleted_at\") \
             SELECT {all}, $1, now(), 'morning', NULL FROM src \
             WHERE NOT EXISTS (SELECT 1 FROM aljex_sync.tombstones t WHERE t.schema_name = $2 \
                 AND t.table_name = $3 AND t.key = ARRAY[{src_keys}]::text[] AND t.received_at > $1) \
             ON CONFLICT ({keys}) DO UPDATE SET {updates}\"_received_at\" = EXCLUDED.\"_received_at\", \
                 \"_applied_at\" = EXCLUDED.\"_applied_at\", \"_source\" = 'morning', \"_deleted_at\" = NULL \
             WHERE m.\"_received_at\" <= EXCLUDED.\"_received_at\" AND {changed} \
             RETURNING (xmax = 0) AS inserted) \
         SELECT {distinct}, count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged",
        target = mirror.qualified(table),
    )
}

/// The first load of an empty mirror table: every staged row inserted, except
/// keys deleted live after the export time. `$1` export time, `$2` schema, `$3` table.
fn insert_sql(mirror: &Mirror, table: &str, spec: &TableSpec, columns: &[String]) -> String {
    let all = quoted_list(columns, "");
    let src_keys = quoted_list(&spec.key, "src.");
    format!(
        "INSERT INTO {target} ({all}, \"_received_at\", \"_applied_at\", \"_source\", \"_deleted_at\") \
         SELECT {all}, $1, now(), 'morning', NULL FROM pg_temp.aljex_stage src \
         WHERE NOT src.\"_rejected\" AND NOT EXISTS (SELECT 1 FROM aljex_sync.tombstones t \
             WHERE t.schema_name = $2 AND t.table_name = $3 AND t.key = ARRAY[{src_keys}]::text[] \
             AND t.received_at > $1)",
        target = mirror.qualified(table),
    )
}

/// Copies the rejects file into `aljex_sync.ingest_rejects`, in batches.
async fn store_rejects(
    pool: &PgPool,
    run_id: i64,
    file_name: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let Ok(mut reader) = csv::Reader::from_path(path) else {
        return Ok(());
    };
    let mut lines: Vec<i64> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    let mut records: Vec<String> = Vec::new();
    let mut rows = reader.records();
    loop {
        let next = rows.next();
        if let Some(row) = &next {
            let row = row
                .as_ref()
                .map_err(|e| anyhow::anyhow!("rejects file: {e}"))?;
            lines.push(row.get(0).and_then(|l| l.parse().ok()).unwrap_or(0));
            reasons.push(row.get(1).unwrap_or("").to_string());
            records.push(row.get(2).unwrap_or("").to_string());
        }
        if lines.len() >= 1000 || (next.is_none() && !lines.is_empty()) {
            sqlx::query(
                "INSERT INTO aljex_sync.ingest_rejects (run_id, file_name, line, reason, record) \
                 SELECT $1, $2, * FROM UNNEST($3::bigint[], $4::text[], $5::text[])",
            )
            .bind(run_id)
            .bind(file_name)
            .bind(&lines)
            .bind(&reasons)
            .bind(&records)
            .execute(pool)
            .await?;
            lines.clear();
            reasons.clear();
            records.clear();
        }
        if next.is_none() {
            return Ok(());
        }
    }
}
