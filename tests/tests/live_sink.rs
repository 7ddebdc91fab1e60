//! The sink's live path against a real PostgreSQL: gRPC in, rows out.

use std::time::Duration;

use aljex_proto::{
    change::change_from_form,
    form::default_fallback,
    v1::{sync_sink_client::SyncSinkClient, ChangeReply, ChangeRequest, Outcome, Rejection},
};
use aljex_tests::{database_url, fixture, fixtures, pool, PrivateCluster, SinkProcess};
use sqlx::{PgPool, Row};
use tonic::{transport::Channel, Code};

/// A change from a form body, received "now" plus `offset_micros`.
fn form_change(body: &str, offset_micros: i64) -> ChangeRequest {
    let mut change = change_from_form(body.as_bytes(), default_fallback()).expect("valid envelope");
    change.received_at_unix_micros = chrono::Utc::now().timestamp_micros() + offset_micros;
    change.request_id = format!("test-{}", uuid::Uuid::new_v4());
    change.client_ip = "127.0.0.1".to_string();
    change
}

async fn apply(
    client: &mut SyncSinkClient<Channel>,
    change: ChangeRequest,
) -> Result<ChangeReply, tonic::Status> {
    client.apply_change(change).await.map(|r| r.into_inner())
}

async fn apply_form(client: &mut SyncSinkClient<Channel>, body: &str) -> ChangeReply {
    apply(client, form_change(body, 0))
        .await
        .expect("change applied")
}

fn outcome(reply: &ChangeReply) -> Outcome {
    Outcome::try_from(reply.outcome).expect("known outcome")
}

async fn text(db: &PgPool, sql: &str) -> Option<String> {
    sqlx::query_scalar::<_, Option<String>>(sql)
        .fetch_optional(db)
        .await
        .expect(sql)
        .flatten()
}

async fn execute(db: &PgPool, sql: &str) {
    sqlx::query(sql).execute(db).await.expect(sql);
}

async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(db)
        .await
        .expect(sql)
}

async fn rejection_reason(db: &PgPool, request_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT reason FROM aljex_sync.rejected_changes WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(db)
        .await
        .expect("query rejected_changes")
}

#[tokio::test]
async fn overview_examples_create_then_update_one_employee() {
    let url = database_url();
    let sink = SinkProcess::start(&url, &[]).await.unwrap();
    let db = pool(&url).await;
    let mut client = sink.client().await;
    let s = &sink.schema;

    let create = String::from_utf8(fixture("live/01-employee-create.form")).unwrap();
    let update = String::from_utf8(fixture("live/02-employee-update.form")).unwrap();
    let reply = apply_form(&mut client, &create).await;
    assert_eq!(
        (outcome(&reply), reply.table.as_str(), reply.key.as_str()),
        (Outcome::Applied, "employees", "demo")
    );
    apply_form(&mut client, &update).await;

    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {s}.employees")).await,
        1
    );
    let row = sqlx::query(&format!(
        "SELECT phone, email, name, _source FROM {s}.employees WHERE id = 'demo'"
    ))
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("phone"), "7323578777");
    assert_eq!(row.get::<String, _>("email"), "bsmith@aljex.com");
    assert_eq!(row.get::<String, _>("name"), "Bill Smith");
    assert_eq!(row.get::<String, _>("_source"), "live");
    let logged = count(
        &db,
        &format!("SELECT count(*) FROM aljex_sync.change_log WHERE schema_name = '{s}' AND table_name = 'employees' AND key = '{{demo}}' AND outcome = 'applied'"),
    )
    .await;
    assert_eq!(logged, 2);
    let logged_phone = text(
        &db,
        &format!("SELECT fields->>'phone' FROM aljex_sync.change_log WHERE schema_name = '{s}' ORDER BY id DESC LIMIT 1"),
    )
    .await;
    assert_eq!(logged_phone.as_deref(), Some("7323578777"));
}

