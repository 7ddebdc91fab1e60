//! Watching the inbox: a file is ingested once its size and mtime have been
//! stable for the settle time; it is claimed by renaming it into
//! `processing/`, then moved to `archive/YYYY-MM-DD/` or `failed/`.
//!
//! `notify` events only hint that something changed; the directory is
//! rescanned every second regardless, so nothing depends on them.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use chrono::{DateTime, Utc};
use notify::Watcher;
use tokio::sync::{mpsc, watch};

use super::{
    load::{ingest, IngestContext, IngestJob, IngestSummary, RunStatus},
    names::is_temporary,
};

/// Folder names inside the inbox.
pub const PROCESSING: &str = "processing";
/// Where applied (and duplicate) files go, by day.
pub const ARCHIVE: &str = "archive";
/// Where refused files go, with an `.error.txt`.
pub const FAILED: &str = "failed";

/// How long to wait before retrying files left in `processing/` after a database failure.
const RETRY_AFTER: Duration = Duration::from_secs(15);

/// The inbox and how to watch it.
#[derive(Debug, Clone)]
pub struct Inbox {
    /// The folder Aljex uploads into.
    pub dir: PathBuf,
    /// How long size and mtime must stay unchanged.
    pub settle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    len: u64,
    modified: SystemTime,
    stable_since: Instant,
}

impl Inbox {
    /// Creates the work folders.
    pub fn prepare(&self) -> std::io::Result<()> {
        for sub in [PROCESSING, ARCHIVE, FAILED] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        Ok(())
    }

