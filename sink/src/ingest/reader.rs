//! Reading a morning CSV file: one pass for its SHA-256 and encoding, then a
//! streaming parse that validates rows and turns them into COPY data.

use std::{
    fs::File,
    io::{self, BufReader, Read},
    path::Path,
};

use aljex_proto::names::normalize_name;
use encoding_rs::Encoding;
use encoding_rs_io::DecodeReaderBytesBuilder;
use sha2::{Digest, Sha256};

/// What the first pass learns about a file.
#[derive(Debug, Clone)]
pub struct FileFacts {
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// UTF-8, or Windows-1252 when the bytes are not valid UTF-8.
    pub encoding: &'static Encoding,
}

/// Hashes the file and checks whether it is UTF-8, in constant memory.
pub fn inspect(path: &Path) -> io::Result<FileFacts> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut decoder = encoding_rs::UTF_8.new_decoder_without_bom_handling();
    let mut scratch = vec![0u8; 256 * 1024];
    let mut buffer = vec![0u8; 256 * 1024];
    let mut utf8 = true;
    let mut bytes = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        let chunk = &buffer[..read];
        hasher.update(chunk);
        bytes += read as u64;
        if utf8 {
            let mut input = chunk;
            loop {
                let (result, consumed, _) =
                    decoder.decode_to_utf8_without_replacement(input, &mut scratch, read == 0);
                input = &input[consumed..];
                match result {
                    encoding_rs::DecoderResult::InputEmpty => break,
                    encoding_rs::DecoderResult::OutputFull => continue,
                    encoding_rs::DecoderResult::Malformed(_, _) => {
                        utf8 = false;
                        break;
                    }
                }
            }
        }
        if read == 0 {
            break;
        }
    }
    Ok(FileFacts {
        sha256: format!("{:x}", hasher.finalize()),
        bytes,
        encoding: if utf8 {
            encoding_rs::UTF_8
        } else {
            encoding_rs::WINDOWS_1252
        },
    })
}

/// A CSV reader over the file, decoded to UTF-8, BOM removed.
pub fn open_csv(path: &Path, encoding: &'static Encoding) -> io::Result<csv::Reader<impl Read>> {
    let file = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let decoded = DecodeReaderBytesBuilder::new()
        .encoding(Some(encoding))
        .utf8_passthru(true)
        .bom_sniffing(true)
        .strip_bom(true)
        .build(file);
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .buffer_capacity(256 * 1024)
        .from_reader(decoded))
}

/// The header row: folded column names and where the key columns are.
#[derive(Debug, Clone)]
pub struct Header {
    /// Folded column names in file order.
    pub columns: Vec<String>,
    /// Position of each key column.
    pub key_positions: Vec<usize>,
}

impl Header {
    /// The name of the column at `position` (`?` past the end).
    fn column(&self, position: usize) -> &str {
        self.columns.get(position).map_or("?", String::as_str)
    }

    /// Validates the raw header against the name rules and the table key.
    pub fn parse(raw: &csv::StringRecord, key: &[String]) -> Result<Self, String> {
        let mut columns: Vec<String> = Vec::with_capacity(raw.len());
        for (i, name) in raw.iter().enumerate() {
            let folded = normalize_name(name.trim())
                .map_err(|err| format!("header column {}: {err}", i + 1))?;
            if columns.contains(&folded) {
                return Err(format!("header column {}: {folded:?} appears twice", i + 1));
            }
            columns.push(folded);
        }
        if columns.is_empty() {
            return Err("the file has no header row".to_string());
        }
        let key_positions = key
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|c| c == k)
                    .ok_or_else(|| format!("the header has no key column {k:?}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Header {
            columns,
            key_positions,
        })
    }
}

/// A row that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowReject {
    /// 1-based line where the record starts.
    pub line: u64,
    /// Why.
    pub reason: String,
}

/// Checks one record; `Ok` when it can be loaded.
pub fn check_row(header: &Header, record: &csv::StringRecord) -> Result<(), String> {
    if record.len() != header.columns.len() {
        return Err(format!(
            "{} fields where the header has {}",
            record.len(),
            header.columns.len()
        ));
    }
    if let Some(position) = record.iter().position(|field| field.contains('\0')) {
        return Err(format!("NUL byte in column {}", header.column(position)));
    }
    for &position in &header.key_positions {
        if record.get(position).is_none_or(|v| v.trim().is_empty()) {
            return Err(format!("empty key column {}", header.column(position)));
        }
    }
    Ok(())
}

