//! Plugin configuration: JSON in Envoy's filter config, parsed and validated
//! once in `on_configure`. Every error names the offending key.

use std::time::Duration;

use aljex_proto::form::fallback_for_label;
use encoding_rs::Encoding;
use ipnet::IpNet;
use serde::Deserialize;

use crate::credentials::{Credential, CredentialError};

/// Default sync path.
pub const DEFAULT_PATH: &str = "/aljex/sync";
/// Default body limit: 256 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest body limit accepted (gRPC's default message limit is 4 MiB).
pub const MAX_MAX_BODY_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;
/// Most credentials in one config.
pub const MAX_CREDENTIALS: usize = 64;

/// The validated filter configuration.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    /// Path Aljex posts to (exact match, query string ignored).
    pub path: String,
    /// Accepted users.
    pub credentials: Vec<Credential>,
    /// Client networks allowed to post; empty means any.
    pub allowed_networks: Vec<IpNet>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Envoy cluster of the sink (HTTP/2).
    pub sink_cluster: String,
    /// Deadline of each gRPC call to the sink.
    pub sink_timeout: Duration,
    /// Charset for names and values that are not UTF-8.
    pub fallback_charset: &'static Encoding,
}

/// A configuration Envoy must refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the bad key (`credentials[0].password_hash`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "aljex-sync filter config: key `{}`: {}",
            self.key, self.message
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    credentials: Vec<RawCredential>,
    #[serde(default)]
    allowed_networks: Vec<String>,
    #[serde(default)]
    max_body_bytes: Option<usize>,
    #[serde(default)]
    sink_cluster: Option<String>,
    #[serde(default)]
    sink_timeout_ms: Option<u64>,
    #[serde(default)]
    fallback_charset: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_hash: Option<String>,
    /// Never accepted; present only to give a clear error.
    #[serde(default)]
    password: Option<serde::de::IgnoredAny>,
}

fn error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

impl FilterConfig {
    /// Parses and validates the plugin configuration bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|err| {
            let message = err.to_string();
            // serde names the unknown or mistyped field in its message.
            let key = message
                .split('`')
                .nth(1)
                .filter(|_| message.contains("field"))
                .unwrap_or("(document)")
                .to_string();
            error(key, message)
        })?;

        let path = raw.path.unwrap_or_else(|| DEFAULT_PATH.to_string());
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(error(
                "path",
                format!("{path:?} must be an absolute path without query"),
            ));
        }

        if raw.credentials.is_empty() {
            return Err(error(
                "credentials",
                "at least one username and password_hash is required",
            ));
        }
        if raw.credentials.len() > MAX_CREDENTIALS {
            return Err(error(
                "credentials",
                format!("at most {MAX_CREDENTIALS} credentials"),
            ));
        }
        let mut credentials = Vec::with_capacity(raw.credentials.len());
        for (i, entry) in raw.credentials.into_iter().enumerate() {
            let at = format!("credentials[{i}]");
            if entry.password.is_some() {
                return Err(error(
                    format!("{at}.password"),
                    "plaintext passwords are not accepted; put a PHC hash in password_hash (make one with `aljex-sink hash-password`)",
                ));
            }
            let username = entry
                .username
                .filter(|u| !u.is_empty())
                .ok_or_else(|| error(format!("{at}.username"), "missing or empty"))?;
            if username.contains(':') || username.chars().any(char::is_control) {
                return Err(error(
                    format!("{at}.username"),
                    "must not contain ':' or control characters",
                ));
            }
            let hash = entry
                .password_hash
                .ok_or_else(|| error(format!("{at}.password_hash"), "missing"))?;
            let credential = Credential::new(username, &hash).map_err(|err| match err {
                CredentialError::NotPhc(message) | CredentialError::Algorithm(message) => {
                    error(format!("{at}.password_hash"), message)
                }
            })?;
            if credentials
                .iter()
                .any(|c: &Credential| c.username() == credential.username())
            {
                return Err(error(format!("{at}.username"), "listed twice"));
            }
            credentials.push(credential);
        }

        let mut allowed_networks = Vec::with_capacity(raw.allowed_networks.len());
        for (i, network) in raw.allowed_networks.iter().enumerate() {
            let parsed = network
                .parse::<IpNet>()
                .or_else(|_| network.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    error(
                        format!("allowed_networks[{i}]"),
                        format!("{network:?} is not a CIDR (203.0.113.0/24, 2001:db8::/32) or an address"),
                    )
                })?;
            allowed_networks.push(parsed);
        }

        let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 || max_body_bytes > MAX_MAX_BODY_BYTES {
            return Err(error(
                "max_body_bytes",
                format!("must be between 1 and {MAX_MAX_BODY_BYTES}"),
            ));
        }

        let sink_cluster = raw.sink_cluster.unwrap_or_else(|| "aljex_sink".to_string());
        if sink_cluster.is_empty() {
            return Err(error(
                "sink_cluster",
                "must name the Envoy cluster of the sink",
            ));
        }
        let timeout_ms = raw.sink_timeout_ms.unwrap_or(5_000);
        if !(1..=60_000).contains(&timeout_ms) {
            return Err(error("sink_timeout_ms", "must be between 1 and 60000"));
        }
        let charset = raw
            .fallback_charset
            .unwrap_or_else(|| "windows-1252".to_string());
        let fallback_charset = fallback_for_label(&charset).ok_or_else(|| {
            error(
                "fallback_charset",
                format!("{charset:?} is not a single-byte, ASCII-compatible charset label"),
            )
        })?;

        Ok(FilterConfig {
            path,
            credentials,
            allowed_networks,
            max_body_bytes,
            sink_cluster,
            sink_timeout: Duration::from_millis(timeout_ms),
            fallback_charset,
        })
    }

    /// True when `ip` may post (always, when no networks are configured).
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = canonical(ip);
        self.allowed_networks.is_empty() || self.allowed_networks.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) as IPv4.
