//! The tables configuration: which columns key each Aljex table and how
//! deletes are applied. Built-in defaults cover the tables in design.md
//! section 4; a TOML file (`--tables FILE`) overrides or extends them.
//!
//! ```toml
//! [defaults]
//! key = ["id"]          # key columns of any table not listed below
//! delete = "hard"       # "hard" removes the row; "soft" sets _deleted_at
//!
//! [tables.spots]
//! key = ["spot_number"]
//!
//! [tables.customers]
//! delete = "soft"
//! mode = "snapshot"     # morning file holds every record ("window": recent ones only)
//! files = ["customers", "customer_list*"]   # file stems (normalised) that feed this table
//! ```

use std::{collections::BTreeMap, fmt, path::Path};

use aljex_proto::names::normalize_name;
use serde::Deserialize;

/// How a delete is applied to a mirror table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    /// The row is removed.
    Hard,
    /// The row stays with `_deleted_at` set; a later upsert revives it.
    Soft,
}

impl DeleteMode {
    /// `hard` or `soft`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteMode::Hard => "hard",
            DeleteMode::Soft => "soft",
        }
    }
}

/// What a morning file of a table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestMode {
    /// Every record: rows absent from the file are removed.
    Snapshot,
    /// Recent records only: nothing is removed.
    Window,
}

impl IngestMode {
    /// `snapshot` or `window`.
    pub fn as_str(self) -> &'static str {
        match self {
            IngestMode::Snapshot => "snapshot",
            IngestMode::Window => "window",
        }
    }
}

/// Settings of one mirror table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    /// Key columns (folded names), at least one.
    pub key: Vec<String>,
    /// What a delete does.
    pub delete: DeleteMode,
    /// What its morning file holds.
    pub mode: IngestMode,
    /// Normalised file stems (`*` wildcard) of morning files for this table.
    pub files: Vec<String>,
    /// A snapshot with fewer rows than this share of the table's rows is refused.
    pub min_snapshot_ratio: f64,
    /// A file with more rejected rows than this share of its rows fails whole.
    pub max_reject_ratio: f64,
}

/// The thirteen Aljex morning files and what they hold.
pub const ALJEX_FILES: [(&str, IngestMode); 13] = [
    ("employees", IngestMode::Snapshot),
    ("customers", IngestMode::Snapshot),
    ("carriers", IngestMode::Snapshot),
    ("loads", IngestMode::Window),
    ("payments", IngestMode::Snapshot),
    ("invoicing", IngestMode::Window),
    ("payments_received", IngestMode::Window),
    ("debits", IngestMode::Window),
    ("credits", IngestMode::Window),
    ("salesreps", IngestMode::Snapshot),
    ("quotes", IngestMode::Window),
    ("payable", IngestMode::Snapshot),
    ("new_purchases", IngestMode::Window),
];

/// Per-table settings with a default for tables not listed.
#[derive(Debug, Clone, PartialEq)]
pub struct TablesConfig {
    defaults: TableSpec,
    tables: BTreeMap<String, TableSpec>,
}

/// A tables configuration that cannot be used; says which key is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TablesConfigError {
    /// Could not read the file.
    #[error("cannot read tables config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped key.
    #[error("tables config {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the TOML parser said, with line and key.
        message: String,
    },
    /// A value breaks a rule.
    #[error("tables config {path}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// Dotted path of the bad key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    key: Option<Vec<String>>,
    delete: Option<DeleteMode>,
    mode: Option<IngestMode>,
    files: Option<Vec<String>>,
    min_snapshot_ratio: Option<f64>,
    max_reject_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    defaults: FileSpec,
    #[serde(default)]
    tables: BTreeMap<String, FileSpec>,
}

impl Default for TablesConfig {
    fn default() -> Self {
        let defaults = TableSpec {
            key: vec!["id".to_string()],
            delete: DeleteMode::Hard,
            mode: IngestMode::Window,
            files: Vec::new(),
            min_snapshot_ratio: 0.5,
            max_reject_ratio: 0.01,
        };
        let mut tables = BTreeMap::new();
        for (name, mode) in ALJEX_FILES {
            let key = match name {
                "invoicing" => "pro_num",
                _ => "id",
            };
            tables.insert(
                name.to_string(),
                TableSpec {
                    key: vec![key.to_string()],
                    mode,
                    files: vec![name.to_string()],
                    ..defaults.clone()
                },
            );
        }
        tables.insert(
            "spots".to_string(),
            TableSpec {
                key: vec!["spot_number".to_string()],
                ..defaults.clone()
            },
        );
        TablesConfig { defaults, tables }
    }
}

