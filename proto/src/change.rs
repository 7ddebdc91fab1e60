//! From an Aljex post to a validated change: the envelope (`web_sync_table_name`,
//! `web_sync_action`) and the name rules, shared by the filter and the sink.

use std::{borrow::Cow, collections::HashSet, fmt};

use encoding_rs::Encoding;

use foldhash::fast::RandomState;

use crate::{
    action::{normalize_action, Action},
    form::{self, FormPair},
    names::{fold_name, normalize_name, truncate_for_message, NameError},
    v1::{ChangeRequest, Field},
    wire::{put_key, put_string, put_varint, string_len, varint_len, LENGTH_DELIMITED, VARINT},
};

/// Form parameter naming the table.
pub const TABLE_PARAM: &str = "web_sync_table_name";
/// Form parameter naming the action.
pub const ACTION_PARAM: &str = "web_sync_action";
/// Most fields one change may carry (PostgreSQL allows 1,600 columns per table).
pub const MAX_FIELDS: usize = 1_500;

/// Why a post is not a valid change. `Display` gives a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    /// No `web_sync_table_name` parameter, or it is empty.
    MissingTable,
    /// No `web_sync_action` parameter, or it is empty.
    MissingAction,
    /// An envelope parameter appears more than once.
    RepeatedEnvelope(&'static str),
    /// The table name breaks the name rules.
    BadTable(NameError),
    /// The action is not a known spelling.
    UnknownAction(String),
    /// A field name breaks the name rules.
    BadField(NameError),
    /// Two fields have the same name after case folding.
    DuplicateField {
        /// The folded name.
        name: String,
        /// The first spelling seen.
        first: String,
        /// The second spelling seen.
        second: String,
    },
    /// More than [`MAX_FIELDS`] fields.
    TooManyFields(usize),
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::MissingTable => write!(f, "missing {TABLE_PARAM}"),
            ChangeError::MissingAction => write!(f, "missing {ACTION_PARAM}"),
            ChangeError::RepeatedEnvelope(param) => write!(f, "{param} appears more than once"),
            ChangeError::BadTable(err) => write!(f, "bad table name: {err}"),
            ChangeError::UnknownAction(raw) => write!(
                f,
                "unknown {ACTION_PARAM} {:?} (expected create, update or delete)",
                truncate_for_message(raw)
            ),
            ChangeError::BadField(err) => write!(f, "bad field name: {err}"),
            ChangeError::DuplicateField {
                name,
                first,
                second,
            } => write!(
                f,
                "field {name:?} appears twice after case folding ({first:?} and {second:?})"
            ),
            ChangeError::TooManyFields(count) => {
                write!(f, "{count} fields is more than the limit of {MAX_FIELDS}")
            }
        }
    }
}

impl std::error::Error for ChangeError {}

/// A post split into its envelope and fields, borrowing the body wherever
/// decoding changed nothing. The envelope is checked; names are not (see [`FormChange::validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormChange<'a> {
    /// `web_sync_table_name` as received.
    pub table: Cow<'a, str>,
    /// `web_sync_action` as received.
    pub action: Cow<'a, str>,
    /// Every other parameter, in order.
    pub fields: Vec<FormPair<'a>>,
}

/// Splits a form body into envelope and fields; fails on a missing, empty or repeated envelope parameter.
pub fn split_form<'a>(
    body: &'a [u8],
    fallback: &'static Encoding,
) -> Result<FormChange<'a>, ChangeError> {
    let mut table = None;
    let mut action = None;
    let mut fields = Vec::with_capacity(count_byte(body, b'&') + 1);
    for pair in form::pairs(body, fallback) {
        let slot = if pair.name.eq_ignore_ascii_case(TABLE_PARAM) {
            Some((&mut table, TABLE_PARAM))
        } else if pair.name.eq_ignore_ascii_case(ACTION_PARAM) {
            Some((&mut action, ACTION_PARAM))
        } else {
            None
        };
        match slot {
            Some((slot, param)) => {
                if slot.replace(pair.value).is_some() {
                    return Err(ChangeError::RepeatedEnvelope(param));
                }
            }
            None => fields.push(pair),
        }
    }
    let table = table
        .filter(|t| !t.trim().is_empty())
        .ok_or(ChangeError::MissingTable)?;
    let action = action
        .filter(|a| !a.trim().is_empty())
        .ok_or(ChangeError::MissingAction)?;
    Ok(FormChange {
        table,
        action,
        fields,
    })
}