fn canonical(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::tests::argon2_hash;

    fn config(json: &str) -> Result<FilterConfig, ConfigError> {
        FilterConfig::parse(json.as_bytes())
    }

    fn with_credential(extra: &str) -> String {
        let hash = argon2_hash("secret");
        format!(r#"{{"credentials":[{{"username":"aljex","password_hash":"{hash}"}}]{extra}}}"#)
    }

    #[test]
    fn defaults() {
        let parsed = config(&with_credential("")).unwrap();
        assert_eq!(parsed.path, "/aljex/sync");
        assert_eq!(parsed.max_body_bytes, 256 * 1024);
        assert_eq!(parsed.sink_cluster, "aljex_sink");
        assert_eq!(parsed.sink_timeout, Duration::from_secs(5));
        assert_eq!(parsed.fallback_charset, encoding_rs::WINDOWS_1252);
        assert!(parsed.allows("198.51.100.7".parse().unwrap()));
    }

    #[test]
    fn networks_v4_v6_and_mapped() {
        let parsed = config(&with_credential(
            r#","allowed_networks":["203.0.113.0/24","2001:db8::/32","127.0.0.1"]"#,
        ))
        .unwrap();
        for ok in [
            "203.0.113.9",
            "2001:db8::1",
            "127.0.0.1",
            "::ffff:203.0.113.200",
        ] {
            assert!(parsed.allows(ok.parse().unwrap()), "{ok}");
        }
        for no in ["203.0.114.1", "2001:db9::1", "127.0.0.2", "::1"] {
            assert!(!parsed.allows(no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let hash = argon2_hash("secret");
        let cases = [
            (r#"{"credentials":[{"username":"a","password":"secret"}]}"#.to_string(), "credentials[0].password"),
            (r#"{"credentials":[]}"#.to_string(), "credentials"),
            (r#"{"credentials":[{"username":"a","password_hash":"secret"}]}"#.to_string(), "credentials[0].password_hash"),
            (r#"{"credentials":[{"username":"a","password_hash":"$2b$10$abcdefghijklmnopqrstuu5Jx0ZbQAbWcUfLMC4dXvtqz8lAG3q6"}]}"#.to_string(), "credentials[0].password_hash"),
            (format!(r#"{{"credentials":[{{"password_hash":"{hash}"}}]}}"#), "credentials[0].username"),
            (format!(r#"{{"credentials":[{{"username":"a:b","password_hash":"{hash}"}}]}}"#), "credentials[0].username"),
            (with_credential(r#","allowed_networks":["10.0.0.0/33"]"#), "allowed_networks[0]"),
            (with_credential(r#","max_body_bytes":0"#), "max_body_bytes"),
            (with_credential(r#","sink_timeout_ms":0"#), "sink_timeout_ms"),
            (with_credential(r#","fallback_charset":"utf-16"#), "(document)"),
            (with_credential(r#","fallback_charset":"utf-16""#), "fallback_charset"),
            (with_credential(r#","path":"sync""#), "path"),
            (with_credential(r#","pathh":"/x""#), "pathh"),
            ("not json".to_string(), "(document)"),
        ];
        for (json, key) in cases {
            let err = config(&json).unwrap_err();
            assert_eq!(err.key, key, "{json}: {err}");
            assert!(!err.to_string().contains("secret\""), "{err}");
        }
    }
}
