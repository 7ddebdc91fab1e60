//! End to end through the edge: an HTTPS client, real Envoy loading the
//! release `.wasm` filter, the real sink, real PostgreSQL.

use std::{sync::OnceLock, time::Duration};

use aljex_tests::{
    binary, database_url,
    envoy::EnvoyProcess,
    fixture, fixtures,
    https::{Answer, HttpsClient, Post},
    pool, unique_schema, SinkProcess,
};
use base64::Engine;
use http::Method;
use sqlx::PgPool;

const USER: &str = "aljex";
const PASSWORD: &str = "edge-test-password-1";

/// The argon2id hash of [`PASSWORD`], made by `aljex-sink hash-password` (stdin).
fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        use std::io::Write;
        let mut child = std::process::Command::new(binary("aljex-sink"))
            .arg("hash-password")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    })
}

fn filter_config(extra: &str) -> String {
    let timeout = if extra.contains("sink_timeout_ms") {
        ""
    } else {
        r#","sink_timeout_ms":10000"#
    };
    format!(
        r#"{{"credentials":[{{"username":"{USER}","password_hash":"{}"}}]{timeout}{extra}}}"#,
        password_hash()
    )
}

struct Stack {
    sink: SinkProcess,
    envoy: EnvoyProcess,
    client: HttpsClient,
    db: PgPool,
}

impl Stack {
    async fn start(extra_config: &str) -> Stack {
        Self::start_with(extra_config, &[]).await
    }

    async fn start_with(extra_config: &str, sink_args: &[&str]) -> Stack {
        let url = database_url();
        let sink = SinkProcess::start(&url, sink_args).await.unwrap();
        let envoy = EnvoyProcess::start(sink.port, &filter_config(extra_config)).unwrap();
        let client =
            HttpsClient::new(&aljex_tests::envoy::test_certificate().0, envoy.https_port).unwrap();
        Stack {
            sink,
            envoy,
            client,
            db: pool(&url).await,
        }
    }

    async fn send(&self, post: &Post) -> Answer {
        self.client.send(post).await.unwrap()
    }

    async fn post_form(&self, body: impl Into<Vec<u8>>) -> Answer {
        self.send(&Post::form(USER, PASSWORD, body)).await
    }

    async fn rows(&self, table: &str) -> i64 {
        let schema = &self.sink.schema;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2)",
        )
        .bind(schema)
        .bind(table)
        .fetch_one(&self.db)
        .await
        .unwrap();
        if !exists {
            return 0;
        }
        sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.{table}"))
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    async fn value(&self, sql: &str) -> Option<String> {
        let sql = sql.replace("{s}", &self.sink.schema);
        sqlx::query_scalar::<_, Option<String>>(&sql)
            .fetch_optional(&self.db)
            .await
            .unwrap()
            .flatten()
    }
}

/// Rejections whose stored body (edge) or request (sink) contains `marker`: (http_status, reason).
async fn rejections_with(db: &PgPool, marker: &str) -> Vec<(Option<i32>, String)> {
    sqlx::query_as(
        "SELECT http_status, reason FROM aljex_sync.rejected_changes \
         WHERE position(convert_to($1, 'UTF8') in coalesce(body, request)) > 0 ORDER BY id",
    )
    .bind(marker)
    .fetch_all(db)
    .await
    .unwrap()
}