#[tokio::test]
async fn spot_fixtures_are_keyed_by_spot_number_and_deleted() {
    let url = database_url();
    let sink = SinkProcess::start(&url, &[]).await.unwrap();
    let db = pool(&url).await;
    let mut client = sink.client().await;
    let s = &sink.schema;

    let update = String::from_utf8(fixture("live/03-spot-update.form")).unwrap();
    let reply = apply_form(&mut client, &update).await;
    assert_eq!(
        (outcome(&reply), reply.key.as_str()),
        (Outcome::Applied, "8890426")
    );
    assert_eq!(
        text(
            &db,
            &format!("SELECT expiration_date FROM {s}.spots WHERE spot_number = '8890426'")
        )
        .await
        .as_deref(),
        Some("10/10/2026")
    );
    let delete = String::from_utf8(fixture("live/04-spot-delete.form")).unwrap();
    let reply = apply_form(&mut client, &delete).await;
    assert_eq!(outcome(&reply), Outcome::Deleted);
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {s}.spots")).await,
        0
    );
    let raw_action = text(
        &db,
        &format!("SELECT raw_action FROM aljex_sync.change_log WHERE schema_name = '{s}' AND action = 'delete'"),
    )
    .await;
    assert_eq!(raw_action.as_deref(), Some("Delete"));
}

#[tokio::test]
async fn every_action_spelling_is_understood() {
    let url = database_url();
    let sink = SinkProcess::start(&url, &[]).await.unwrap();
    let db = pool(&url).await;
    let mut client = sink.client().await;
    let s = &sink.schema;

    let steps = [
        ("insert", Outcome::Applied, 1),
        ("UPDATE", Outcome::Applied, 1),
        ("+delete+", Outcome::Deleted, 0),
        ("insert", Outcome::Applied, 1),
        ("deleted", Outcome::Deleted, 0),
        ("Create", Outcome::Applied, 1),
        ("D", Outcome::Deleted, 0),
        ("DELETE", Outcome::NotFound, 0),
    ];
    for (i, (action, expected, rows)) in steps.into_iter().enumerate() {
        let body =
            format!("web_sync_table_name=carriers&web_sync_action={action}&id=77&mc_num={i}");
        let reply = apply_form(&mut client, &body).await;
        assert_eq!(outcome(&reply), expected, "action {action:?}");
        assert_eq!(
            count(&db, &format!("SELECT count(*) FROM {s}.carriers")).await,
            rows,
            "after {action:?}"
        );
    }
    let mut bad = form_change(
        "web_sync_table_name=carriers&web_sync_action=truncate&id=77",
        0,
    );
    bad.request_id = format!("bad-action-{}", uuid::Uuid::new_v4());
    let status = apply(&mut client, bad.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("truncate"),
        "{}",
        status.message()
    );
    assert!(rejection_reason(&db, &bad.request_id)
        .await
        .is_some_and(|r| r.contains("truncate")));
}

#[tokio::test]
async fn soft_delete_keeps_the_row_and_a_later_upsert_revives_it() {
    let url = database_url();
    let dir = std::env::temp_dir().join(format!("aljex-tables-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tables.toml");
    std::fs::write(&config, "[tables.customers]\ndelete = \"soft\"\n").unwrap();
    let sink = SinkProcess::start(&url, &["--tables", &config.to_string_lossy()])
        .await
        .unwrap();
    let db = pool(&url).await;
    let mut client = sink.client().await;
    let s = &sink.schema;

    let create = String::from_utf8(fixture("live/05-customer-create.form")).unwrap();
    apply_form(&mut client, &create).await;
    let reply = apply_form(
        &mut client,
        "web_sync_table_name=customers&web_sync_action=delete&id=105241",
    )
    .await;
    assert_eq!(outcome(&reply), Outcome::Deleted);
    let row = sqlx::query(&format!("SELECT name, zip, _deleted_at IS NOT NULL AS deleted FROM {s}.customers WHERE id = '105241'"))
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("name"), "GILL STUDIOS & SONS");
    assert_eq!(row.get::<String, _>("zip"), "07072");
    assert!(row.get::<bool, _>("deleted"));

    apply_form(
        &mut client,
        "web_sync_table_name=customers&web_sync_action=update&id=105241&city=NEWARK",
    )
    .await;
    let row = sqlx::query(&format!(
        "SELECT city, _deleted_at IS NULL AS alive FROM {s}.customers WHERE id = '105241'"
    ))
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("city"), "NEWARK");
    assert!(row.get::<bool, _>("alive"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn an_older_change_never_overwrites_a_newer_one() {
    let url = database_url();
    let sink = SinkProcess::start(&url, &[]).await.unwrap();
    let db = pool(&url).await;
    let mut client = sink.client().await;
    let s = &sink.schema;

    let newer = form_change(
        "web_sync_table_name=loads&web_sync_action=update&id=1&status=DELIVERED",
        0,
    );
    let older = form_change(
        "web_sync_table_name=loads&web_sync_action=update&id=1&status=COVERED",
        -5_000_000,
    );
    assert_eq!(
        outcome(&apply(&mut client, newer).await.unwrap()),
        Outcome::Applied
    );
    assert_eq!(
        outcome(&apply(&mut client, older).await.unwrap()),
        Outcome::Stale
    );
    assert_eq!(
        text(&db, &format!("SELECT status FROM {s}.loads WHERE id = '1'"))
            .await
            .as_deref(),
        Some("DELIVERED")
    );

    // An older delete does not remove a newer row.
    let old_delete = form_change(
        "web_sync_table_name=loads&web_sync_action=delete&id=1",
        -3_000_000,
    );
    assert_eq!(
        outcome(&apply(&mut client, old_delete).await.unwrap()),
        Outcome::Stale
    );
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {s}.loads")).await,
        1
    );

    // A delete, then a create received before it but arriving later: the row stays deleted.
    let delete = form_change("web_sync_table_name=loads&web_sync_action=delete&id=2", 0);
    let late_create = form_change(
        "web_sync_table_name=loads&web_sync_action=create&id=2&status=BOOKED",
        -1_000_000,
    );
    assert_eq!(
        outcome(&apply(&mut client, delete).await.unwrap()),
        Outcome::NotFound
    );
    assert_eq!(
        outcome(&apply(&mut client, late_create).await.unwrap()),
        Outcome::Stale
    );
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM {s}.loads WHERE id = '2'")
        )
        .await,
        0
    );
    let stale_logged = count(
        &db,
        &format!("SELECT count(*) FROM aljex_sync.change_log WHERE schema_name = '{s}' AND outcome = 'stale'"),
    )
    .await;
    assert_eq!(stale_logged, 3);
}

