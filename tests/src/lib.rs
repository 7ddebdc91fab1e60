//! Helpers shared by the end-to-end tests: the real `aljex-sink` binary, a
//! real PostgreSQL (from `DATABASE_URL`, or a private cluster), fixtures.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aljex_proto::v1::sync_sink_client::SyncSinkClient;
use anyhow::{bail, Context};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tonic::transport::Channel;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `shared/fixtures`, beside the repository (or `ALJEX_FIXTURES`).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("ALJEX_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("../shared/fixtures"),
    }
}

/// Reads a fixture file.
pub fn fixture(relative: &str) -> Vec<u8> {
    let path = fixtures().join(relative);
    std::fs::read(&path).unwrap_or_else(|err| panic!("fixture {}: {err}", path.display()))
}

/// `DATABASE_URL`, set by `make test` (which starts a throwaway cluster when unset).
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run the tests with `make test`, which provides a PostgreSQL",
    )
}

/// `aljex-sink` with what every test gives it: the database, quiet logs, and a
/// 30 s wait for a database connection. The suite runs several sinks, sshd and
/// PostgreSQL at once on two cores with debug builds, where opening a connection
/// can take longer than the 5 s default (it once failed a one-shot ingest in
/// `.ci/run`). A `--db-acquire-timeout` flag still overrides it.
pub fn sink_command(database_url: &str) -> Command {
    let mut command = Command::new(binary("aljex-sink"));
    command
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn,sqlx=error")
        .env("ALJEX_DB_ACQUIRE_TIMEOUT", "30");
    command
}

/// A pool on `url` for checking results.
pub async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(60))
        .connect(url)
        .await
        .expect("connect to PostgreSQL")
}

/// A schema name no other test uses.
pub fn unique_schema(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t_{prefix}_{}", &id[..12])
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Path of a workspace binary built next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build --bins`, as `make test` does)",
        path.display()
    );
    path
}

/// A running `aljex-sink serve` process, killed on drop.
pub struct SinkProcess {
    child: Child,
    /// gRPC endpoint (`http://127.0.0.1:PORT`).
    pub endpoint: String,
    /// gRPC port.
    pub port: u16,
    /// Mirror schema.
    pub schema: String,
}

impl SinkProcess {
    /// Starts the sink on `database_url` with a fresh schema and waits until it serves.
    pub async fn start(database_url: &str, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_on(
            database_url,
            &unique_schema("sink"),
            free_port(),
            extra_args,
        )
        .await
    }

    /// Starts the sink with the given schema and port and waits until it serves.
    pub async fn start_on(
        database_url: &str,
        schema: &str,
        port: u16,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let mut child = sink_command(database_url)
            .args(["serve", "--grpc-listen", &format!("127.0.0.1:{port}")])
            .args(["--schema", schema, "--metrics-listen", "off"])
            .args(extra_args)
            .stdin(Stdio::null())
            .spawn()
            .context("spawn aljex-sink")?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("aljex-sink exited during start-up: {status}");
            }
            if serving(&endpoint).await {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("aljex-sink did not become healthy in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(SinkProcess {
            child,
            endpoint,
            port,
            schema: schema.to_string(),
        })
    }

    /// A gRPC client of this sink.
    pub async fn client(&self) -> SyncSinkClient<Channel> {
        SyncSinkClient::connect(self.endpoint.clone())
            .await
            .expect("connect to sink")
    }

    /// Sends SIGKILL and waits.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process, for signals and exit status.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when the sink's gRPC health service answers SERVING.
pub async fn serving(endpoint: &str) -> bool {
    let Ok(channel) = Channel::from_shared(endpoint.to_string()) else {
        return false;
    };
    let Ok(channel) = channel
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
    else {
        return false;
    };
    let request = HealthCheckRequest {
        service: "aljex.sync.v1.SyncSink".to_string(),
    };
    matches!(
        HealthClient::new(channel).check(request).await,
        Ok(reply) if reply.get_ref().status == ServingStatus::Serving as i32
    )
}

/// A private PostgreSQL cluster (scripts/pg-cluster) in a temporary folder, stopped on drop.
pub struct PrivateCluster {
    dir: PathBuf,
    /// Its connection URL.
    pub url: String,
}

impl PrivateCluster {
    /// initdb + start on a free port.
    pub fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("aljex-pg-{}", uuid::Uuid::new_v4().simple()));
        let port = free_port();
        let url = run_pg_cluster(&["start", &dir.to_string_lossy(), &port.to_string()])?;
        Ok(PrivateCluster { dir, url })
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&self) -> anyhow::Result<()> {
        run_pg_cluster(&["stop", &self.dir.to_string_lossy()]).map(|_| ())
    }

    /// Starts it again on the same port.
    pub fn restart(&self) -> anyhow::Result<()> {
        let port = std::fs::read_to_string(self.dir.join("port"))?;
        run_pg_cluster(&["start", &self.dir.to_string_lossy(), port.trim()]).map(|_| ())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_pg_cluster(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(repo_root().join("scripts/pg-cluster"))
        .args(args)
        .output()
        .context("run scripts/pg-cluster")?;
    if !output.status.success() {
        bail!(
            "scripts/pg-cluster {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

pub mod envoy;
pub mod https;
pub mod sftp;
