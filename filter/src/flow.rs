//! The life of one request through the filter, as plain Rust behind the
//! [`Host`] trait so every decision is tested natively.
//!
//! Order of checks: path (404), method (405), client network (403),
//! credentials (401), content type (415), declared size (413), then the body:
//! running size (413), empty (400), form and names (400), and finally one gRPC
//! call to the sink whose status becomes the answer.

use std::{net::IpAddr, rc::Rc, time::Duration};

use aljex_proto::{
    change::{change_from_form, validate},
    v1::{ChangeReply, Outcome, Rejection},
    APPLY_CHANGE_METHOD, RECORD_REJECTION_METHOD,
};
use prost::Message;

use crate::{
    config::FilterConfig,
    credentials::{AuthOutcome, Authenticator},
    reply::{Counter, HttpReply},
};

/// What the filter needs from Envoy. The wasm layer implements it with
/// `Result`-returning hostcalls; tests implement it with a recorder.
pub trait Host {
    /// A request header (or pseudo-header such as `:path`).
    fn request_header(&self, name: &str) -> Option<String>;
    /// Envoy's `source.address` property (`ip:port`, `[v6]:port`).
    fn source_address(&self) -> Option<String>;
    /// Current time, microseconds since the Unix epoch.
    fn now_unix_micros(&self) -> i64;
    /// Bytes `start..start+len` of the buffered request body.
    fn request_body(&self, start: usize, len: usize) -> Option<Vec<u8>>;
    /// Starts a unary gRPC call on the sink; returns its token.
    fn dispatch_grpc(
        &self,
        cluster: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, String>;
    /// The response message of the finished gRPC call.
    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>>;
    /// The status message of the finished gRPC call.
    fn grpc_status_message(&self) -> Option<String>;
    /// Sends the local response.
    fn respond(&self, reply: &HttpReply);
    /// Increments a counter.
    fn count(&self, counter: Counter);
    /// Logs a line (never credentials or bodies).
    fn log_info(&self, message: &str);
    /// Logs a warning.
    fn log_warn(&self, message: &str);
}

/// What to tell Envoy after a callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Let the request go on (only for requests the filter does not own).
    Continue,
    /// Hold the request: the filter answers it itself.
    Pause,
}

/// Configuration and per-VM state shared by all requests.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: FilterConfig,
    /// Credentials and their verified cache.
    pub authenticator: Authenticator,
}