impl TablesConfig {
    /// Reads a TOML file over the built-in defaults.
    pub fn from_file(path: &Path) -> Result<Self, TablesConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TablesConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_toml(&text, &shown)
    }

    /// Parses TOML text over the built-in defaults; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, TablesConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|err| TablesConfigError::Parse {
            path: origin.to_string(),
            message: err.to_string().trim().replace('\n', " "),
        })?;
        let invalid = |key: String, message: String| TablesConfigError::Invalid {
            path: origin.to_string(),
            key,
            message,
        };
        let mut config = TablesConfig::default();
        let built_in_default_key = config.defaults.key.clone();
        let (sets_key, sets_delete) = (file.defaults.key.is_some(), file.defaults.delete.is_some());
        let (sets_min, sets_max) = (
            file.defaults.min_snapshot_ratio.is_some(),
            file.defaults.max_reject_ratio.is_some(),
        );
        config.defaults =
            merge(&config.defaults, file.defaults, "defaults").map_err(|(k, m)| invalid(k, m))?;
        // [defaults] also applies to the built-in tables, except what is
        // specific to them (a key other than `id`, the morning mode and files).
        for spec in config.tables.values_mut() {
            if sets_key && spec.key == built_in_default_key {
                spec.key = config.defaults.key.clone();
            }
            if sets_delete {
                spec.delete = config.defaults.delete;
            }
            if sets_min {
                spec.min_snapshot_ratio = config.defaults.min_snapshot_ratio;
            }
            if sets_max {
                spec.max_reject_ratio = config.defaults.max_reject_ratio;
            }
        }
        for (raw_name, spec) in file.tables {
            let name = normalize_name(&raw_name)
                .map_err(|err| invalid(format!("tables.{raw_name}"), err.to_string()))?;
            let base = config
                .tables
                .get(&name)
                .cloned()
                .unwrap_or_else(|| config.defaults.clone());
            let merged = merge(&base, spec, &format!("tables.{raw_name}"))
                .map_err(|(k, m)| invalid(k, m))?;
            config.tables.insert(name, merged);
        }
        Ok(config)
    }

    /// The settings of `table` (a folded name).
    pub fn spec(&self, table: &str) -> &TableSpec {
        self.tables.get(table).unwrap_or(&self.defaults)
    }

    /// Tables with their own settings, for display.
    pub fn listed(&self) -> impl Iterator<Item = (&str, &TableSpec)> {
        self.tables.iter().map(|(name, spec)| (name.as_str(), spec))
    }

    /// The table a morning file feeds, from its normalised stem; `None` when
    /// no table's `files` pattern matches.
    pub fn table_for_file(&self, stem: &str) -> Option<&str> {
        self.tables
            .iter()
            .find(|(_, spec)| {
                spec.files
                    .iter()
                    .any(|pattern| wildcard_match(pattern, stem))
            })
            .map(|(name, _)| name.as_str())
    }
}

fn merge(base: &TableSpec, file: FileSpec, at: &str) -> Result<TableSpec, (String, String)> {
    let key = match file.key {
        None => base.key.clone(),
        Some(columns) if columns.is_empty() => {
            return Err((format!("{at}.key"), "needs at least one column".to_string()))
        }
        Some(columns) => {
            let mut folded = Vec::with_capacity(columns.len());
            for column in columns {
                let name = normalize_name(&column)
                    .map_err(|err| (format!("{at}.key"), err.to_string()))?;
                if folded.contains(&name) {
                    return Err((format!("{at}.key"), format!("column {name:?} listed twice")));
                }
                folded.push(name);
            }
            folded
        }
    };
    let ratio = |value: Option<f64>, name: &str, base: f64| match value {
        None => Ok(base),
        Some(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Some(_) => Err((
            format!("{at}.{name}"),
            "must be between 0 and 1".to_string(),
        )),
    };
    let files = match file.files {
        None => base.files.clone(),
        Some(patterns) => patterns
            .iter()
            .map(|p| {
                let normalised = normalize_file_pattern(p);
                if normalised.is_empty() {
                    Err((format!("{at}.files"), format!("pattern {p:?} is empty")))
                } else {
                    Ok(normalised)
                }
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(TableSpec {
        key,
        delete: file.delete.unwrap_or(base.delete),
        mode: file.mode.unwrap_or(base.mode),
        files,
        min_snapshot_ratio: ratio(
            file.min_snapshot_ratio,
            "min_snapshot_ratio",
            base.min_snapshot_ratio,
        )?,
        max_reject_ratio: ratio(
            file.max_reject_ratio,
            "max_reject_ratio",
            base.max_reject_ratio,
        )?,
    })
}

/// A pattern written like a file stem, normalised like one (`*` kept).
fn normalize_file_pattern(pattern: &str) -> String {
    pattern
        .split('*')
        .map(crate::ingest::names::normalize_stem)
        .collect::<Vec<_>>()
        .join("*")
}

/// `*` matches any run of characters; everything else matches itself.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(mut remaining) = text.strip_prefix(head) else {
                return false;
            };
            if rest.is_empty() {
                return true;
            }
            loop {
                if wildcard_match(rest, remaining) {
                    return true;
                }
                let mut chars = remaining.chars();
                if chars.next().is_none() {
                    return false;
                }
                remaining = chars.as_str();
            }
        }
    }
}