#[tokio::test]
async fn a_new_field_adds_a_column_and_missing_fields_keep_their_values() {
    let url = database_url();
    let sink = SinkProcess::start(&url, &[]).await.unwrap();
    let db = pool(&url).await;
    let mut client = sink.client().await;
    let s = &sink.schema;

    apply_form(
        &mut client,
        "web_sync_table_name=salesreps&web_sync_action=create&id=AD&name=Ann",
    )
    .await;
    apply_form(
        &mut client,
        "web_sync_table_name=salesreps&web_sync_action=update&id=AD&Commission_Rate=5%25&empty=",
    )
    .await;
    let row = sqlx::query(&format!(
        "SELECT name, commission_rate, empty FROM {s}.salesreps WHERE id = 'AD'"
    ))
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("name"), "Ann");
    assert_eq!(row.get::<String, _>("commission_rate"), "5%");
    assert_eq!(
        row.get::<String, _>("empty"),
        "",
        "empty stays empty, not NULL"
    );
}

#[tokio::test]
async fn a_mirror_table_changed_behind_the_sinks_back_is_repaired() {
    let url = database_url();
    let sink = SinkProcess::start(&url, &[]).await.unwrap();
    let db = pool(&url).await;
    let mut client = sink.client().await;
    let s = &sink.schema;
    let post = |id: &str, city: &str| {
        format!("web_sync_table_name=carriers&web_sync_action=update&id={id}&city={city}&state=GA")
    };

    // Twice, so the column list is known and verified in the sink's cache.
    apply_form(&mut client, &post("C1", "Atlanta")).await;
    apply_form(&mut client, &post("C2", "Macon")).await;
    execute(&db, &format!("ALTER TABLE {s}.carriers DROP COLUMN city")).await;
    let reply = apply_form(&mut client, &post("C3", "Athens")).await;
    assert_eq!(outcome(&reply), Outcome::Applied);
    assert_eq!(
        text(
            &db,
            &format!("SELECT city FROM {s}.carriers WHERE id = 'C3'")
        )
        .await,
        Some("Athens".to_string()),
        "the dropped column is added again"
    );

    execute(&db, &format!("DROP TABLE {s}.carriers")).await;
    let reply = apply_form(&mut client, &post("C4", "Rome")).await;
    assert_eq!(outcome(&reply), Outcome::Applied);
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {s}.carriers")).await,
        1,
        "the dropped table is created again"
    );
}

