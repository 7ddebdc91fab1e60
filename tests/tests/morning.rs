//! Morning sync against real PostgreSQL: files uploaded with the real OpenSSH
//! `sftp` client to a real `sshd`, picked up by `aljex-sink serve --inbox`, and
//! the same code path one-shot through `aljex-sink ingest`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use aljex_tests::{
    database_url, fixture, fixtures, pool, sftp::SftpServer, sink_command, unique_schema,
    SinkProcess,
};
use sqlx::{PgPool, Row};

/// A scratch folder.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("aljex-morning-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `aljex-sink ingest` into `schema`; returns (success, stdout+stderr).
fn ingest(schema: &str, files: &[&Path], extra: &[&str]) -> (bool, String) {
    let output = sink_command(&database_url())
        .args(["ingest", "--schema", schema])
        .args(extra)
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn scalar_i64(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn text(db: &PgPool, sql: &str) -> Option<String> {
    sqlx::query_scalar::<_, Option<String>>(sql)
        .fetch_optional(db)
        .await
        .unwrap()
        .flatten()
}

/// The last run of `file` in `schema`: (status, rows_read, inserted, updated, deleted, rejected, error).
async fn last_run(
    db: &PgPool,
    schema: &str,
    file: &str,
) -> Option<(String, i64, i64, i64, i64, i64, Option<String>)> {
    sqlx::query_as(
        "SELECT status, rows_read, rows_inserted, rows_updated, rows_deleted, rows_rejected, error \
         FROM aljex_sync.ingest_runs WHERE schema_name = $1 AND file_name = $2 ORDER BY id DESC LIMIT 1",
    )
    .bind(schema)
    .bind(file)
    .fetch_optional(db)
    .await
    .unwrap()
}

/// Waits until the last run of `file` has a final status.
async fn wait_for_run(
    db: &PgPool,
    schema: &str,
    file: &str,
    timeout: Duration,
) -> (String, i64, i64, i64, i64, i64, Option<String>) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(run) = last_run(db, schema, file).await {
            if run.0 != "running" && run.0 != "interrupted" {
                return run;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no finished run of {file} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn customers_csv(rows: &[(&str, &str)]) -> String {
    let mut csv = String::from("id,name,zip\n");
    for (id, name) in rows {
        csv.push_str(&format!("{id},{name},07072\n"));
    }
    csv
}

#[tokio::test]
async fn sftp_uploads_of_the_fixtures_land_in_postgres() {
    let sftp = SftpServer::start().unwrap();
    let url = database_url();
    let db = pool(&url).await;
    let sink = SinkProcess::start(
        &url,
        &["--inbox", &sftp.inbox.to_string_lossy(), "--settle", "1"],
    )
    .await
    .unwrap();
    let s = &sink.schema;
    let morning = fixtures().join("morning");
    sftp.batch(&format!(
        "put {} customers.csv\nput {} Loads_20261204.csv\n",
        morning.join("customers.csv").display(),
        morning.join("loads.csv").display()
    ))
    .unwrap();
    let customers = wait_for_run(&db, s, "customers.csv", Duration::from_secs(30)).await;
    assert_eq!(
        (customers.0.as_str(), customers.1, customers.2),
        ("applied", 2, 2),
        "{customers:?}"
    );
    let loads = wait_for_run(&db, s, "Loads_20261204.csv", Duration::from_secs(30)).await;
    assert_eq!(
        (loads.0.as_str(), loads.1, loads.2),
        ("applied", 2, 2),
        "{loads:?}"
    );

    assert_eq!(
        text(
            &db,
            &format!("SELECT name FROM {s}.customers WHERE id = '102687'")
        )
        .await
        .as_deref(),
        Some("ACME PAPER CO, INC.")
    );
    assert_eq!(
        text(
            &db,
            &format!("SELECT address1 FROM {s}.customers WHERE id = '102687'")
        )
        .await
        .as_deref(),
        Some("1 \"MILL\" RD")
    );
    assert_eq!(
        text(
            &db,
            &format!("SELECT zip FROM {s}.customers WHERE id = '105241'")
        )
        .await
        .as_deref(),
        Some("07072")
    );
    assert_eq!(
        text(
            &db,
            &format!("SELECT _source FROM {s}.loads WHERE id = '50482'")
        )
        .await
        .as_deref(),
        Some("morning")
    );
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(sftp
        .inbox
        .join("archive")
        .join(&day)
        .join("customers.csv")
        .exists());
    assert!(!sftp.inbox.join("customers.csv").exists());
}

#[tokio::test]
async fn a_slow_upload_in_pieces_and_a_temporary_name_wait_until_complete() {
    let sftp = SftpServer::start().unwrap();
    let url = database_url();
    let db = pool(&url).await;
    // The settle time must outlast the gap between the two sftp sessions below
    // (an ssh handshake can take seconds when the whole suite runs on two cores).
    let sink = SinkProcess::start(
        &url,
        &["--inbox", &sftp.inbox.to_string_lossy(), "--settle", "10"],
    )
    .await
    .unwrap();
    let s = &sink.schema;
    let dir = scratch();
    let rows: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("{i}"), format!("NAME {i}")))
        .collect();
    let refs: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let full = customers_csv(&refs);
    std::fs::write(dir.join("full.csv"), &full).unwrap();
    // The first piece ends on a row boundary, so it would look like a complete (smaller) file.
    let cut = full[..full.len() / 3].rfind('\n').unwrap() + 1;
    std::fs::write(dir.join("piece.csv"), &full[..cut]).unwrap();

    sftp.batch(&format!(
        "put {} customers.csv\n",
        dir.join("piece.csv").display()
    ))
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        last_run(&db, s, "customers.csv").await.is_none(),
        "ingested before the upload was complete"
    );
    sftp.batch(&format!(
        "reput {} customers.csv\n",
        dir.join("full.csv").display()
    ))
    .unwrap();
    let run = wait_for_run(&db, s, "customers.csv", Duration::from_secs(45)).await;
    assert_eq!((run.0.as_str(), run.1), ("applied", 2000), "{run:?}");

    // Uploaded under a temporary name, then renamed.
    let mut more = String::from("id,name\n");
    for i in 0..10 {
        more.push_str(&format!("c{i},CARRIER {i}\n"));
    }
    std::fs::write(dir.join("carriers.csv"), more).unwrap();
    sftp.batch(&format!(
        "put {} carriers.csv.filepart\n",
        dir.join("carriers.csv").display()
    ))
    .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(last_run(&db, s, "carriers.csv.filepart").await.is_none());
    assert!(last_run(&db, s, "carriers.csv").await.is_none());
    assert!(
        sftp.inbox.join("carriers.csv.filepart").exists(),
        "a temporary file is left alone"
    );
    sftp.batch("rename carriers.csv.filepart carriers.csv\n")
        .unwrap();
    let run = wait_for_run(&db, s, "carriers.csv", Duration::from_secs(45)).await;
    assert_eq!((run.0.as_str(), run.1), ("applied", 10), "{run:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn an_unmatched_file_goes_to_failed_with_a_reason() {
    let dir = scratch();
    let url = database_url();
    let db = pool(&url).await;
    let sink = SinkProcess::start(
        &url,
        &["--inbox", &dir.to_string_lossy(), "--settle", "0.5"],
    )
    .await
    .unwrap();
    std::fs::write(dir.join("Mystery Report.csv"), "id,x\n1,2\n").unwrap();
    let run = wait_for_run(
        &db,
        &sink.schema,
        "Mystery Report.csv",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(run.0, "failed");
    assert!(
        run.6.as_deref().unwrap_or("").contains("no table"),
        "{run:?}"
    );
    let note = std::fs::read_to_string(dir.join("failed/Mystery Report.csv.error.txt")).unwrap();
    assert!(note.contains("mystery_report"), "{note}");
    assert!(dir.join("failed/Mystery Report.csv").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_467_column_loads_file() {
    let schema = unique_schema("wide");
    let db = pool(&database_url()).await;
    let names = String::from_utf8(fixture("fields/loads.txt")).unwrap();
    let names: Vec<&str> = names.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(names.len(), 467);
    let mut csv = names.join(",");
    csv.push('\n');
    for row in 0..50 {
        let values: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                if *name == "id" {
                    format!("{}", 90_000 + row)
                } else if i % 7 == 0 {
                    format!("v{row}-{i}")
                } else {
                    String::new()
                }
            })
            .collect();
        csv.push_str(&values.join(","));
        csv.push('\n');
    }
    let dir = scratch();
    let file = dir.join("loads.csv");
    std::fs::write(&file, csv).unwrap();
    let (ok, out) = ingest(&schema, &[&file], &[]);
    assert!(ok, "{out}");
    let columns = scalar_i64(&db, &format!("SELECT count(*) FROM information_schema.columns WHERE table_schema = '{schema}' AND table_name = 'loads'")).await;
    assert_eq!(columns, 467 + 4);
    assert_eq!(
        scalar_i64(&db, &format!("SELECT count(*) FROM {schema}.loads")).await,
        50
    );
    let seventh = names[7].to_ascii_lowercase();
    assert_eq!(
        text(
            &db,
            &format!("SELECT \"{seventh}\" FROM {schema}.loads WHERE id = '90003'")
        )
        .await
        .as_deref(),
        Some("v3-7")
    );
    assert_eq!(
        text(
            &db,
            &format!("SELECT tord FROM {schema}.loads WHERE id = '90003'")
        )
        .await
        .as_deref(),
        Some(""),
        "mixed-case Tord folded; empty stays empty"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn snapshots_remove_missing_rows_and_refuse_empty_or_small_files() {
    let schema = unique_schema("snap");
    let db = pool(&database_url()).await;
    let dir = scratch();
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let full = write(
        "customers.csv",
        &customers_csv(&[("1", "A"), ("2", "B"), ("3", "C"), ("4", "D")]),
    );
    let (ok, out) = ingest(&schema, &[&full], &[]);
    assert!(ok, "{out}");
    let count = |db: PgPool, schema: String| async move {
        scalar_i64(&db, &format!("SELECT count(*) FROM {schema}.customers")).await
    };

    let minus_one = write(
        "Customers-2026-12-05.csv",
        &customers_csv(&[("1", "A"), ("2", "B2"), ("3", "C")]),
    );
    let (ok, out) = ingest(&schema, &[&minus_one], &[]);
    assert!(ok, "{out}");
    let run = last_run(&db, &schema, "Customers-2026-12-05.csv")
        .await
        .unwrap();
    assert_eq!((run.0.as_str(), run.3, run.4), ("applied", 1, 1), "{run:?}");
    assert_eq!(count(db.clone(), schema.clone()).await, 3);
    assert_eq!(
        text(
            &db,
            &format!("SELECT name FROM {schema}.customers WHERE id = '2'")
        )
        .await
        .as_deref(),
        Some("B2")
    );

    let empty = write("customers_empty.csv", "id,name,zip\n");
    let (ok, out) = ingest(&schema, &[&empty], &["--table", "customers"]);
    assert!(!ok, "{out}");
    assert!(out.contains("snapshot refused"), "{out}");
    assert_eq!(
        count(db.clone(), schema.clone()).await,
        3,
        "an empty snapshot leaves the table untouched"
    );

    let small = write("customers_small.csv", &customers_csv(&[("1", "A")]));
    let (ok, out) = ingest(&schema, &[&small], &["--table", "customers"]);
    assert!(!ok && out.contains("snapshot refused"), "{out}");
    assert_eq!(
        count(db.clone(), schema.clone()).await,
        3,
        "a too-small snapshot leaves the table untouched"
    );

    let (ok, out) = ingest(&schema, &[&small], &["--table", "customers", "--force"]);
    assert!(ok, "{out}");
    assert_eq!(
        count(db.clone(), schema.clone()).await,
        1,
        "--force applies it"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn encodings_bom_crlf_quotes_and_repeated_keys() {
    let schema = unique_schema("enc");
    let db = pool(&database_url()).await;
    let dir = scratch();
    let latin = dir.join("carriers.csv");
    std::fs::write(
        &latin,
        b"id,name,city\r\n1,CAF\xc9 \x93TRUCKS\x94,M\xdcNCHEN\r\n",
    )
    .unwrap();
    let (ok, out) = ingest(&schema, &[&latin], &[]);
    assert!(ok, "{out}");
    assert_eq!(
        text(
            &db,
            &format!("SELECT name FROM {schema}.carriers WHERE id = '1'")
        )
        .await
        .as_deref(),
        Some("CAF\u{c9} \u{201c}TRUCKS\u{201d}")
    );
    assert_eq!(
        text(
            &db,
            &format!("SELECT city FROM {schema}.carriers WHERE id = '1'")
        )
        .await
        .as_deref(),
        Some("M\u{dc}NCHEN")
    );
    assert_eq!(
        text(&db, &format!("SELECT encoding FROM aljex_sync.ingest_runs WHERE schema_name = '{schema}' AND file_name = 'carriers.csv'")).await.as_deref(),
        Some("windows-1252")
    );

    let bom = dir.join("salesreps.csv");
    std::fs::write(
        &bom,
        "\u{feff}ID,Name,Note\r\nAD,\"Ann, D.\",\"said \"\"hi\"\"\r\nsecond line\"\r\nBK,Bob,\r\nAD,Ann Later,last wins\r\n",
    )
    .unwrap();
    let (ok, out) = ingest(&schema, &[&bom], &[]);
    assert!(ok, "{out}");
    assert_eq!(
        scalar_i64(&db, &format!("SELECT count(*) FROM {schema}.salesreps")).await,
        2
    );
    assert_eq!(
        text(
            &db,
            &format!("SELECT name FROM {schema}.salesreps WHERE id = 'AD'")
        )
        .await
        .as_deref(),
        Some("Ann Later")
    );
    assert_eq!(
        text(
            &db,
            &format!("SELECT note FROM {schema}.salesreps WHERE id = 'BK'")
        )
        .await
        .as_deref(),
        Some("")
    );
    let run = last_run(&db, &schema, "salesreps.csv").await.unwrap();
    assert_eq!(
        (run.1, run.2),
        (3, 2),
        "3 rows read, 2 distinct keys inserted: {run:?}"
    );

    let quoted = dir.join("quotes.csv");
    std::fs::write(&quoted, "id,note\nq1,\"a,\"\"b\"\"\nc\"\n").unwrap();
    let (ok, out) = ingest(&schema, &[&quoted], &[]);
    assert!(ok, "{out}");
    assert_eq!(
        text(
            &db,
            &format!("SELECT note FROM {schema}.quotes WHERE id = 'q1'")
        )
        .await
        .as_deref(),
        Some("a,\"b\"\nc")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn row_rejects_under_and_over_the_threshold() {
    let schema = unique_schema("rej");
    let db = pool(&database_url()).await;
    let dir = scratch();
    let mut body = String::from("id,name\n");
    for i in 0..200 {
        if i == 50 {
            body.push_str("bad,row,with,extra\n");
        } else {
            body.push_str(&format!("{i},N{i}\n"));
        }
    }
    let under = dir.join("debits.csv");
    std::fs::write(&under, &body).unwrap();
    let (ok, out) = ingest(&schema, &[&under], &[]);
    assert!(ok, "{out}");
    let run = last_run(&db, &schema, "debits.csv").await.unwrap();
    assert_eq!(
        (run.0.as_str(), run.1, run.2, run.5),
        ("applied", 200, 199, 1),
        "{run:?}"
    );
    let reject = sqlx::query("SELECT r.line, r.reason, r.record FROM aljex_sync.ingest_rejects r JOIN aljex_sync.ingest_runs u ON u.id = r.run_id WHERE u.schema_name = $1")
        .bind(&schema)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        reject.get::<i64, _>("line"),
        52,
        "file line of the bad row (header is line 1)"
    );
    assert!(reject.get::<String, _>("reason").contains("4 fields"));
    assert_eq!(reject.get::<String, _>("record"), "bad,row,with,extra");
    let rejects_file = std::fs::read_to_string(dir.join("debits.csv.rejects.csv")).unwrap();
    assert!(
        rejects_file.contains("52,") && rejects_file.contains("bad,row,with,extra"),
        "{rejects_file}"
    );

    let mut body = String::from("id,name\n");
    for i in 0..20 {
        if i % 5 == 0 {
            body.push_str(&format!(",empty key {i}\n"));
        } else {
            body.push_str(&format!("{i},N{i}\n"));
        }
    }
    let over = dir.join("credits.csv");
    std::fs::write(&over, &body).unwrap();
    let (ok, out) = ingest(&schema, &[&over], &[]);
    assert!(!ok, "{out}");
    let run = last_run(&db, &schema, "credits.csv").await.unwrap();
    assert_eq!((run.0.as_str(), run.5), ("failed", 4), "{run:?}");
    assert!(run.6.unwrap().contains("nothing applied"));
    let credits = scalar_i64(&db, &format!("SELECT count(*) FROM information_schema.tables WHERE table_schema = '{schema}' AND table_name = 'credits'")).await;
    if credits > 0 {
        assert_eq!(
            scalar_i64(&db, &format!("SELECT count(*) FROM {schema}.credits")).await,
            0
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_same_file_twice_is_a_duplicate() {
    let schema = unique_schema("dup");
    let db = pool(&database_url()).await;
    let dir = scratch();
    let file = dir.join("payments.csv");
    std::fs::write(&file, "id,amount\np1,10.00\n").unwrap();
    assert!(ingest(&schema, &[&file], &[]).0);
    let (ok, out) = ingest(&schema, &[&file], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("duplicate"), "{out}");
    let statuses: Vec<String> = sqlx::query_scalar(
        "SELECT status FROM aljex_sync.ingest_runs WHERE schema_name = $1 ORDER BY id",
    )
    .bind(&schema)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(statuses, ["applied", "duplicate"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_live_change_received_after_the_export_time_survives_the_morning_file() {
    let url = database_url();
    let db = pool(&url).await;
    let sink = SinkProcess::start(&url, &[]).await.unwrap();
    let s = sink.schema.clone();
    let mut client = sink.client().await;
    let dir = scratch();
    let file = dir.join("customers.csv");
    std::fs::write(&file, customers_csv(&[("1", "OLD NAME"), ("2", "TWO")])).unwrap();
    // Exported an hour ago...
    let status = Command::new("touch")
        .args(["-d", "1 hour ago"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    // ...and a live change received now.
    let mut change = aljex_proto::change::change_from_form(
        b"web_sync_table_name=customers&web_sync_action=update&id=1&name=LIVE+NAME",
        aljex_proto::form::default_fallback(),
    )
    .unwrap();
    change.received_at_unix_micros = chrono::Utc::now().timestamp_micros();
    client.apply_change(change).await.unwrap();
    let (ok, out) = ingest(&s, &[&file], &["--force"]);
    assert!(ok, "{out}");
    assert_eq!(
        text(
            &db,
            &format!("SELECT name FROM {s}.customers WHERE id = '1'")
        )
        .await
        .as_deref(),
        Some("LIVE NAME")
    );
    assert_eq!(
        text(
            &db,
            &format!("SELECT name FROM {s}.customers WHERE id = '2'")
        )
        .await
        .as_deref(),
        Some("TWO")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_sink_killed_mid_file_leaves_the_table_and_reingests_on_restart() {
    let url = database_url();
    let db = pool(&url).await;
    let dir = scratch();
    let schema = unique_schema("kill");
    const ROWS: i64 = 200_000;
    let big = dir.join("staging.csv");
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        writeln!(out, "id,a,b,c,d,e,f,g,h,i").unwrap();
        for i in 0..ROWS {
            writeln!(
                out,
                "{i},alpha {i},beta,gamma,delta,epsilon,zeta,eta,theta,iota {i}"
            )
            .unwrap();
        }
    }
    let port = aljex_tests::free_port();
    let args = ["--inbox", &dir.to_string_lossy(), "--settle", "0.2"];
    let args: Vec<&str> = args.to_vec();
    let mut sink = SinkProcess::start_on(&url, &schema, port, &args)
        .await
        .unwrap();
    std::fs::rename(&big, dir.join("loads.csv")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(run) = last_run(&db, &schema, "loads.csv").await {
            assert_eq!(
                run.0, "running",
                "the file finished before the sink could be killed: {run:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "ingest never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The run row is written before loading starts: killing now lands
    // between the claim and the commit.
    sink.kill();
    let rows = scalar_i64(&db, &format!("SELECT count(*) FROM information_schema.tables WHERE table_schema = '{schema}' AND table_name = 'loads'")).await;
    if rows > 0 {
        assert_eq!(
            scalar_i64(&db, &format!("SELECT count(*) FROM {schema}.loads")).await,
            0,
            "a half-ingested file changed the table"
        );
    }
    let claimed: Vec<_> = std::fs::read_dir(dir.join("processing")).unwrap().collect();
    assert_eq!(claimed.len(), 1, "the file waits in processing/");

    let _sink = SinkProcess::start_on(&url, &schema, port, &args)
        .await
        .unwrap();
    let run = wait_for_run(&db, &schema, "loads.csv", Duration::from_secs(120)).await;
    assert_eq!((run.0.as_str(), run.1), ("applied", ROWS), "{run:?}");
    assert_eq!(
        scalar_i64(&db, &format!("SELECT count(*) FROM {schema}.loads")).await,
        ROWS
    );
    std::fs::remove_dir_all(dir).unwrap();
}