impl Shared {
    /// Shared state for `config`.
    pub fn new(config: FilterConfig) -> Self {
        let authenticator = Authenticator::new(config.credentials.clone());
        Shared {
            config,
            authenticator,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for headers.
    Start,
    /// Authenticated; buffering the body. A refusal decided at the headers
    /// (e.g. 415) is answered once the body is in, so it can be recorded.
    ReadingBody { refusal: Option<(u32, String)> },
    /// `ApplyChange` in flight.
    Applying { token: u32 },
    /// `RecordRejection` in flight; then answer `status` with `reason`.
    Recording {
        token: u32,
        status: u32,
        reason: String,
    },
    /// Answered.
    Done,
}

/// One HTTP request.
#[derive(Debug)]
pub struct SyncRequest {
    shared: Rc<Shared>,
    state: State,
    body: Vec<u8>,
    received_at: i64,
    request_id: String,
    client_ip: String,
}

impl SyncRequest {
    /// A request served with `shared`; `fallback_id` is used when Envoy set no `x-request-id`.
    pub fn new(shared: Rc<Shared>) -> Self {
        SyncRequest {
            shared,
            state: State::Start,
            body: Vec::new(),
            received_at: 0,
            request_id: String::new(),
            client_ip: String::new(),
        }
    }

    /// Headers arrived.
    pub fn on_headers(&mut self, host: &dyn Host, end_of_stream: bool) -> Next {
        self.received_at = host.now_unix_micros();
        self.request_id = host
            .request_header("x-request-id")
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .unwrap_or_else(|| format!("aljex-{}", self.received_at));
        let config = &self.shared.config;

        let path = host.request_header(":path").unwrap_or_default();
        let path = path.split(['?', '#']).next().unwrap_or_default();
        if path != config.path {
            return self.answer(host, HttpReply::error(404, "not found"));
        }
        if host.request_header(":method").as_deref() != Some("POST") {
            return self.answer(host, HttpReply::error(405, "only POST is allowed"));
        }

        let client = host.source_address().and_then(|a| parse_ip(&a));
        self.client_ip = client.map(|ip| ip.to_string()).unwrap_or_default();
        match client {
            Some(ip) if config.allows(ip) => {}
            Some(ip) => {
                host.log_info(&format!(
                    "request {}: client {ip} is not in allowed_networks",
                    self.request_id
                ));
                return self.answer(host, HttpReply::error(403, "client address not allowed"));
            }
            None if config.allowed_networks.is_empty() => {}
            None => {
                host.log_warn(&format!(
                    "request {}: no usable source.address",
                    self.request_id
                ));
                return self.answer(host, HttpReply::error(403, "client address unknown"));
            }
        }

        let authorization = host.request_header("authorization");
        match self.shared.authenticator.check(authorization.as_deref()) {
            AuthOutcome::Accepted(_) => {}
            outcome => {
                host.log_info(&format!(
                    "request {} from {}: credentials {}",
                    self.request_id,
                    self.client_ip,
                    outcome.label()
                ));
                return self.answer(host, HttpReply::error(401, "valid credentials required"));
            }
        }

        let content_type = host.request_header("content-type").unwrap_or_default();
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        let refusal =
            (!media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded")).then(|| {
                (
                    415,
                    "content type must be application/x-www-form-urlencoded".to_string(),
                )
            });

        let declared = host
            .request_header("content-length")
            .and_then(|l| l.trim().parse::<u64>().ok());
        if let Some(length) = declared {
            if length > config.max_body_bytes as u64 {
                let reason = format!(
                    "body of {length} bytes is over the limit of {}",
                    config.max_body_bytes
                );
                return self.refuse(host, 413, reason);
            }
        }
        if end_of_stream {
            let (status, reason) = refusal.unwrap_or((400, "empty body".to_string()));
            return self.refuse(host, status, reason);
        }
        self.state = State::ReadingBody { refusal };
        Next::Pause
    }

    /// Body data arrived; `body_size` is the total buffered so far.
    pub fn on_body(&mut self, host: &dyn Host, body_size: usize, end_of_stream: bool) -> Next {
        if !matches!(self.state, State::ReadingBody { .. }) {
            return self.hold_or_continue();
        }
        let limit = self.shared.config.max_body_bytes;
        if body_size > limit {
            self.take_new_bytes(host, limit);
            let reason =
                format!("body is over the limit of {limit} bytes (first {limit} bytes kept)");
            return self.refuse(host, 413, reason);
        }
        self.take_new_bytes(host, body_size);
        if end_of_stream {
            self.body_complete(host)
        } else {
            Next::Pause
        }
    }

    /// Trailers arrived: the body is complete.
    pub fn on_trailers(&mut self, host: &dyn Host) -> Next {
        if matches!(self.state, State::ReadingBody { .. }) {
            return self.body_complete(host);
        }
        self.hold_or_continue()
    }

    /// A gRPC call finished with `status_code` (gRPC code) and a `response_size`-byte message.
    pub fn on_grpc_response(
        &mut self,
        host: &dyn Host,
        token: u32,
        status_code: u32,
        response_size: usize,
    ) {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Applying { token: expected } if expected == token => {
                let reply = self.apply_reply(host, status_code, response_size);
                self.answer(host, reply);
            }
            State::Recording {
                token: expected,
                status,
                reason,
            } if expected == token => {
                if status_code == 0 {
                    host.count(Counter::RejectionRecorded);
                } else {
                    host.count(Counter::RejectionNotRecorded);
                    host.log_warn(&format!(
                        "request {}: the sink did not record the rejection (grpc status {status_code})",
                        self.request_id
                    ));
                }
                self.answer(host, HttpReply::error(status, &reason));
            }
            other => self.state = other,
        }
    }

    /// Copies body bytes not seen yet (up to `upto`) into our buffer.
    fn take_new_bytes(&mut self, host: &dyn Host, upto: usize) {
        let start = self.body.len();
        if upto > start {
            if let Some(chunk) = host.request_body(start, upto - start) {
                self.body.extend_from_slice(&chunk);
            }
        }
    }