/// A fixed-size Bloom filter of keys: tells, in flat memory whatever the file
/// size, whether a file may repeat a key (then the merge deduplicates in SQL).
/// False positives only cost a sort; there are no false negatives.
pub struct KeyFilter {
    bits: Vec<u64>,
}

impl Default for KeyFilter {
    fn default() -> Self {
        // 2^27 bits = 16 MiB: under 0.1% false positives for 5M keys.
        KeyFilter {
            bits: vec![0; 1 << 21],
        }
    }
}

impl KeyFilter {
    /// Adds a key; true when it may have been added before.
    pub fn insert<'a>(&mut self, parts: impl IntoIterator<Item = &'a str>) -> bool {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .build_hasher();
        for part in parts {
            hasher.write(part.as_bytes());
            hasher.write_u8(0xff);
        }
        let hash = hasher.finish();
        let step = hash.rotate_left(32) | 1;
        let mask = (self.bits.len() as u64 * 64) - 1;
        let mut seen = true;
        for i in 0..4u64 {
            let bit = hash.wrapping_add(i.wrapping_mul(step)) & mask;
            let (word, offset) = ((bit / 64) as usize, bit % 64);
            if let Some(slot) = self.bits.get_mut(word) {
                seen &= *slot & (1 << offset) != 0;
                *slot |= 1 << offset;
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[&str]) -> csv::StringRecord {
        csv::StringRecord::from(fields.to_vec())
    }

    #[test]
    fn key_filter_finds_repeats() {
        let mut filter = KeyFilter::default();
        let mut false_positives = 0;
        for i in 0..100_000 {
            if filter.insert([i.to_string().as_str()]) {
                false_positives += 1;
            }
        }
        assert!(false_positives < 5, "{false_positives}");
        assert!(filter.insert(["42"]));
        assert!(filter.insert(["99999"]));
    }

    #[test]
    fn header_rules() {
        let key = vec!["id".to_string()];
        let header = Header::parse(&record(&["ID", "Name", "Tord"]), &key).unwrap();
        assert_eq!(header.columns, ["id", "name", "tord"]);
        assert_eq!(header.key_positions, [0]);
        assert!(Header::parse(&record(&["name"]), &key)
            .unwrap_err()
            .contains("no key column"));
        assert!(Header::parse(&record(&["id", "Osd", "osd"]), &key)
            .unwrap_err()
            .contains("twice"));
        assert!(Header::parse(&record(&["id", "a-b"]), &key)
            .unwrap_err()
            .contains("column 2"));
    }

    #[test]
    fn row_rules() {
        let header = Header::parse(&record(&["id", "name"]), &["id".to_string()]).unwrap();
        assert!(check_row(&header, &record(&["1", "x"])).is_ok());
        assert!(check_row(&header, &record(&["1"]))
            .unwrap_err()
            .contains("1 fields"));
        assert!(check_row(&header, &record(&["1", "a\0b"]))
            .unwrap_err()
            .contains("NUL"));
        assert!(check_row(&header, &record(&[" ", "x"]))
            .unwrap_err()
            .contains("empty key"));
    }

    #[test]
    fn inspect_detects_encoding_and_hashes() {
        let dir = std::env::temp_dir().join(format!("aljex-inspect-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let utf8 = dir.join("a.csv");
        std::fs::write(&utf8, "id,name\n1,caf\u{e9}\n").unwrap();
        let facts = inspect(&utf8).unwrap();
        assert_eq!(facts.encoding, encoding_rs::UTF_8);
        assert_eq!(facts.bytes, 16);
        assert_eq!(facts.sha256.len(), 64);
        let latin = dir.join("b.csv");
        std::fs::write(&latin, b"id,name\n1,caf\xe9\n").unwrap();
        assert_eq!(inspect(&latin).unwrap().encoding, encoding_rs::WINDOWS_1252);
        let mut reader = open_csv(&latin, encoding_rs::WINDOWS_1252).unwrap();
        let row = reader.records().next().unwrap().unwrap();
        assert_eq!(&row[1], "caf\u{e9}");
        let bom = dir.join("c.csv");
        std::fs::write(&bom, "\u{feff}id,name\r\n1,\"a,\"\"b\"\"\nc\"\r\n").unwrap();
        let mut reader = open_csv(&bom, encoding_rs::UTF_8).unwrap();
        assert_eq!(reader.headers().unwrap().get(0), Some("id"));
        let row = reader.records().next().unwrap().unwrap();
        assert_eq!(&row[1], "a,\"b\"\nc");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