impl fmt::Display for TableSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key ({}), {} delete",
            self.key.join(", "),
            self.delete.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_defaults() {
        let config = TablesConfig::default();
        assert_eq!(config.spec("loads").key, ["id"]);
        assert_eq!(config.spec("spots").key, ["spot_number"]);
        assert_eq!(config.spec("invoicing").key, ["pro_num"]);
        assert_eq!(config.spec("loads").delete, DeleteMode::Hard);
    }

    #[test]
    fn file_overrides_and_extends() {
        let config = TablesConfig::from_toml(
            "[defaults]\ndelete = \"soft\"\n[tables.Customers]\nkey = [\"ID\"]\n[tables.spots]\ndelete = \"hard\"\n[tables.rates]\nkey = [\"lane\", \"carrier\"]\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(config.spec("loads").delete, DeleteMode::Soft);
        assert_eq!(config.spec("customers").key, ["id"]);
        assert_eq!(config.spec("customers").delete, DeleteMode::Soft);
        assert_eq!(config.spec("spots").key, ["spot_number"]);
        assert_eq!(config.spec("spots").delete, DeleteMode::Hard);
        assert_eq!(config.spec("rates").key, ["lane", "carrier"]);
    }

    #[test]
    fn morning_files_map_to_tables() {
        let config = TablesConfig::default();
        assert_eq!(config.table_for_file("loads"), Some("loads"));
        assert_eq!(
            config.table_for_file("payments_received"),
            Some("payments_received")
        );
        assert_eq!(config.table_for_file("spots"), None);
        assert_eq!(config.table_for_file("unknown"), None);
        assert_eq!(config.spec("customers").mode, IngestMode::Snapshot);
        assert_eq!(config.spec("loads").mode, IngestMode::Window);
        assert_eq!(config.spec("invoicing").key, ["pro_num"]);
        let config = TablesConfig::from_toml(
            "[tables.rates]\nfiles = [\"Rate Sheet*\"]\nmode = \"snapshot\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(config.table_for_file("rate_sheet_east"), Some("rates"));
        assert_eq!(config.table_for_file("rate_sheet"), Some("rates"));
        assert_eq!(config.table_for_file("rate"), None);
        let err = TablesConfig::from_toml("[tables.x]\nmin_snapshot_ratio = 2.0\n", "t.toml")
            .unwrap_err();
        assert!(
            err.to_string().contains("tables.x.min_snapshot_ratio"),
            "{err}"
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("a*c", "abbbc"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*", "a"));
        assert!(!wildcard_match("a*c", "abd"));
        assert!(wildcard_match("*_x_*", "a_x_b"));
    }

    #[test]
    fn errors_name_the_key() {
        let err =
            TablesConfig::from_toml("[tables.loads]\nkee = [\"id\"]\n", "t.toml").unwrap_err();
        assert!(err.to_string().contains("kee"), "{err}");
        let err =
            TablesConfig::from_toml("[tables.loads]\ndelete = \"maybe\"\n", "t.toml").unwrap_err();
        assert!(err.to_string().contains("maybe"), "{err}");
        let err = TablesConfig::from_toml("[tables.loads]\nkey = []\n", "t.toml").unwrap_err();
        assert!(err.to_string().contains("tables.loads.key"), "{err}");
        let err = TablesConfig::from_toml("[tables.\"bad-name\"]\n", "t.toml").unwrap_err();
        assert!(err.to_string().contains("tables.bad-name"), "{err}");
        let err = TablesConfig::from_toml("[tables.t]\nkey = [\"_x\"]\n", "t.toml").unwrap_err();
        assert!(err.to_string().contains("tables.t.key"), "{err}");
        let err = TablesConfig::from_toml("[oops]\n", "t.toml").unwrap_err();
        assert!(err.to_string().contains("oops"), "{err}");
    }
}