/// How often `needle` occurs in `bytes`; counts in bytes, 255 at a time, which compilers vectorise well.
fn count_byte(bytes: &[u8], needle: u8) -> usize {
    bytes
        .chunks(255)
        .map(|chunk| chunk.iter().fold(0u8, |n, &b| n + u8::from(b == needle)))
        .map(usize::from)
        .sum()
}

impl<'a> FormChange<'a> {
    /// Applies the name and action rules, as [`validate`] does for a request.
    pub fn validate(&self) -> Result<ValidChange<'_>, ChangeError> {
        validate_parts(&self.table, &self.action, &self.fields)
    }

    /// The change as a [`ChangeRequest`] (receive time, request id and client IP left empty).
    pub fn into_request(self) -> ChangeRequest {
        ChangeRequest {
            table: self.table.into_owned(),
            action: self.action.into_owned(),
            fields: self
                .fields
                .into_iter()
                .map(|pair| Field {
                    name: pair.name.into_owned(),
                    value: pair.value.into_owned(),
                })
                .collect(),
            ..ChangeRequest::default()
        }
    }

    /// The protobuf encoding of the [`ChangeRequest`] for this change, written
    /// straight from the borrowed text: the same bytes as building the request
    /// and calling `encode_to_vec`, without copying every name and value first
    /// (field numbers as in `sync.proto`; a test compares with prost's encoding).
    pub fn encode_request(
        &self,
        received_at_unix_micros: i64,
        request_id: &str,
        client_ip: &str,
    ) -> Vec<u8> {
        let field_len = |pair: &FormPair| string_len(&pair.name) + string_len(&pair.value);
        let fields_len: usize = self
            .fields
            .iter()
            .map(|pair| {
                let len = field_len(pair);
                1 + varint_len(len as u64) + len
            })
            .sum();
        let mut buf = Vec::with_capacity(
            string_len(&self.table)
                + string_len(&self.action)
                + fields_len
                + 1
                + varint_len(received_at_unix_micros as u64)
                + string_len(request_id)
                + string_len(client_ip),
        );
        put_string(&mut buf, 1, &self.table);
        put_string(&mut buf, 2, &self.action);
        for pair in &self.fields {
            put_key(&mut buf, 3, LENGTH_DELIMITED);
            put_varint(&mut buf, field_len(pair) as u64);
            put_string(&mut buf, 1, &pair.name);
            put_string(&mut buf, 2, &pair.value);
        }
        if received_at_unix_micros != 0 {
            put_key(&mut buf, 4, VARINT);
            put_varint(&mut buf, received_at_unix_micros as u64);
        }
        put_string(&mut buf, 5, request_id);
        put_string(&mut buf, 6, client_ip);
        buf
    }
}

/// Splits a form body into a [`ChangeRequest`]: the envelope parameters become
/// `table` and `action` (as received), every other parameter a field in order.
///
/// Checks only the envelope; names are checked by [`validate`]. The caller
/// fills in receive time, request id and client IP.
pub fn change_from_form(
    body: &[u8],
    fallback: &'static Encoding,
) -> Result<ChangeRequest, ChangeError> {
    split_form(body, fallback).map(FormChange::into_request)
}

/// A change whose names and action passed the shared rules. Borrows the
/// request's text: only names that needed case folding are copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidChange<'a> {
    /// Folded table name.
    pub table: String,
    /// Normalised action.
    pub action: Action,
    /// Fields (folded name, value) in the order received; names are unique.
    pub fields: Vec<(Cow<'a, str>, &'a str)>,
}

impl ValidChange<'_> {
    /// The value of a (folded) field name.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// The folded field names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.fields.iter().map(|(n, _)| n.as_ref()).collect()
    }
}

/// Applies the name and action rules of design.md section 3 to a change.
pub fn validate(change: &ChangeRequest) -> Result<ValidChange<'_>, ChangeError> {
    validate_parts(&change.table, &change.action, &change.fields)
}

/// A received name and value, whichever type carries them.
trait NamedValue {
    fn name(&self) -> &str;
    fn value(&self) -> &str;
}

impl NamedValue for Field {
    fn name(&self) -> &str {
        &self.name
    }
    fn value(&self) -> &str {
        &self.value
    }
}

