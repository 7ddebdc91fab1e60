//! HTTP answers of the filter: status, headers and a one-line JSON body.

use serde::Serialize;

#[derive(Serialize)]
struct OkBody<'a> {
    status: &'static str,
    table: &'a str,
    key: &'a str,
    outcome: &'a str,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: &'static str,
    error: &'a str,
}

fn json_line(value: &impl Serialize) -> String {
    let mut line = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string());
    line.push('\n');
    line
}

/// Counters the filter defines in Envoy, one per answer kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// 200: change committed (or found stale).
    Applied,
    /// 404: not the sync path.
    NotFound,
    /// 405: not POST.
    MethodNotAllowed,
    /// 403: client address not allowed.
    Forbidden,
    /// 401: missing, malformed or wrong credentials.
    Unauthorized,
    /// 415: not a form body.
    UnsupportedMediaType,
    /// 413: body over the limit.
    PayloadTooLarge,
    /// 400: bad form, names, action or key.
    BadRequest,
    /// 503: the sink or database is unavailable.
    Unavailable,
    /// 500: anything else.
    InternalError,
    /// A refused post stored by the sink.
    RejectionRecorded,
    /// A refused post the sink could not store.
    RejectionNotRecorded,
}

impl Counter {
    /// Every counter, for defining them at start-up.
    pub const ALL: [Counter; 12] = [
        Counter::Applied,
        Counter::NotFound,
        Counter::MethodNotAllowed,
        Counter::Forbidden,
        Counter::Unauthorized,
        Counter::UnsupportedMediaType,
        Counter::PayloadTooLarge,
        Counter::BadRequest,
        Counter::Unavailable,
        Counter::InternalError,
        Counter::RejectionRecorded,
        Counter::RejectionNotRecorded,
    ];

    /// Metric name in Envoy's stats.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Applied => "aljex_sync.responses_200",
            Counter::NotFound => "aljex_sync.responses_404",
            Counter::MethodNotAllowed => "aljex_sync.responses_405",
            Counter::Forbidden => "aljex_sync.responses_403",
            Counter::Unauthorized => "aljex_sync.responses_401",
            Counter::UnsupportedMediaType => "aljex_sync.responses_415",
            Counter::PayloadTooLarge => "aljex_sync.responses_413",
            Counter::BadRequest => "aljex_sync.responses_400",
            Counter::Unavailable => "aljex_sync.responses_503",
            Counter::InternalError => "aljex_sync.responses_500",
            Counter::RejectionRecorded => "aljex_sync.rejections_recorded",
            Counter::RejectionNotRecorded => "aljex_sync.rejections_not_recorded",
        }
    }

    /// Position in [`Counter::ALL`].
    pub fn index(self) -> usize {
        Counter::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }

    /// The counter of an HTTP status the filter answers with.
    pub fn for_status(status: u32) -> Counter {
        match status {
            200 => Counter::Applied,
            400 => Counter::BadRequest,
            401 => Counter::Unauthorized,
            403 => Counter::Forbidden,
            404 => Counter::NotFound,
            405 => Counter::MethodNotAllowed,
            413 => Counter::PayloadTooLarge,
            415 => Counter::UnsupportedMediaType,
            503 => Counter::Unavailable,
            _ => Counter::InternalError,
        }
    }
}

/// A local response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// HTTP status.
    pub status: u32,
    /// Extra headers (content-type is always JSON).
    pub headers: Vec<(&'static str, String)>,
    /// One JSON line.
    pub body: String,
}

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: &str = "5";

impl HttpReply {
    /// `{"status":"error","error":message}` with `status`.
    pub fn error(status: u32, message: &str) -> Self {
        let mut headers = Vec::new();
        match status {
            401 => headers.push(("www-authenticate", "Basic realm=\"aljex-sync\"".to_string())),
            405 => headers.push(("allow", "POST".to_string())),
            503 => headers.push(("retry-after", RETRY_AFTER_SECONDS.to_string())),
            _ => {}
        }
        HttpReply {
            status,
            headers,
            body: json_line(&ErrorBody {
                status: "error",
                error: message,
            }),
        }
    }

    /// `{"status":"ok","table":..,"key":..,"outcome":..}`.
    pub fn ok(table: &str, key: &str, outcome: &str) -> Self {
        HttpReply {
            status: 200,
            headers: Vec::new(),
            body: json_line(&OkBody {
                status: "ok",
                table,
                key,
                outcome,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_one_json_line() {
        let ok = HttpReply::ok("loads", "50482", "applied");
        assert_eq!(
            ok.body,
            "{\"status\":\"ok\",\"table\":\"loads\",\"key\":\"50482\",\"outcome\":\"applied\"}\n"
        );
        let err = HttpReply::error(400, "bad \"name\"\nsecond");
        assert_eq!(err.body.matches('\n').count(), 1);
        let parsed: serde_json::Value = serde_json::from_str(&err.body).unwrap();
        assert_eq!(parsed["error"], "bad \"name\"\nsecond");
    }

    #[test]
    fn status_headers() {
        assert!(HttpReply::error(401, "x")
            .headers
            .contains(&("www-authenticate", "Basic realm=\"aljex-sync\"".into())));
        assert!(HttpReply::error(405, "x")
            .headers
            .contains(&("allow", "POST".into())));
        assert!(HttpReply::error(503, "x")
            .headers
            .iter()
            .any(|(n, _)| *n == "retry-after"));
    }

    #[test]
    fn counters_are_distinct() {
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(counter.index(), i);
        }
    }
}
