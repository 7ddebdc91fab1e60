//! The life of one request through the filter, as plain Rust behind the
//! [`Host`] trait so every decision is tested natively.
//!
//! Order of checks: path (404), method (405), client network (403),
//! credentials (401), content type (415), declared size (413), then the body:
//! running size (413), empty (400), form and names (400), and finally one gRPC
//! call to the sink whose status becomes the answer.

use std::{net::IpAddr, rc::Rc, time::Duration};

use aljex_proto::{
    change::split_form,
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
        let change = match split_form(&self.body, config.fallback_charset) {
            Ok(change) => change,
            Err(err) => return self.refuse(host, 400, err.to_string()),
        };
        if let Err(err) = change.validate() {
            return self.refuse(host, 400, err.to_string());
        }
        let message = change.encode_request(self.received_at, &self.request_id, &self.client_ip);
        match host.dispatch_grpc(
            &config.sink_cluster,
            APPLY_CHANGE_METHOD,
            &message,
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
        let message = || {
            host.grpc_status_message()
                .map(|m| grpc_message_text(&m))
                .unwrap_or_default()
        };
        match status_code {
            0 => {
                let decoded = host
                    .grpc_response_body(response_size)
                    .and_then(|bytes| ChangeReply::decode(bytes.as_slice()).ok());
                let outcome = decoded
                    .as_ref()
                    .and_then(|reply| Outcome::try_from(reply.outcome).ok())
                    .filter(|outcome| *outcome != Outcome::Unspecified);
                match (decoded, outcome) {
                    (Some(reply), Some(outcome)) => {
                        HttpReply::ok(&reply.table, &reply.key, outcome.label())
                    }
                    _ => {
                        host.log_warn(&format!(
                            "request {}: undecodable or empty reply from the sink",
                            self.request_id
                        ));
                        HttpReply::error(500, "internal error")
                    }
                }
            }
            // INVALID_ARGUMENT: the sink refused (and recorded) the change.
            3 => HttpReply::error(400, &message()),
            // DEADLINE_EXCEEDED, UNAVAILABLE (also transport failures).
            4 | 14 => {
                host.log_warn(&format!(
                    "request {}: sink unavailable (grpc status {status_code}): {}",
                    self.request_id,
                    message()
                ));
                HttpReply::error(503, "the change was not committed; retry later")
            }
            _ => {
                host.log_warn(&format!(
                    "request {}: sink failed (grpc status {status_code}): {}",
                    self.request_id,
                    message()
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

/// The text of a `grpc-message` as Envoy hands it over: percent-decoded (the
/// gRPC wire format), without Envoy's ` {via_upstream}`-style suffix.
pub fn grpc_message_text(raw: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let text = decoded.trim_end();
    let envoy_suffix = text
        .rfind('{')
        .filter(|_| text.ends_with('}'))
        .and_then(|at| {
            let suffix = text.get(at..)?;
            let ours = suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || "{}_".contains(c));
            ours.then(|| text.get(..at)).flatten()
        });
    let text = envoy_suffix.unwrap_or(text);
    text.trim_end().to_string()
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

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::HashMap};

    use aljex_proto::v1::{ChangeRequest, Rejection};
    use base64::Engine;

    use super::*;
    use crate::credentials::tests::argon2_hash;

    const PASSWORD: &str = "dev-password-123";

    #[derive(Default)]
    struct FakeHost {
        headers: HashMap<String, String>,
        source: Option<String>,
        body: Vec<u8>,
        refuse_dispatch: bool,
        grpc_reply: Vec<u8>,
        grpc_message: Option<String>,
        dispatched: RefCell<Vec<(String, Vec<u8>)>>,
        responses: RefCell<Vec<HttpReply>>,
        counters: RefCell<Vec<Counter>>,
        logs: RefCell<Vec<String>>,
    }

    impl Host for FakeHost {
        fn request_header(&self, name: &str) -> Option<String> {
            self.headers.get(name).cloned()
        }
        fn source_address(&self) -> Option<String> {
            self.source.clone()
        }
        fn now_unix_micros(&self) -> i64 {
            1_700_000_000_000_000
        }
        fn request_body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
            self.body.get(start..start + len).map(<[u8]>::to_vec)
        }
        fn dispatch_grpc(
            &self,
            cluster: &str,
            method: &str,
            message: &[u8],
            _timeout: Duration,
        ) -> Result<u32, String> {
            assert_eq!(cluster, "aljex_sink");
            if self.refuse_dispatch {
                return Err("no cluster".into());
            }
            self.dispatched
                .borrow_mut()
                .push((method.to_string(), message.to_vec()));
            Ok(self.dispatched.borrow().len() as u32)
        }
        fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>> {
            self.grpc_reply.get(..size).map(<[u8]>::to_vec)
        }
        fn grpc_status_message(&self) -> Option<String> {
            self.grpc_message.clone()
        }
        fn respond(&self, reply: &HttpReply) {
            self.responses.borrow_mut().push(reply.clone());
        }
        fn count(&self, counter: Counter) {
            self.counters.borrow_mut().push(counter);
        }
        fn log_info(&self, message: &str) {
            self.logs.borrow_mut().push(message.to_string());
        }
        fn log_warn(&self, message: &str) {
            self.logs.borrow_mut().push(message.to_string());
        }
    }

    fn shared(extra: &str) -> Rc<Shared> {
        let hash = argon2_hash(PASSWORD);
        let json = format!(
            r#"{{"credentials":[{{"username":"aljex","password_hash":"{hash}"}}]{extra}}}"#
        );
        Rc::new(Shared::new(FilterConfig::parse(json.as_bytes()).unwrap()))
    }

    fn post(body: &str) -> FakeHost {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("aljex:{PASSWORD}"));
        let headers = [
            (":path", "/aljex/sync"),
            (":method", "POST"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-request-id", "req-1"),
        ];
        let mut host = FakeHost {
            source: Some("203.0.113.7:40000".into()),
            body: body.as_bytes().to_vec(),
            ..FakeHost::default()
        };
        for (name, value) in headers {
            host.headers.insert(name.into(), value.into());
        }
        host.headers
            .insert("authorization".into(), format!("Basic {auth}"));
        host.headers
            .insert("content-length".into(), body.len().to_string());
        host
    }

    /// Runs headers and a one-chunk body; returns the request for gRPC callbacks.
    fn run(host: &FakeHost, shared: Rc<Shared>) -> SyncRequest {
        let mut request = SyncRequest::new(shared);
        if request.on_headers(host, host.body.is_empty()) == Next::Pause
            && host.responses.borrow().is_empty()
        {
            request.on_body(host, host.body.len(), true);
        }
        request
    }

    fn only_response(host: &FakeHost) -> HttpReply {
        let responses = host.responses.borrow();
        assert_eq!(responses.len(), 1, "{responses:?}");
        responses[0].clone()
    }

    const LOAD: &str = "web_sync_table_name=loads&web_sync_action=update&id=50482&status=COVERED";

    #[test]
    fn a_valid_post_becomes_one_apply_change_call() {
        let host = post(LOAD);
        let _request = run(&host, shared(""));
        assert!(
            host.responses.borrow().is_empty(),
            "no answer before the sink replies"
        );
        let dispatched = host.dispatched.borrow();
        assert_eq!(dispatched.len(), 1);
        assert_eq!(dispatched[0].0, "ApplyChange");
        let change = ChangeRequest::decode(dispatched[0].1.as_slice()).unwrap();
        assert_eq!(change.table, "loads");
        assert_eq!(change.action, "update");
        assert_eq!(change.fields.len(), 2);
        assert_eq!(change.request_id, "req-1");
        assert_eq!(change.client_ip, "203.0.113.7");
        assert_eq!(change.received_at_unix_micros, 1_700_000_000_000_000);
    }

    fn sink_answers(
        status_code: u32,
        reply: Option<ChangeReply>,
        message: Option<&str>,
    ) -> HttpReply {
        let mut host = post(LOAD);
        host.grpc_reply = reply.map(|r| r.encode_to_vec()).unwrap_or_default();
        host.grpc_message = message.map(str::to_string);
        let mut request = run(&host, shared(""));
        request.on_grpc_response(&host, 1, status_code, host.grpc_reply.len());
        only_response(&host)
    }

    #[test]
    fn sink_status_maps_to_http() {
        let ok = sink_answers(
            0,
            Some(ChangeReply {
                outcome: Outcome::Applied.into(),
                table: "loads".into(),
                key: "50482".into(),
            }),
            None,
        );
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.body,
            "{\"status\":\"ok\",\"table\":\"loads\",\"key\":\"50482\",\"outcome\":\"applied\"}\n"
        );
        let stale = sink_answers(
            0,
            Some(ChangeReply {
                outcome: Outcome::Stale.into(),
                table: "loads".into(),
                key: "50482".into(),
            }),
            None,
        );
        assert!(stale.body.contains("\"outcome\":\"stale\""));
        let invalid = sink_answers(
            3,
            None,
            Some("table loads is keyed by id but the post has no id field"),
        );
        assert_eq!(invalid.status, 400);
        assert!(invalid.body.contains("keyed by id"));
        for code in [4, 14] {
            let unavailable =
                sink_answers(code, None, Some("database unavailable: pool timed out"));
            assert_eq!(unavailable.status, 503);
            assert!(unavailable
                .headers
                .iter()
                .any(|(n, v)| *n == "retry-after" && v == "5"));
            assert!(
                !unavailable.body.contains("pool"),
                "internal details stay in logs"
            );
        }
        assert_eq!(sink_answers(13, None, None).status, 500);
        assert_eq!(sink_answers(9, None, None).status, 500);
        assert_eq!(
            sink_answers(0, None, None).status,
            500,
            "OK without a reply message"
        );
    }

    #[test]
    fn a_stray_grpc_token_is_ignored() {
        let host = post(LOAD);
        let mut request = run(&host, shared(""));
        request.on_grpc_response(&host, 99, 0, 0);
        assert!(host.responses.borrow().is_empty());
    }

    #[test]
    fn wrong_path_and_method() {
        let mut host = post(LOAD);
        host.headers.insert(":path".into(), "/other".into());
        run(&host, shared(""));
        assert_eq!(only_response(&host).status, 404);

        let mut host = post(LOAD);
        host.headers
            .insert(":path".into(), "/aljex/sync?x=1".into());
        host.headers.insert(":method".into(), "GET".into());
        run(&host, shared(""));
        let reply = only_response(&host);
        assert_eq!(reply.status, 405);
        assert!(reply.headers.contains(&("allow", "POST".into())));
        assert!(host.dispatched.borrow().is_empty());
    }

    #[test]
    fn allowlist_is_checked_before_credentials() {
        let mut host = post(LOAD);
        host.headers.remove("authorization");
        host.source = Some("[2001:db8::5]:443".into());
        run(&host, shared(r#","allowed_networks":["203.0.113.0/24"]"#));
        assert_eq!(only_response(&host).status, 403);

        let mut host = post(LOAD);
        host.source = Some("[2001:db8::5]:443".into());
        run(&host, shared(r#","allowed_networks":["2001:db8::/32"]"#));
        assert!(host.responses.borrow().is_empty());
        assert_eq!(host.dispatched.borrow().len(), 1);
    }

    #[test]
    fn bad_credentials_get_401_and_nothing_is_stored() {
        for authorization in [None, Some("Basic !!!"), Some("Basic YWxqZXg6d3Jvbmc=")] {
            let mut host = post(LOAD);
            match authorization {
                Some(value) => host.headers.insert("authorization".into(), value.into()),
                None => host.headers.remove("authorization"),
            };
            run(&host, shared(""));
            let reply = only_response(&host);
            assert_eq!(reply.status, 401);
            assert!(reply
                .headers
                .iter()
                .any(|(n, v)| *n == "www-authenticate" && v == "Basic realm=\"aljex-sync\""));
            assert!(
                host.dispatched.borrow().is_empty(),
                "unauthenticated traffic is never stored"
            );
            assert!(host
                .logs
                .borrow()
                .iter()
                .all(|l| !l.contains(PASSWORD) && !l.contains("YWxqZXg6")));
        }
    }

    /// Drives a refused authenticated post through its RecordRejection call.
    fn refused(host: &FakeHost, shared: Rc<Shared>) -> (HttpReply, Rejection) {
        let mut request = run(host, shared);
        let rejection = {
            let dispatched = host.dispatched.borrow();
            assert_eq!(dispatched.len(), 1, "one RecordRejection call");
            assert_eq!(dispatched[0].0, "RecordRejection");
            Rejection::decode(dispatched[0].1.as_slice()).unwrap()
        };
        assert!(host.responses.borrow().is_empty(), "answer after recording");
        request.on_grpc_response(host, 1, 0, 0);
        (only_response(host), rejection)
    }

    #[test]
    fn bad_content_type_is_415_and_recorded_with_its_body() {
        let mut host = post(LOAD);
        host.headers
            .insert("content-type".into(), "application/json".into());
        let (reply, rejection) = refused(&host, shared(""));
        assert_eq!(reply.status, 415);
        assert_eq!(rejection.body, LOAD.as_bytes());
        assert_eq!(rejection.http_status, 415);

        let mut host = post(LOAD);
        host.headers.insert(
            "content-type".into(),
            "Application/X-WWW-Form-Urlencoded; charset=windows-1252".into(),
        );
        run(&host, shared(""));
        assert_eq!(host.dispatched.borrow()[0].0, "ApplyChange");
    }

    #[test]
    fn oversized_bodies_are_413() {
        let host = post(LOAD);
        let (reply, rejection) = refused(&host, shared(r#","max_body_bytes":10"#));
        assert_eq!(reply.status, 413);
        assert!(
            rejection.body.is_empty(),
            "refused on content-length before reading"
        );

        // No content-length (chunked): refused by running size, first bytes kept.
        let mut host = post(LOAD);
        host.headers.remove("content-length");
        let (reply, rejection) = refused(&host, shared(r#","max_body_bytes":10"#));
        assert_eq!(reply.status, 413);
        assert_eq!(rejection.body, &LOAD.as_bytes()[..10]);
    }

    #[test]
    fn empty_and_invalid_bodies_are_400_and_recorded() {
        let host = post("");
        let (reply, rejection) = refused(&host, shared(""));
        assert_eq!(
            (reply.status, rejection.reason.as_str()),
            (400, "empty body")
        );

        let body = "web_sync_table_name=loads%22%3B+drop+table+x%3B+--&web_sync_action=create&id=1";
        let (reply, rejection) = refused(&post(body), shared(""));
        assert_eq!(reply.status, 400);
        assert!(reply.body.contains("bad table name"), "{}", reply.body);
        assert_eq!(rejection.body, body.as_bytes());
        assert_eq!(rejection.client_ip, "203.0.113.7");

        let (reply, _) = refused(&post("web_sync_table_name=loads&id=1"), shared(""));
        assert!(reply.body.contains("missing web_sync_action"));
        let (reply, _) = refused(
            &post("web_sync_table_name=loads&web_sync_action=zap&id=1"),
            shared(""),
        );
        assert!(reply.body.contains("unknown web_sync_action"));
    }

    #[test]
    fn a_rejection_the_sink_cannot_record_is_still_answered() {
        let mut host = post("web_sync_table_name=loads");
        host.refuse_dispatch = true;
        run(&host, shared(""));
        assert_eq!(only_response(&host).status, 400);
        assert!(host
            .counters
            .borrow()
            .contains(&Counter::RejectionNotRecorded));

        let mut host = post(LOAD);
        host.refuse_dispatch = true;
        run(&host, shared(""));
        assert_eq!(only_response(&host).status, 503);
    }

    #[test]
    fn body_in_chunks_then_trailers() {
        let host = post(LOAD);
        let mut request = SyncRequest::new(shared(""));
        assert_eq!(request.on_headers(&host, false), Next::Pause);
        assert_eq!(request.on_body(&host, 10, false), Next::Pause);
        assert_eq!(request.on_body(&host, LOAD.len(), false), Next::Pause);
        assert!(host.dispatched.borrow().is_empty());
        assert_eq!(request.on_trailers(&host), Next::Pause);
        let dispatched = host.dispatched.borrow();
        let change = ChangeRequest::decode(dispatched[0].1.as_slice()).unwrap();
        assert_eq!(change.fields.len(), 2);
        assert_eq!(change.fields[1].value, "COVERED");
    }

    #[test]
    fn windows_1252_bodies_use_the_configured_fallback() {
        let body = "web_sync_table_name=customers&web_sync_action=create&id=1&name=CAF%C9";
        let host = post(body);
        run(&host, shared(""));
        let change = ChangeRequest::decode(host.dispatched.borrow()[0].1.as_slice()).unwrap();
        assert_eq!(change.fields[1].value, "CAF\u{c9}");
    }

    #[test]
    fn grpc_messages_are_decoded() {
        assert_eq!(
            grpc_message_text("table%20loads%20is%20keyed%20by%20id{via_upstream}"),
            "table loads is keyed by id"
        );
        assert_eq!(grpc_message_text("plain message"), "plain message");
        assert_eq!(grpc_message_text("100%25 {not ours}"), "100% {not ours}");
        assert_eq!(grpc_message_text("caf%C3%A9"), "caf\u{e9}");
    }

    #[test]
    fn ip_parsing() {
        assert_eq!(
            parse_ip("127.0.0.1:8080"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(parse_ip("[::1]:8080"), Some("::1".parse().unwrap()));
        assert_eq!(
            parse_ip("[2001:db8::1]:1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            parse_ip("2001:db8::1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(parse_ip("garbage"), None);
    }
}
