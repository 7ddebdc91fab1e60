//! `aljex-sink ingest FILE...`: the morning ingestion, one-shot.

use std::{io::IsTerminal, path::PathBuf, sync::Arc};

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};

use super::load::{ingest, IngestContext, IngestJob, IngestSummary, RunStatus};
use crate::{db::DbArgs, mirror::Mirror};

/// Flags of `aljex-sink ingest`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Database, schema and tables config.
    #[command(flatten)]
    pub db: DbArgs,
    /// Load into this table instead of the one the file name maps to.
    #[arg(long)]
    pub table: Option<String>,
    /// Apply snapshots even when empty or much smaller than the table.
    #[arg(long)]
    pub force: bool,
    /// CSV files with a header row.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Ingests each file, prints a summary table; returns how many failed.
pub async fn run(args: IngestArgs) -> anyhow::Result<usize> {
    let table = match &args.table {
        Some(name) => Some(
            aljex_proto::names::normalize_name(name)
                .map_err(|e| anyhow::anyhow!("--table: {e}"))?,
        ),
        None => None,
    };
    let (pool, schema, tables) = args.db.connect().await?;
    let mirror = Arc::new(Mirror::new(schema));
    mirror.create_schema(&pool).await?;
    let ctx = IngestContext {
        pool,
        mirror,
        tables: Arc::new(tables),
    };
    let mut summaries = Vec::new();
    for path in &args.files {
        let meta =
            std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let progress = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(meta.len());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(path.display().to_string());
            bar
        });
        let job = IngestJob {
            path: path.clone(),
            file_name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            table: table.clone(),
            force: args.force,
            export_time: meta
                .modified()
                .map(DateTime::<Utc>::from)
                .unwrap_or_else(|_| Utc::now()),
            rejects_path: PathBuf::from(format!("{}.rejects.csv", path.display())),
            progress: progress.clone(),
        };
        let summary = ingest(&ctx, &job).await?;
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
        summaries.push(summary);
    }
    print_table(&summaries);
    Ok(summaries
        .iter()
        .filter(|s| s.status != Some(RunStatus::Applied) && s.status != Some(RunStatus::Duplicate))
        .count())
}

fn print_table(summaries: &[IngestSummary]) {
    println!(
        "{:<32} {:<18} {:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "file",
        "table",
        "status",
        "read",
        "inserted",
        "updated",
        "unchanged",
        "deleted",
        "rejected",
        "seconds"
    );
    for s in summaries {
        println!(
            "{:<32} {:<18} {:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8.2}",
            s.file_name,
            s.table.as_deref().unwrap_or("-"),
            s.status.map(RunStatus::as_str).unwrap_or("failed"),
            s.rows_read,
            s.rows_inserted,
            s.rows_updated,
            s.rows_unchanged,
            s.rows_deleted,
            s.rows_rejected,
            s.seconds
        );
        if let Some(error) = &s.error {
            println!("  {}: {error}", s.file_name);
        }
    }
}
