//! Morning file names: which files to look at, and their normalised stems.

use std::path::Path;

/// True for names an uploader uses while a file is incomplete, and hidden files.
pub fn is_temporary(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name.starts_with('.')
        || name.ends_with('~')
        || [
            ".filepart",
            ".part",
            ".tmp",
            ".partial",
            ".crdownload",
            ".swp",
        ]
        .iter()
        .any(|suffix| lower.ends_with(suffix))
}

/// The stem of `path` normalised: case-folded, runs of anything but letters
/// and digits to `_`, date and time stamps (all-digit parts) dropped. So
/// `Loads.csv`, `loads_20261204.csv` and `PAYMENTS RECEIVED-2026-12-04.csv`
/// give `loads`, `loads` and `payments_received`.
pub fn file_stem(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    normalize_stem(&stem)
}

/// See [`file_stem`].
pub fn normalize_stem(stem: &str) -> String {
    let lowered: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    lowered
        .split('_')
        .filter(|part| !part.is_empty() && !is_stamp(part))
        .collect::<Vec<_>>()
        .join("_")
}

/// `20261204`, `2026`, `0630`, `20261204t063000`: parts of a date or time stamp.
fn is_stamp(part: &str) -> bool {
    let digits_only = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits_only(part)
        || part
            .split_once('t')
            .is_some_and(|(date, time)| digits_only(date) && digits_only(time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems() {
        for (name, stem) in [
            ("Loads.csv", "loads"),
            ("loads_20261204.csv", "loads"),
            ("PAYMENTS RECEIVED-2026-12-04.csv", "payments_received"),
            ("New Purchases 2026-12-04 0630.csv", "new_purchases"),
            ("customers_20261204T063000.CSV", "customers"),
            ("Payable.csv", "payable"),
            ("carriers (1).csv", "carriers"),
        ] {
            assert_eq!(file_stem(Path::new(name)), stem, "{name}");
        }
    }

    #[test]
    fn temporary_names() {
        for name in [
            ".hidden.csv",
            "loads.csv.filepart",
            "loads.csv.part",
            "x.TMP",
            "loads.csv~",
        ] {
            assert!(is_temporary(name), "{name}");
        }
        for name in ["loads.csv", "Payments Received.csv", "tmp.csv"] {
            assert!(!is_temporary(name), "{name}");
        }
    }
}
