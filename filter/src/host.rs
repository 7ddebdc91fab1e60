//! The thin layer between Envoy and [`crate::flow`]: proxy-wasm contexts and a
//! [`Host`] made of `Result`-returning hostcalls. Nothing here panics.

use std::{
    rc::Rc,
    time::{Duration, UNIX_EPOCH},
};

use aljex_proto::SERVICE_NAME;
use proxy_wasm::{
    hostcalls,
    traits::{Context, HttpContext, RootContext},
    types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType},
};

use crate::{
    config::FilterConfig,
    flow::{Host, Next, Shared, SyncRequest},
    reply::{Counter, HttpReply},
};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("aljex-sync filter panicked: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(SyncRoot::default()) });
}}

/// Counter ids defined in Envoy, by [`Counter::index`].
type MetricIds = Rc<Vec<Option<u32>>>;

#[derive(Default)]
struct SyncRoot {
    shared: Option<Rc<Shared>>,
    metrics: MetricIds,
}

impl Context for SyncRoot {}

impl RootContext for SyncRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        match FilterConfig::parse(&bytes) {
            Ok(config) => {
                let _ = hostcalls::log(
                    LogLevel::Info,
                    &format!(
                        "aljex-sync filter configured: path {}, {} credential(s), {} allowed network(s), sink cluster {}",
                        config.path,
                        config.credentials.len(),
                        config.allowed_networks.len(),
                        config.sink_cluster
                    ),
                );
                self.metrics = Rc::new(
                    Counter::ALL
                        .iter()
                        .map(|c| hostcalls::define_metric(MetricType::Counter, c.name()).ok())
                        .collect(),
                );
                self.shared = Some(Rc::new(Shared::new(config)));
                true
            }
            Err(err) => {
                let _ = hostcalls::log(LogLevel::Critical, &err.to_string());
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(SyncHttp {
            request: SyncRequest::new(shared),
            host: EnvoyHost {
                metrics: self.metrics.clone(),
            },
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct SyncHttp {
    request: SyncRequest,
    host: EnvoyHost,
}

fn action(next: Next) -> Action {
    match next {
        Next::Continue => Action::Continue,
        Next::Pause => Action::Pause,
    }
}

impl Context for SyncHttp {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.request
            .on_grpc_response(&self.host, token_id, status_code, response_size);
    }
}

impl HttpContext for SyncHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.request.on_headers(&self.host, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.request.on_body(&self.host, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        action(self.request.on_trailers(&self.host))
    }
}

struct EnvoyHost {
    metrics: MetricIds,
}

impl Host for EnvoyHost {
    fn request_header(&self, name: &str) -> Option<String> {
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn source_address(&self) -> Option<String> {
        hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes).ok())
    }

    fn now_unix_micros(&self) -> i64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|now| now.duration_since(UNIX_EPOCH).ok())
            .and_then(|since| i64::try_from(since.as_micros()).ok())
            .unwrap_or(0)
    }

    fn request_body(&self, start: usize, len: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, start, len)
            .ok()
            .flatten()
    }

    fn dispatch_grpc(
        &self,
        cluster: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, String> {
        hostcalls::dispatch_grpc_call(
            cluster,
            SERVICE_NAME,
            method,
            Vec::new(),
            Some(message),
            timeout,
        )
        .map_err(|status| format!("dispatch_grpc_call to cluster {cluster} failed: {status:?}"))
    }

    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>> {
        if size == 0 {
            return Some(Vec::new());
        }
        hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, size)
            .ok()
            .flatten()
    }

    fn grpc_status_message(&self) -> Option<String> {
        hostcalls::get_grpc_status()
            .ok()
            .and_then(|(_, message)| message)
    }

    fn respond(&self, reply: &HttpReply) {
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(reply.headers.iter().map(|(n, v)| (*n, v.as_str())));
        if let Err(status) =
            hostcalls::send_http_response(reply.status, headers, Some(reply.body.as_bytes()))
        {
            self.log_warn(&format!("cannot send the local response: {status:?}"));
        }
    }

    fn count(&self, counter: Counter) {
        if let Some(Some(id)) = self.metrics.get(counter.index()) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }

    fn log_info(&self, message: &str) {
        let _ = hostcalls::log(LogLevel::Info, message);
    }

    fn log_warn(&self, message: &str) {
        let _ = hostcalls::log(LogLevel::Warn, message);
    }
}
