//! `aljex-sink`: the command-line entry point.

use std::process::ExitCode;

use aljex_sink::{hash_password, ingest, send, serve};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

// Every change decodes, validates and re-encodes hundreds of small strings;
// mimalloc serves that pattern with less CPU than glibc's malloc (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Receives Aljex data sync into PostgreSQL.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "ALJEX_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Threads running the async work (gRPC, PostgreSQL I/O). One is the default: the
    /// sink's share of a change is a fraction of PostgreSQL's, CSV parsing runs on
    /// separate blocking threads, and one event loop saves cross-thread wake-ups
    /// (BENCHMARKS.md). Raise it if the sink keeps a core busy.
    #[arg(long, global = true, env = "ALJEX_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: u16,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC sink service.
    Serve(serve::ServeArgs),
    /// Apply captured form bodies through a running sink.
    Send(send::SendArgs),
    /// Ingest morning CSV files once (the same code path as the inbox watcher).
    Ingest(ingest::cli::IngestArgs),
    /// Print the argon2id hash of a password (read from stdin or a prompt) for the filter config.
    HashPassword,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(cli.worker_threads))
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(async {
            match cli.command {
                Command::Serve(args) => serve::serve(args).await.map(|()| 0),
                Command::Send(args) => send::send(args).await,
                Command::Ingest(args) => ingest::cli::run(args).await,
                Command::HashPassword => hash_password::hash_password().map(|()| 0),
            }
        }),
        Err(err) => Err(anyhow::Error::new(err).context("cannot start the async runtime")),
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
