//! Table and field name rules (design.md section 3).
//!
//! Names are case-folded to ASCII lower case and must then be a plain
//! PostgreSQL identifier: `[a-z_][a-z0-9_]*`, at most 63 bytes. Names starting
//! with `_` are reserved for the receiver's own columns.

use std::{borrow::Cow, fmt};

/// Longest identifier PostgreSQL keeps without truncation.
pub const MAX_NAME_BYTES: usize = 63;

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// Empty after trimming.
    Empty,
    /// Longer than [`MAX_NAME_BYTES`].
    TooLong(String),
    /// A character outside `[a-z0-9_]`, or a leading digit.
    Invalid(String),
    /// Starts with `_` (reserved for internal columns).
    Reserved(String),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "empty name"),
            NameError::TooLong(name) => write!(
                f,
                "name {:?} is longer than {MAX_NAME_BYTES} bytes",
                truncate_for_message(name)
            ),
            NameError::Invalid(name) => write!(
                f,
                "name {:?} is not a valid identifier ([a-z_][a-z0-9_]*)",
                truncate_for_message(name)
            ),
            NameError::Reserved(name) => {
                write!(
                    f,
                    "name {name:?} is reserved (names starting with '_' are internal)"
                )
            }
        }
    }
}

impl std::error::Error for NameError {}

/// Case-folds `raw` and checks it is a usable table or field name.
pub fn normalize_name(raw: &str) -> Result<String, NameError> {
    fold_name(raw).map(Cow::into_owned)
}

/// [`normalize_name`] without a copy when `raw` is already folded (the usual case).
pub fn fold_name(raw: &str) -> Result<Cow<'_, str>, NameError> {
    let bytes = raw.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err(NameError::Empty);
    };
    if bytes.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(raw.to_string()));
    }
    let mut upper = false;
    let mut valid = !first.is_ascii_digit();
    for &byte in bytes {
        match byte {
            b'a'..=b'z' | b'0'..=b'9' | b'_' => {}
            b'A'..=b'Z' => upper = true,
            _ => valid = false,
        }
    }
    if !valid {
        return Err(NameError::Invalid(raw.to_string()));
    }
    if first == b'_' {
        return Err(NameError::Reserved(raw.to_string()));
    }
    Ok(if upper {
        Cow::Owned(raw.to_ascii_lowercase())
    } else {
        Cow::Borrowed(raw)
    })
}

/// Quotes an identifier for SQL (`"name"`, inner quotes doubled).
///
/// Every identifier in generated SQL goes through this, even validated ones.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Shortens untrusted text for error messages (at most 80 characters).
pub fn truncate_for_message(text: &str) -> String {
    const LIMIT: usize = 80;
    if text.chars().count() <= LIMIT {
        text.to_string()
    } else {
        let head: String = text.chars().take(LIMIT).collect();
        format!("{head}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case() {
        assert_eq!(normalize_name("Tord").as_deref(), Ok("tord"));
        assert_eq!(normalize_name("PS19").as_deref(), Ok("ps19"));
        assert_eq!(
            normalize_name("pod_signature_20").as_deref(),
            Ok("pod_signature_20")
        );
        assert_eq!(normalize_name("blank199").as_deref(), Ok("blank199"));
    }

    #[test]
    fn refuses_bad_names() {
        for bad in [
            "loads\"; drop table x; --",
            "1abc",
            "a-b",
            "a b",
            "a.b",
            "caf\u{e9}",
            "\u{130}d", // Turkish dotted I: not ASCII
            "a\0",
            " id",
        ] {
            assert!(
                matches!(normalize_name(bad), Err(NameError::Invalid(_))),
                "{bad:?}"
            );
        }
        assert_eq!(normalize_name(""), Err(NameError::Empty));
        assert!(matches!(
            normalize_name("_received_at"),
            Err(NameError::Reserved(_))
        ));
        assert!(matches!(normalize_name("_"), Err(NameError::Reserved(_))));
    }

    #[test]
    fn folded_names_are_borrowed() {
        assert!(matches!(
            fold_name("pod_signature_20"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(fold_name("Tord"), Ok(Cow::Owned(name)) if name == "tord"));
    }

    #[test]
    fn length_limit_is_63_bytes() {
        assert!(normalize_name(&"a".repeat(63)).is_ok());
        assert!(matches!(
            normalize_name(&"a".repeat(64)),
            Err(NameError::TooLong(_))
        ));
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident("loads"), "\"loads\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn messages_are_bounded() {
        let long = "x".repeat(500);
        let message = NameError::TooLong(long).to_string();
        assert!(message.len() < 150, "{message}");
    }
}
