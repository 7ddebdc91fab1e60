//! `aljex-sink send`: replays captured form bodies through the gRPC API.

use std::path::PathBuf;

use aljex_proto::{
    change::change_from_form,
    form::fallback_for_label,
    v1::{sync_sink_client::SyncSinkClient, Outcome, Rejection},
};
use anyhow::Context;
use chrono::Utc;

/// Flags of `aljex-sink send`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// gRPC endpoint of the sink.
    #[arg(
        long,
        env = "ALJEX_SINK_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,
    /// Charset for names and values that are not UTF-8.
    #[arg(long, default_value = "windows-1252")]
    pub charset: String,
    /// Form bodies (`application/x-www-form-urlencoded`), one change per file.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Sends every file; prints one line per file. Returns how many failed.
pub async fn send(args: SendArgs) -> anyhow::Result<usize> {
    let fallback = fallback_for_label(&args.charset)
        .with_context(|| format!("--charset: {:?} is not a single-byte charset", args.charset))?;
    let mut client = SyncSinkClient::connect(args.endpoint.clone())
        .await
        .with_context(|| format!("cannot connect to the sink at {}", args.endpoint))?;
    let mut failed = 0;
    for path in &args.files {
        let shown = path.display();
        let body = std::fs::read(path).with_context(|| format!("cannot read {shown}"))?;
        let received_at = Utc::now().timestamp_micros();
        let request_id = format!("send-{}", uuid::Uuid::new_v4());
        match change_from_form(&body, fallback) {
            Ok(mut change) => {
                change.received_at_unix_micros = received_at;
                change.request_id = request_id;
                match client.apply_change(change).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        let outcome =
                            Outcome::try_from(reply.outcome).unwrap_or(Outcome::Unspecified);
                        println!("{shown}: {} {} {}", outcome.label(), reply.table, reply.key);
                    }
                    Err(status) => {
                        failed += 1;
                        println!("{shown}: {:?}: {}", status.code(), status.message());
                    }
                }
            }
            Err(err) => {
                failed += 1;
                let rejection = Rejection {
                    reason: err.to_string(),
                    body,
                    received_at_unix_micros: received_at,
                    request_id,
                    client_ip: String::new(),
                    http_status: 400,
                };
                let stored = client.record_rejection(rejection).await;
                match stored {
                    Ok(reply) => println!(
                        "{shown}: rejected ({err}); recorded as rejection {}",
                        reply.into_inner().id
                    ),
                    Err(status) => println!(
                        "{shown}: rejected ({err}); not recorded: {}",
                        status.message()
                    ),
                }
            }
        }
    }
    Ok(failed)
}