impl NamedValue for FormPair<'_> {
    fn name(&self) -> &str {
        &self.name
    }
    fn value(&self) -> &str {
        &self.value
    }
}

fn validate_parts<'a>(
    table: &str,
    action: &str,
    fields: &'a [impl NamedValue],
) -> Result<ValidChange<'a>, ChangeError> {
    if table.trim().is_empty() {
        return Err(ChangeError::MissingTable);
    }
    let table = normalize_name(table).map_err(ChangeError::BadTable)?;
    if action.trim().is_empty() {
        return Err(ChangeError::MissingAction);
    }
    let action =
        normalize_action(action).ok_or_else(|| ChangeError::UnknownAction(action.to_string()))?;
    if fields.len() > MAX_FIELDS {
        return Err(ChangeError::TooManyFields(fields.len()));
    }
    let mut folded = Vec::with_capacity(fields.len());
    for field in fields {
        let name = fold_name(field.name()).map_err(ChangeError::BadField)?;
        folded.push((name, field.value()));
    }
    let mut seen: HashSet<&str, RandomState> =
        HashSet::with_capacity_and_hasher(folded.len(), RandomState::default());
    for (index, (name, _)) in folded.iter().enumerate() {
        if !seen.insert(name.as_ref()) {
            let first = folded.iter().position(|(n, _)| n == name).unwrap_or(index);
            let spelling = |at: usize| fields.get(at).map(|f| f.name().to_string());
            return Err(ChangeError::DuplicateField {
                name: name.to_string(),
                first: spelling(first).unwrap_or_default(),
                second: spelling(index).unwrap_or_default(),
            });
        }
    }
    Ok(ValidChange {
        table,
        action,
        fields: folded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::form::default_fallback;

    /// A validated change with its text copied out, for assertions.
    #[derive(Debug, PartialEq)]
    struct Parsed {
        table: String,
        action: Action,
        fields: Vec<(String, String)>,
    }

    impl Parsed {
        fn value(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    fn parse(body: &str) -> Result<Parsed, ChangeError> {
        let request = change_from_form(body.as_bytes(), default_fallback())?;
        let change = validate(&request)?;
        Ok(Parsed {
            table: change.table,
            action: change.action,
            fields: change
                .fields
                .into_iter()
                .map(|(n, v)| (n.into_owned(), v.to_string()))
                .collect(),
        })
    }

    #[test]
    fn overview_example() {
        let change = parse("web_sync_table_name=employees&web_sync_action=create&id=demo&name=Bill+Smith&phone=7323578700").unwrap();
        assert_eq!(change.table, "employees");
        assert_eq!(change.action, Action::Upsert);
        assert_eq!(change.value("id"), Some("demo"));
        assert_eq!(change.value("name"), Some("Bill Smith"));
        assert_eq!(change.fields.len(), 3);
    }

    #[test]
    fn envelope_can_come_anywhere_and_keeps_field_order() {
        let request = change_from_form(
            b"b=2&web_sync_action=Delete&a=1&web_sync_table_name=Spots",
            default_fallback(),
        )
        .unwrap();
        assert_eq!(request.table, "Spots");
        assert_eq!(request.action, "Delete");
        let names: Vec<_> = request.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        let change = validate(&request).unwrap();
        assert_eq!(change.table, "spots");
        assert_eq!(change.action, Action::Delete);
    }

    #[test]
    fn empty_values_stay_empty() {
        let change =
            parse("web_sync_table_name=t&web_sync_action=update&id=1&address2=&zip=07072").unwrap();
        assert_eq!(change.value("address2"), Some(""));
        assert_eq!(change.value("zip"), Some("07072"));
    }

    #[test]
    fn envelope_errors() {
        assert_eq!(
            parse("web_sync_action=create&id=1"),
            Err(ChangeError::MissingTable)
        );
        assert_eq!(
            parse("web_sync_table_name=&web_sync_action=create"),
            Err(ChangeError::MissingTable)
        );
        assert_eq!(
            parse("web_sync_table_name=t&id=1"),
            Err(ChangeError::MissingAction)
        );
        assert_eq!(
            parse("web_sync_table_name=t&web_sync_action=+&id=1"),
            Err(ChangeError::MissingAction)
        );
        assert_eq!(
            parse("web_sync_table_name=t&web_sync_table_name=u&web_sync_action=create"),
            Err(ChangeError::RepeatedEnvelope(TABLE_PARAM))
        );
        assert!(matches!(parse(""), Err(ChangeError::MissingTable)));
    }

    #[test]
    fn name_errors() {
        assert!(matches!(
            parse("web_sync_table_name=loads%22%3B+drop+table+x%3B+--&web_sync_action=create&id=1"),
            Err(ChangeError::BadTable(NameError::Invalid(_)))
        ));
        assert!(matches!(
            parse("web_sync_table_name=t&web_sync_action=create&id=1&bad-name=2"),
            Err(ChangeError::BadField(NameError::Invalid(_)))
        ));
        assert!(matches!(
            parse("web_sync_table_name=t&web_sync_action=create&id=1&_received_at=2"),
            Err(ChangeError::BadField(NameError::Reserved(_)))
        ));
        assert!(matches!(
            parse("web_sync_table_name=t&web_sync_action=create&id=1&=2"),
            Err(ChangeError::BadField(NameError::Empty))
        ));
        assert_eq!(
            parse("web_sync_table_name=t&web_sync_action=create&Osd=1&osd=2"),
            Err(ChangeError::DuplicateField {
                name: "osd".into(),
                first: "Osd".into(),
                second: "osd".into()
            })
        );
        assert!(matches!(
            parse("web_sync_table_name=t&web_sync_action=create&a=1&a=2"),
            Err(ChangeError::DuplicateField { .. })
        ));
        assert!(matches!(
            parse("web_sync_table_name=t&web_sync_action=truncate&id=1"),
            Err(ChangeError::UnknownAction(_))
        ));
    }

    #[test]
    fn too_many_fields() {
        let mut body = String::from("web_sync_table_name=t&web_sync_action=create");
        for i in 0..=MAX_FIELDS {
            body.push_str(&format!("&f{i}=x"));
        }
        assert_eq!(
            parse(&body),
            Err(ChangeError::TooManyFields(MAX_FIELDS + 1))
        );
    }

    #[test]
    fn messages_are_one_line() {
        let errors = [
            parse("web_sync_table_name=a%0Ab&web_sync_action=create").unwrap_err(),
            parse("web_sync_table_name=t&web_sync_action=x%0Ay").unwrap_err(),
        ];
        for err in errors {
            let message = err.to_string();
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn direct_encoding_matches_prost() {
        use prost::Message;
        let long = "x%C3%A9".repeat(6_000); // 18,000 bytes: a three-byte length varint
        let bodies = [
            "web_sync_table_name=Loads&web_sync_action=update&id=50482&empty=&Name=Bill+Smith"
                .to_string(),
            format!("web_sync_table_name=t&web_sync_action=create&id=1&big={long}&n%C3%A9=%93q%94"),
            "web_sync_table_name=t&web_sync_action=delete".to_string(),
        ];
        for body in &bodies {
            let form = split_form(body.as_bytes(), default_fallback()).unwrap();
            for (micros, request_id, client_ip) in [
                (1_780_000_000_123_456_i64, "req-1", "2001:db8::1"),
                (0, "", ""),
                (-5, "r", "127.0.0.1"),
            ] {
                let mut request = form.clone().into_request();
                request.received_at_unix_micros = micros;
                request.request_id = request_id.to_string();
                request.client_ip = client_ip.to_string();
                let direct = form.encode_request(micros, request_id, client_ip);
                assert_eq!(direct, request.encode_to_vec(), "body {body:.60}");
                assert_eq!(ChangeRequest::decode(direct.as_slice()).unwrap(), request);
            }
        }
    }

    #[test]
    fn form_and_request_validate_alike() {
        let body = b"web_sync_table_name=Spots&web_sync_action=Create&ID=7&note=a+b&Osd=1";
        let form = split_form(body, default_fallback()).unwrap();
        let request = form.clone().into_request();
        assert_eq!(form.validate().unwrap(), validate(&request).unwrap());
        let duplicate = b"web_sync_table_name=t&web_sync_action=create&Osd=1&osd=2";
        let form = split_form(duplicate, default_fallback()).unwrap();
        assert_eq!(
            form.validate().unwrap_err(),
            validate(&form.clone().into_request()).unwrap_err()
        );
    }
}