#[tokio::test]
async fn the_wide_load_fixture_lands_with_every_field() {
    let url = database_url();
    let sink = SinkProcess::start(&url, &[]).await.unwrap();
    let db = pool(&url).await;
    let mut client = sink.client().await;
    let s = &sink.schema;

    let body = String::from_utf8(fixture("live/06-load-update-wide.form")).unwrap();
    let change = form_change(&body, 0);
    assert_eq!(change.fields.len() + 2, 469);
    let reply = apply(&mut client, change.clone()).await.unwrap();
    assert_eq!(
        (outcome(&reply), reply.key.as_str()),
        (Outcome::Applied, "50482")
    );
    let columns = count(
        &db,
        &format!("SELECT count(*) FROM information_schema.columns WHERE table_schema = '{s}' AND table_name = 'loads'"),
    )
    .await;
    assert_eq!(columns, 467 + 4);
    for field in &change.fields {
        let stored = text(
            &db,
            &format!(
                "SELECT \"{}\" FROM {s}.loads WHERE id = '50482'",
                field.name.to_ascii_lowercase()
            ),
        )
        .await;
        assert_eq!(
            stored.as_deref(),
            Some(field.value.as_str()),
            "field {}",
            field.name
        );
    }
}

#[tokio::test]
async fn invalid_names_are_refused_recorded_and_touch_nothing() {
    let url = database_url();
    let sink = SinkProcess::start(&url, &[]).await.unwrap();
    let db = pool(&url).await;
    let mut client = sink.client().await;
    let s = &sink.schema;

    let cases = [
        (
            "web_sync_table_name=loads%22%3B+drop+table+x%3B+--&web_sync_action=create&id=1",
            "bad table name",
        ),
        (
            "web_sync_table_name=loads&web_sync_action=create&id=1&a%22b=2",
            "bad field name",
        ),
        (
            "web_sync_table_name=loads&web_sync_action=create&id=1&Osd=1&osd=2",
            "twice",
        ),
        (
            "web_sync_table_name=loads&web_sync_action=create&id=1&_received_at=2",
            "reserved",
        ),
        (
            "web_sync_table_name=loads&web_sync_action=create&status=x",
            "no id field",
        ),
        (
            "web_sync_table_name=loads&web_sync_action=create&id=+&status=x",
            "id is empty",
        ),
        (
            "web_sync_table_name=spots&web_sync_action=delete&id=8890426",
            "no spot_number field",
        ),
        (
            "web_sync_table_name=loads&web_sync_action=create&id=1&note=a%00b",
            "database refused",
        ),
    ];
    for (body, expected) in cases {
        let change = form_change(body, 0);
        let status = apply(&mut client, change.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{body}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{body}: {}",
            status.message()
        );
        let recorded = rejection_reason(&db, &change.request_id).await;
        assert_eq!(recorded.as_deref(), Some(status.message()), "{body}");
    }
    // The stored protobuf is byte-exact, NUL included.
    let tables = count(
        &db,
        &format!("SELECT count(*) FROM information_schema.tables WHERE table_schema = '{s}'"),
    )
    .await;
    let rows_if_any = if tables > 0 {
        count(&db, &format!("SELECT count(*) FROM {s}.loads")).await
    } else {
        0
    };
    assert_eq!(rows_if_any, 0, "nothing applied");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'x'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn twenty_concurrent_first_posts_to_a_new_table_all_succeed() {
    let url = database_url();
    let sink = SinkProcess::start(&url, &[]).await.unwrap();
    let db = pool(&url).await;
    let s = sink.schema.clone();

    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut client = sink.client().await;
        tasks.push(tokio::spawn(async move {
            let body = format!(
                "web_sync_table_name=quotes&web_sync_action=create&id=q{i}&field_{i}=v{i}&shared=s"
            );
            apply(&mut client, form_change(&body, 0)).await
        }));
    }
    for task in tasks {
        let reply = task.await.unwrap().expect("every first post succeeds");
        assert_eq!(outcome(&reply), Outcome::Applied);
    }
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {s}.quotes")).await,
        20
    );
    assert_eq!(
        text(
            &db,
            &format!("SELECT field_7 FROM {s}.quotes WHERE id = 'q7'")
        )
        .await
        .as_deref(),
        Some("v7")
    );
}

