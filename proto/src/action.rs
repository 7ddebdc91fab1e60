//! Normalising `web_sync_action` (design.md section 3).

use std::fmt;

/// What a change does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Insert or update (Aljex `create`, `update`, `insert`, ...).
    Upsert,
    /// Remove (Aljex `delete`, `Delete`, `deleted`, `D`, ...).
    Delete,
}

impl Action {
    /// Lower-case name used in logs, metrics and the change log.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Upsert => "upsert",
            Action::Delete => "delete",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Trims and case-folds `raw` and maps the spellings real receivers have seen.
/// Returns `None` for anything else (the caller rejects and records it).
pub fn normalize_action(raw: &str) -> Option<Action> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "create" | "created" | "c" | "insert" | "inserted" | "i" | "add" | "new" | "update"
        | "updated" | "u" | "upsert" | "modify" | "modified" | "change" | "changed" => {
            Some(Action::Upsert)
        }
        "delete" | "deleted" | "d" | "remove" | "removed" | "del" => Some(Action::Delete),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_seen_in_the_wild() {
        for upsert in [
            "create",
            "update",
            "insert",
            "UPDATE",
            "Create",
            " update\t",
            "I",
            "u",
        ] {
            assert_eq!(normalize_action(upsert), Some(Action::Upsert), "{upsert:?}");
        }
        for delete in [
            "delete", "Delete", "DELETE", " delete ", "deleted", "D", "d", "remove",
        ] {
            assert_eq!(normalize_action(delete), Some(Action::Delete), "{delete:?}");
        }
    }

    #[test]
    fn unknown_actions_are_refused() {
        for bad in ["", " ", "truncate", "drop", "x", "del ete", "créate"] {
            assert_eq!(normalize_action(bad), None, "{bad:?}");
        }
    }
}