fn marker() -> String {
    format!("m{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

#[tokio::test]
async fn overview_examples_end_to_end() {
    let stack = Stack::start("").await;
    let create = stack
        .post_form(fixture("live/01-employee-create.form"))
        .await;
    assert_eq!(create.status, 200, "{}", create.body);
    assert_eq!(
        create.body,
        "{\"status\":\"ok\",\"table\":\"employees\",\"key\":\"demo\",\"outcome\":\"applied\"}\n"
    );
    assert_eq!(create.header("content-type"), Some("application/json"));
    let update = stack
        .post_form(fixture("live/02-employee-update.form"))
        .await;
    assert_eq!(update.status, 200, "{}", update.body);

    assert_eq!(stack.rows("employees").await, 1);
    assert_eq!(
        stack
            .value("SELECT phone FROM {s}.employees WHERE id = 'demo'")
            .await
            .as_deref(),
        Some("7323578777")
    );
    assert_eq!(
        stack
            .value("SELECT email FROM {s}.employees WHERE id = 'demo'")
            .await
            .as_deref(),
        Some("bsmith@aljex.com")
    );
    let client_ip = stack
        .value("SELECT client_ip FROM aljex_sync.change_log WHERE schema_name = '{s}' ORDER BY id DESC LIMIT 1")
        .await;
    assert_eq!(client_ip.as_deref(), Some("127.0.0.1"));
    assert!(stack.envoy.counter("wasmcustom.aljex_sync.responses_200") >= 2);
}

#[tokio::test]
async fn every_live_fixture_over_http1_and_http2() {
    let stack = Stack::start("").await;
    let mut files: Vec<_> = std::fs::read_dir(fixtures().join("live"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for (i, file) in files.iter().enumerate() {
        let mut post = Post::form(USER, PASSWORD, std::fs::read(file).unwrap());
        post.http2 = i % 2 == 1;
        let answer = stack.send(&post).await;
        assert_eq!(answer.status, 200, "{}: {}", file.display(), answer.body);
    }
    assert_eq!(stack.rows("employees").await, 1);
    assert_eq!(stack.rows("customers").await, 1);
    assert_eq!(stack.rows("spots").await, 0, "created then deleted");
    assert!(stack
        .value("SELECT dest_state FROM {s}.loads WHERE id = '50482'")
        .await
        .is_some());
    assert_eq!(
        stack
            .value("SELECT zip FROM {s}.customers WHERE id = '105241'")
            .await
            .as_deref(),
        Some("07072")
    );
}

#[tokio::test]
async fn http2_request_ending_with_trailers() {
    let stack = Stack::start("").await;
    let mut post = Post::form(
        USER,
        PASSWORD,
        "web_sync_table_name=quotes&web_sync_action=create&id=q1&lane=ATL-MCI",
    );
    post.http2 = true;
    post.trailers = Some(vec![("x-checksum".into(), "abc".into())]);
    let answer = stack.send(&post).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        stack
            .value("SELECT lane FROM {s}.quotes WHERE id = 'q1'")
            .await
            .as_deref(),
        Some("ATL-MCI")
    );
}

#[tokio::test]
async fn windows_1252_text_is_kept() {
    let stack = Stack::start("").await;
    let answer = stack
        .post_form(b"web_sync_table_name=customers&web_sync_action=create&id=9&name=CAF%C9+%93NO%94&city=M\xdcNCHEN".to_vec())
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        stack
            .value("SELECT name FROM {s}.customers WHERE id = '9'")
            .await
            .as_deref(),
        Some("CAF\u{c9} \u{201c}NO\u{201d}")
    );
    assert_eq!(
        stack
            .value("SELECT city FROM {s}.customers WHERE id = '9'")
            .await
            .as_deref(),
        Some("M\u{dc}NCHEN")
    );
}

#[tokio::test]
async fn every_refusal_has_its_status_and_writes_no_row() {
    let stack = Stack::start(r#","max_body_bytes":4096"#).await;
    let mark = marker();
    let good = format!("web_sync_table_name=loads&web_sync_action=update&id=1&note={mark}");

    // Not the sync path, not POST.
    let mut post = Post::form(USER, PASSWORD, good.clone());
    post.path = "/elsewhere".into();
    assert_eq!(stack.send(&post).await.status, 404);
    let mut post = Post::form(USER, PASSWORD, good.clone());
    post.method = Method::PUT;
    let answer = stack.send(&post).await;
    assert_eq!((answer.status, answer.header("allow")), (405, Some("POST")));

    // Credentials: missing, wrong user, wrong password, malformed.
    let mut post = Post::form(USER, PASSWORD, good.clone());
    post.basic = None;
    let answer = stack.send(&post).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("www-authenticate"),
        Some("Basic realm=\"aljex-sync\"")
    );
    assert_eq!(
        stack
            .send(&Post::form("someone", PASSWORD, good.clone()))
            .await
            .status,
        401
    );
    assert_eq!(
        stack
            .send(&Post::form(USER, "not-the-password", good.clone()))
            .await
            .status,
        401
    );
    assert!(
        rejections_with(&stack.db, &mark).await.is_empty(),
        "unauthenticated posts are never stored"
    );

    // Authenticated but refused: each is recorded with its body.
    let mut post = Post::form(USER, PASSWORD, good.clone());
    post.content_type = Some("text/plain".into());
    assert_eq!(stack.send(&post).await.status, 415);
    let big = format!("{good}&pad={}", "x".repeat(5000));
    let answer = stack.post_form(big).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    let cases = [
        (format!("web_sync_table_name=loads%22%3B+drop+table+x%3B+--&web_sync_action=create&id=1&n={mark}"), 400, "bad table name"),
        (format!("web_sync_table_name=loads&web_sync_action=explode&id=1&n={mark}"), 400, "unknown web_sync_action"),
        (format!("web_sync_table_name=loads&web_sync_action=create&n={mark}"), 400, "keyed by id"),
        (format!("web_sync_action=create&id=1&n={mark}"), 400, "missing web_sync_table_name"),
        (format!("web_sync_table_name=loads&web_sync_action=create&id=1&bad-name={mark}"), 400, "bad field name"),
    ];
    for (body, status, reason) in &cases {
        let answer = stack.post_form(body.clone()).await;
        assert_eq!(answer.status, *status, "{body}: {}", answer.body);
        assert!(answer.body.contains(reason), "{body}: {}", answer.body);
    }
    let empty = stack.post_form(Vec::new()).await;
    assert_eq!(empty.status, 400, "{}", empty.body);

    let recorded = rejections_with(&stack.db, &mark).await;
    let statuses: Vec<Option<i32>> = recorded.iter().map(|(s, _)| *s).collect();
    // 415 and the four edge 400s carry http_status; the sink's own refusal (no key) has none.
    assert_eq!(
        statuses,
        [Some(415), Some(400), Some(400), None, Some(400), Some(400)],
        "{recorded:?}"
    );
    assert_eq!(
        stack.rows("loads").await,
        0,
        "no refused post reached a mirror table"
    );
    assert!(stack.envoy.counter("wasmcustom.aljex_sync.responses_401") >= 3);
    // No password, credential or Authorization header value in Envoy's log
    // (Envoy's start-up inventory of header names does list "authorization").
    let secrets: Vec<String> = [PASSWORD, "not-the-password"]
        .into_iter()
        .flat_map(|password| {
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
            [password.to_string(), basic]
        })
        .collect();
    let log = stack.envoy.log_text();
    let leaks: Vec<&str> = log
        .lines()
        .filter(|line| {
            secrets.iter().any(|secret| line.contains(secret.as_str()))
                || line.to_lowercase().contains("authorization: ")
        })
        .collect();
    assert!(leaks.is_empty(), "secrets in Envoy's log: {leaks:#?}");
}

#[tokio::test]
async fn an_allowlist_that_excludes_the_client_gets_403() {
    let stack = Stack::start(r#","allowed_networks":["203.0.113.0/24","2001:db8::/32"]"#).await;
    let mark = marker();
    let answer = stack
        .post_form(format!(
            "web_sync_table_name=loads&web_sync_action=create&id=1&n={mark}"
        ))
        .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(stack.rows("loads").await, 0);
    assert!(rejections_with(&stack.db, &mark).await.is_empty());

    let allowed = Stack::start(r#","allowed_networks":["127.0.0.0/8"]"#).await;
    let answer = allowed
        .post_form(fixture("live/01-employee-create.form"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn sink_down_gives_503_and_envoy_recovers_when_it_returns() {
    let mut stack = Stack::start("").await;
    let body = "web_sync_table_name=loads&web_sync_action=update&id=7&status=COVERED";
    assert_eq!(stack.post_form(body).await.status, 200);

    let (port, schema) = (stack.sink.port, stack.sink.schema.clone());
    stack.sink.kill();
    let answer = stack.post_form(body).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.header("retry-after"), Some("5"));
    assert!(stack.envoy.running(), "Envoy stays up");

    stack.sink = SinkProcess::start_on(&database_url(), &schema, port, &[])
        .await
        .unwrap();
    let mut last = None;
    for _ in 0..120 {
        let answer = stack
            .post_form("web_sync_table_name=loads&web_sync_action=update&id=8&status=BACK")
            .await;
        if answer.status == 200 {
            last = Some(answer);
            break;
        }
        assert_eq!(answer.status, 503, "{}", answer.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(last.is_some(), "no 200 within 30 s of the sink's return");
    assert_eq!(
        stack
            .value("SELECT status FROM {s}.loads WHERE id = '8'")
            .await
            .as_deref(),
        Some("BACK")
    );
}

#[tokio::test]
async fn two_hundred_parallel_posts_are_all_applied() {
    // Generous deadlines: the test suite runs many stacks at once on two cores
    // (debug builds); the point here is that every one of the 200 lands.
    let stack = Stack::start_with(r#","sink_timeout_ms":30000"#, &[]).await;
    let template = String::from_utf8(fixture("live/06-load-update-wide.form")).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = stack.client.clone();
        let body = template.replace("&id=50482&", &format!("&id={}&", 100_000 + i));
        tasks.push(tokio::spawn(async move {
            let mut post = Post::form(USER, PASSWORD, body);
            post.http2 = i % 2 == 0;
            client.send(&post).await
        }));
    }
    for task in tasks {
        let answer = task.await.unwrap().unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!(stack.rows("loads").await, 200);
}

#[tokio::test]
async fn a_plaintext_password_in_the_config_is_refused() {
    let url = database_url();
    let sink = SinkProcess::start_on(&url, &unique_schema("edge"), aljex_tests::free_port(), &[])
        .await
        .unwrap();
    let config = format!(r#"{{"credentials":[{{"username":"{USER}","password":"{PASSWORD}"}}]}}"#);
    let err = match EnvoyProcess::start(sink.port, &config) {
        Ok(_) => panic!("Envoy accepted a plaintext password"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("credentials[0].password"), "{err}");
    assert!(
        err.contains("plaintext passwords are not accepted"),
        "{err}"
    );
}

#[test]
fn the_documented_snippet_is_a_valid_envoy_config() {
    let snippet =
        std::fs::read_to_string(aljex_tests::repo_root().join("envoy/snippet.yaml")).unwrap();
    let (listener, cluster) = snippet
        .split_once("# (2)")
        .expect("snippet has the cluster part");
    let indent = |text: &str| {
        text.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let (cert, key) = aljex_tests::envoy::test_certificate();
    let wasm = aljex_tests::envoy::filter_wasm();
    let config = format!(
        "static_resources:\n  listeners:\n{}  clusters:\n{}",
        indent(listener),
        indent(&format!("# (2){cluster}"))
    )
    .replace("/etc/envoy/tls/fullchain.pem", &cert.to_string_lossy())
    .replace("/etc/envoy/tls/privkey.pem", &key.to_string_lossy())
    .replace("/etc/envoy/aljex_filter.wasm", &wasm.to_string_lossy())
    .replace(
        "port_value: 8443",
        &format!("port_value: {}", aljex_tests::free_port()),
    )
    .replace(
        "$argon2id$v=19$m=19456,t=2,p=1$...output of aljex-sink hash-password...",
        password_hash(),
    );
    let (ok, output) = aljex_tests::envoy::envoy_validate(&config);
    assert!(ok, "{output}");
}