#[tokio::test]
async fn edge_rejections_are_stored_with_their_body() {
    let url = database_url();
    let sink = SinkProcess::start(&url, &[]).await.unwrap();
    let db = pool(&url).await;
    let mut client = sink.client().await;

    let body = b"web_sync_table_name=loads&id=\xff\x00raw".to_vec();
    let request_id = format!("edge-{}", uuid::Uuid::new_v4());
    let reply = client
        .record_rejection(Rejection {
            reason: "missing web_sync_action".into(),
            body: body.clone(),
            received_at_unix_micros: chrono::Utc::now().timestamp_micros(),
            request_id: request_id.clone(),
            client_ip: "203.0.113.9".into(),
            http_status: 400,
        })
        .await
        .unwrap()
        .into_inner();
    let row = sqlx::query("SELECT body, reason, http_status, client_ip, rejected_by FROM aljex_sync.rejected_changes WHERE id = $1")
        .bind(reply.id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(row.get::<Vec<u8>, _>("body"), body);
    assert_eq!(row.get::<String, _>("reason"), "missing web_sync_action");
    assert_eq!(row.get::<i32, _>("http_status"), 400);
    assert_eq!(row.get::<String, _>("client_ip"), "203.0.113.9");
    assert_eq!(row.get::<String, _>("rejected_by"), "edge");
}

#[tokio::test]
async fn send_applies_every_live_fixture() {
    let url = database_url();
    let sink = SinkProcess::start(&url, &[]).await.unwrap();
    let db = pool(&url).await;
    let s = &sink.schema;

    let mut files: Vec<_> = std::fs::read_dir(fixtures().join("live"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let output = std::process::Command::new(aljex_tests::binary("aljex-sink"))
        .args(["send", "--endpoint", &sink.endpoint])
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.lines().count(), files.len(), "{stdout}");
    assert!(
        stdout.contains("06-load-update-wide.form: applied loads 50482"),
        "{stdout}"
    );
    assert!(
        stdout.contains("04-spot-delete.form: deleted spots 8890426"),
        "{stdout}"
    );
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {s}.employees")).await,
        1
    );
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {s}.customers")).await,
        1
    );
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {s}.loads")).await,
        1
    );
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {s}.spots")).await,
        0
    );
}

#[tokio::test]
async fn a_bad_tables_config_stops_start_up_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("aljex-tables-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tables.toml");
    std::fs::write(&config, "[tables.loads]\nkeys = [\"id\"]\n").unwrap();
    let output = std::process::Command::new(aljex_tests::binary("aljex-sink"))
        .args([
            "serve",
            "--tables",
            &config.to_string_lossy(),
            "--metrics-listen",
            "off",
        ])
        .env("DATABASE_URL", database_url())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("keys") && stderr.contains("tables.toml"),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_bad_worker_thread_count_stops_start_up_naming_the_flag() {
    let output = std::process::Command::new(aljex_tests::binary("aljex-sink"))
        .args(["serve", "--metrics-listen", "off"])
        .env("DATABASE_URL", database_url())
        .env("ALJEX_WORKER_THREADS", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--worker-threads"), "{stderr}");
}

#[tokio::test]
async fn postgres_stopped_mid_run_gives_unavailable_and_loses_nothing_acknowledged() {
    let cluster = PrivateCluster::start().unwrap();
    let sink = SinkProcess::start(&cluster.url, &["--db-acquire-timeout", "0.5"])
        .await
        .unwrap();
    let mut client = sink.client().await;
    let s = sink.schema.clone();

    let mut acknowledged = Vec::new();
    let mut unavailable = 0;
    for i in 0..60 {
        if i == 20 {
            cluster.stop().unwrap();
        }
        if i == 40 {
            cluster.restart().unwrap();
            // Give the pool a moment to notice the server is back.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let body =
            format!("web_sync_table_name=payments&web_sync_action=create&id=p{i}&amount={i}.00");
        match apply(&mut client, form_change(&body, 0)).await {
            Ok(reply) => {
                assert_eq!(outcome(&reply), Outcome::Applied);
                acknowledged.push(format!("p{i}"));
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!((20..55).contains(&i), "change {i} failed: {status:?}");
                unavailable += 1;
            }
        }
    }
    assert!(
        unavailable >= 20,
        "only {unavailable} changes failed while PostgreSQL was down"
    );
    assert!(
        acknowledged.len() >= 25,
        "the sink did not recover: {acknowledged:?}"
    );
    let db = pool(&cluster.url).await;
    let stored: Vec<String> = sqlx::query_scalar(&format!("SELECT id FROM {s}.payments"))
        .fetch_all(&db)
        .await
        .unwrap();
    for key in &acknowledged {
        assert!(stored.contains(key), "acknowledged {key} is missing");
    }
    assert_eq!(
        stored.len(),
        acknowledged.len(),
        "only acknowledged changes are stored"
    );
}