    /// Watches until `stop` turns true.
    pub async fn run(self, ctx: IngestContext, mut stop: watch::Receiver<bool>) {
        if let Err(err) = self.prepare() {
            tracing::error!(inbox = %self.dir.display(), error = %err, "cannot prepare the inbox; morning sync is off");
            return;
        }
        let (hint_tx, mut hints) = mpsc::channel::<()>(1);
        let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
            let _ = hint_tx.try_send(());
        })
        .and_then(|mut watcher| {
            watcher.watch(&self.dir, notify::RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        if let Err(err) = &watcher {
            tracing::warn!(error = %err, "file notifications unavailable; relying on rescans");
        }
        tracing::info!(inbox = %self.dir.display(), settle_secs = self.settle.as_secs_f64(), "watching the inbox");
        let mut seen: HashMap<PathBuf, Seen> = HashMap::new();
        let mut retry_processing = Some(Instant::now());
        loop {
            if retry_processing.is_some_and(|at| Instant::now() >= at) {
                retry_processing = match self.recover(&ctx, &stop).await {
                    Ok(()) => None,
                    Err(()) => Some(Instant::now() + RETRY_AFTER),
                };
            }
            for path in self.stable_files(&mut seen) {
                if *stop.borrow() {
                    return;
                }
                seen.remove(&path);
                if let Some((claimed, name, export_time)) = self.claim(&path) {
                    if self
                        .process(&ctx, &claimed, &name, export_time)
                        .await
                        .is_err()
                    {
                        retry_processing.get_or_insert(Instant::now() + RETRY_AFTER);
                    }
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = hints.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Files (not temporary, not hidden) whose size and mtime held for the settle time.
    fn stable_files(&self, seen: &mut HashMap<PathBuf, Seen>) -> Vec<PathBuf> {
        let now = Instant::now();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut present = Vec::new();
        let mut ready = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || is_temporary(&name) {
                continue;
            }
            let path = entry.path();
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let current = Seen {
                len: meta.len(),
                modified,
                stable_since: now,
            };
            let entry = seen.entry(path.clone()).or_insert(current);
            if entry.len != current.len || entry.modified != current.modified {
                *entry = current;
            } else if now.duration_since(entry.stable_since) >= self.settle {
                ready.push(path.clone());
            }
            present.push(path);
        }
        seen.retain(|path, _| present.contains(path));
        ready.sort();
        ready
    }

    /// Renames the file into `processing/`; `None` when another process took it.
    fn claim(&self, path: &Path) -> Option<(PathBuf, String, DateTime<Utc>)> {
        let name = path.file_name()?.to_string_lossy().into_owned();
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        let stamp = Utc::now().format("%Y%m%dT%H%M%S%.6f");
        let claimed = self.dir.join(PROCESSING).join(format!("{stamp}-{name}"));
        match std::fs::rename(path, &claimed) {
            Ok(()) => Some((claimed, name, DateTime::<Utc>::from(modified))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => {
                tracing::error!(file = %name, error = %err, "cannot claim the file");
                None
            }
        }
    }

    /// Ingests files left in `processing/` (after a crash or a database outage).
    async fn recover(&self, ctx: &IngestContext, stop: &watch::Receiver<bool>) -> Result<(), ()> {
        let Ok(entries) = std::fs::read_dir(self.dir.join(PROCESSING)) else {
            return Ok(());
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && !p.to_string_lossy().ends_with(".rejects.csv"))
            .collect();
        files.sort();
        for claimed in files {
            if *stop.borrow() {
                return Ok(());
            }
            let stored = claimed
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = stored
                .split_once('-')
                .map(|(_, n)| n.to_string())
                .unwrap_or(stored);
            let export_time = std::fs::metadata(&claimed)
                .and_then(|m| m.modified())
                .map(DateTime::<Utc>::from)
                .unwrap_or_else(|_| Utc::now());
            tracing::info!(file = %name, "resuming a file left in processing/");
            self.process(ctx, &claimed, &name, export_time).await?;
        }
        Ok(())
    }

    /// Ingests a claimed file and files it away. `Err` when the database is
    /// unavailable: the file stays in `processing/` for a retry.
    async fn process(
        &self,
        ctx: &IngestContext,
        claimed: &Path,
        name: &str,
        export_time: DateTime<Utc>,
    ) -> Result<(), ()> {
        let rejects_path = PathBuf::from(format!("{}.rejects.csv", claimed.display()));
        let job = IngestJob {
            path: claimed.to_path_buf(),
            file_name: name.to_string(),
            table: None,
            force: false,
            export_time,
            rejects_path: rejects_path.clone(),
            progress: None,
        };
        let summary = match ingest(ctx, &job).await {
            Ok(summary) => summary,
            Err(err) => {
                tracing::error!(file = %name, error = %format!("{err:#}"), "ingest interrupted; the file stays in processing/ and is retried");
                return Err(());
            }
        };
        log_summary(&summary);
        let folder = match summary.status {
            Some(RunStatus::Applied | RunStatus::Duplicate) => self
                .dir
                .join(ARCHIVE)
                .join(Utc::now().format("%Y-%m-%d").to_string()),
            _ => self.dir.join(FAILED),
        };
        let filed = match file_away(claimed, &folder, name) {
            Ok(filed) => filed,
            Err(err) => {
                tracing::error!(file = %name, error = %err, "cannot move the file out of processing/");
                return Ok(());
            }
        };
        if rejects_path.exists() {
            let _ = std::fs::rename(
                &rejects_path,
                PathBuf::from(format!("{}.rejects.csv", filed.display())),
            );
        }
        if let Some(error) = &summary.error {
            let note = PathBuf::from(format!("{}.error.txt", filed.display()));
            if let Err(err) = std::fs::write(&note, format!("{error}\n")) {
                tracing::error!(file = %name, error = %err, "cannot write the .error.txt");
            }
        }
        Ok(())
    }
}

/// Moves `from` into `folder` as `name` (or `name.1`, `name.2`... if taken).
fn file_away(from: &Path, folder: &Path, name: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(folder)?;
    let mut target = folder.join(name);
    let mut n = 1;
    while target.exists() {
        target = folder.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::rename(from, &target)?;
    Ok(target)
}

/// One log line per file.
pub fn log_summary(summary: &IngestSummary) {
    let status = summary.status.map(RunStatus::as_str).unwrap_or("failed");
    tracing::info!(
        file = %summary.file_name,
        table = summary.table.as_deref().unwrap_or("-"),
        status,
        rows_read = summary.rows_read,
        inserted = summary.rows_inserted,
        updated = summary.rows_updated,
        unchanged = summary.rows_unchanged,
        deleted = summary.rows_deleted,
        rejected = summary.rows_rejected,
        seconds = summary.seconds,
        error = summary.error.as_deref().unwrap_or(""),
        "morning file"
    );
}
