//! From an Aljex post to a validated change: the envelope (`web_sync_table_name`,
//! `web_sync_action`) and the name rules, shared by the filter and the sink.

use std::{collections::HashMap, fmt};

use encoding_rs::Encoding;

use crate::{
    action::{normalize_action, Action},
    form,
    names::{normalize_name, truncate_for_message, NameError},
    v1::{ChangeRequest, Field},
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

/// Splits a form body into a [`ChangeRequest`]: the envelope parameters become
/// `table` and `action` (as received), every other parameter a field in order.
///
/// Checks only the envelope; names are checked by [`validate`]. The caller
/// fills in receive time, request id and client IP.
pub fn change_from_form(
    body: &[u8],
    fallback: &'static Encoding,
) -> Result<ChangeRequest, ChangeError> {
    let mut table = None;
    let mut action = None;
    let mut fields = Vec::new();
    for pair in form::parse(body, fallback) {
        let slot = match pair.name.to_ascii_lowercase().as_str() {
            TABLE_PARAM => Some((&mut table, TABLE_PARAM)),
            ACTION_PARAM => Some((&mut action, ACTION_PARAM)),
            _ => None,
        };
        match slot {
            Some((slot, param)) => {
                if slot.replace(pair.value).is_some() {
                    return Err(ChangeError::RepeatedEnvelope(param));
                }
            }
            None => fields.push(Field {
                name: pair.name,
                value: pair.value,
            }),
        }
    }
    let table = table
        .filter(|t| !t.trim().is_empty())
        .ok_or(ChangeError::MissingTable)?;
    let action = action
        .filter(|a| !a.trim().is_empty())
        .ok_or(ChangeError::MissingAction)?;
    Ok(ChangeRequest {
        table,
        action,
        fields,
        ..ChangeRequest::default()
    })
}

/// A change whose names and action passed the shared rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidChange {
    /// Folded table name.
    pub table: String,
    /// Normalised action.
    pub action: Action,
    /// Fields with folded names, in the order received; names are unique.
    pub fields: Vec<(String, String)>,
}

impl ValidChange {
    /// The value of a (folded) field name.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Applies the name and action rules of design.md section 3 to a change.
pub fn validate(change: &ChangeRequest) -> Result<ValidChange, ChangeError> {
    if change.table.trim().is_empty() {
        return Err(ChangeError::MissingTable);
    }
    let table = normalize_name(&change.table).map_err(ChangeError::BadTable)?;
    if change.action.trim().is_empty() {
        return Err(ChangeError::MissingAction);
    }
    let action = normalize_action(&change.action)
        .ok_or_else(|| ChangeError::UnknownAction(change.action.clone()))?;
    if change.fields.len() > MAX_FIELDS {
        return Err(ChangeError::TooManyFields(change.fields.len()));
    }
    let mut seen: HashMap<String, &str> = HashMap::with_capacity(change.fields.len());
    let mut fields = Vec::with_capacity(change.fields.len());
    for field in &change.fields {
        let name = normalize_name(&field.name).map_err(ChangeError::BadField)?;
        if let Some(first) = seen.insert(name.clone(), &field.name) {
            return Err(ChangeError::DuplicateField {
                name,
                first: first.to_string(),
                second: field.name.clone(),
            });
        }
        fields.push((name, field.value.clone()));
    }
    Ok(ValidChange {
        table,
        action,
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::form::default_fallback;

    fn parse(body: &str) -> Result<ValidChange, ChangeError> {
        validate(&change_from_form(body.as_bytes(), default_fallback())?)
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
}