    fn body_complete(&mut self, host: &dyn Host) -> Next {
        let refusal = match &mut self.state {
            State::ReadingBody { refusal } => refusal.take(),
            _ => None,
        };
        if let Some((status, reason)) = refusal {
            return self.refuse(host, status, reason);
        }
        if self.body.is_empty() {
            return self.refuse(host, 400, "empty body".to_string());
        }
        let config = &self.shared.config;
        let mut change = match change_from_form(&self.body, config.fallback_charset) {
            Ok(change) => change,
            Err(err) => return self.refuse(host, 400, err.to_string()),
        };
        if let Err(err) = validate(&change) {
            return self.refuse(host, 400, err.to_string());
        }
        change.received_at_unix_micros = self.received_at;
        change.request_id = self.request_id.clone();
        change.client_ip = self.client_ip.clone();
        match host.dispatch_grpc(
            &config.sink_cluster,
            APPLY_CHANGE_METHOD,
            &change.encode_to_vec(),
            config.sink_timeout,
        ) {
            Ok(token) => {
                self.state = State::Applying { token };
                Next::Pause
            }
            Err(err) => {
                host.log_warn(&format!(
                    "request {}: cannot call the sink: {err}",
                    self.request_id
                ));
                self.answer(
                    host,
                    HttpReply::error(503, "the sink is unavailable; retry later"),
                )
            }
        }
    }

    /// Refuses an authenticated post: record it at the sink, then answer.
    fn refuse(&mut self, host: &dyn Host, status: u32, reason: String) -> Next {
        host.log_info(&format!(
            "request {}: refused with {status}: {reason}",
            self.request_id
        ));
        let rejection = Rejection {
            reason: reason.clone(),
            body: std::mem::take(&mut self.body),
            received_at_unix_micros: self.received_at,
            request_id: self.request_id.clone(),
            client_ip: self.client_ip.clone(),
            http_status: status,
        };
        let config = &self.shared.config;
        match host.dispatch_grpc(
            &config.sink_cluster,
            RECORD_REJECTION_METHOD,
            &rejection.encode_to_vec(),
            config.sink_timeout,
        ) {
            Ok(token) => {
                self.state = State::Recording {
                    token,
                    status,
                    reason,
                };
                Next::Pause
            }
            Err(err) => {
                host.count(Counter::RejectionNotRecorded);
                host.log_warn(&format!(
                    "request {}: cannot record the rejection: {err}",
                    self.request_id
                ));
                self.answer(host, HttpReply::error(status, &reason))
            }
        }
    }

    fn apply_reply(&self, host: &dyn Host, status_code: u32, response_size: usize) -> HttpReply {
        let message = host.grpc_status_message().unwrap_or_default();
        match status_code {
            0 => {
                let decoded = host
                    .grpc_response_body(response_size)
                    .and_then(|bytes| ChangeReply::decode(bytes.as_slice()).ok());
                match decoded {
                    Some(reply) => {
                        let outcome =
                            Outcome::try_from(reply.outcome).unwrap_or(Outcome::Unspecified);
                        HttpReply::ok(&reply.table, &reply.key, outcome_label(outcome))
                    }
                    None => {
                        host.log_warn(&format!(
                            "request {}: undecodable reply from the sink",
                            self.request_id
                        ));
                        HttpReply::error(500, "internal error")
                    }
                }
            }
            // INVALID_ARGUMENT: the sink refused (and recorded) the change.
            3 => HttpReply::error(400, &message),
            // DEADLINE_EXCEEDED, UNAVAILABLE (also transport failures).
            4 | 14 => {
                host.log_warn(&format!(
                    "request {}: sink unavailable (grpc status {status_code}): {message}",
                    self.request_id
                ));
                HttpReply::error(503, "the change was not committed; retry later")
            }
            _ => {
                host.log_warn(&format!(
                    "request {}: sink failed (grpc status {status_code}): {message}",
                    self.request_id
                ));
                HttpReply::error(500, "internal error; the change was not committed")
            }
        }
    }

    fn answer(&mut self, host: &dyn Host, reply: HttpReply) -> Next {
        host.count(Counter::for_status(reply.status));
        host.respond(&reply);
        self.state = State::Done;
        Next::Pause
    }

    fn hold_or_continue(&self) -> Next {
        match self.state {
            State::Start => Next::Continue,
            _ => Next::Pause,
        }
    }
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Applied => "applied",
        Outcome::Deleted => "deleted",
        Outcome::NotFound => "not_found",
        Outcome::Stale => "stale",
        Outcome::Unspecified => "unspecified",
    }
}

/// `ip:port`, `[v6]:port`, or a bare address.
pub fn parse_ip(address: &str) -> Option<IpAddr> {
    let address = address.trim();
    if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    address
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}
