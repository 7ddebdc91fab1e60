//! Decoding Aljex form bodies.
//!
//! Aljex posts HTML 4.01 forms: `application/x-www-form-urlencoded`, `+` is a
//! space. Parsing follows the WHATWG URL standard's urlencoded parser, except
//! for the last step: a name or value whose bytes are not valid UTF-8 is
//! decoded with a fallback single-byte charset (Windows-1252 by default), so
//! no text is lost or replaced by U+FFFD.

use std::borrow::Cow;

use encoding_rs::Encoding;
use percent_encoding::percent_decode;

/// The charset used when a name or value is not valid UTF-8.
pub fn default_fallback() -> &'static Encoding {
    encoding_rs::WINDOWS_1252
}

/// Looks up a fallback charset by its WHATWG label (`windows-1252`, `latin1`, `iso-8859-15`...).
///
/// Only single-byte, ASCII-compatible charsets are accepted; returns `None` otherwise.
pub fn fallback_for_label(label: &str) -> Option<&'static Encoding> {
    let encoding = Encoding::for_label(label.trim().as_bytes())?;
    let single_byte = encoding.is_single_byte() && encoding.is_ascii_compatible();
    single_byte.then_some(encoding)
}

/// One decoded `name=value` pair; borrows the body where decoding changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormPair<'a> {
    /// Parameter name, decoded.
    pub name: Cow<'a, str>,
    /// Parameter value, decoded.
    pub value: Cow<'a, str>,
    /// True when the name or value was not UTF-8 and the fallback charset was used.
    pub used_fallback: bool,
}

/// Parses an urlencoded body into its pairs, in order. Never fails: every byte
/// sequence has a decoding.
pub fn parse<'a>(body: &'a [u8], fallback: &'static Encoding) -> Vec<FormPair<'a>> {
    pairs(body, fallback).collect()
}

/// [`parse`] as an iterator.
pub fn pairs<'a>(
    body: &'a [u8],
    fallback: &'static Encoding,
) -> impl Iterator<Item = FormPair<'a>> + 'a {
    body.split(|&b| b == b'&')
        .filter(|sequence| !sequence.is_empty())
        .map(move |sequence| {
            let (name, value) = match sequence.iter().position(|&b| b == b'=') {
                Some(at) => (&sequence[..at], &sequence[at + 1..]),
                None => (sequence, &sequence[sequence.len()..]),
            };
            let (name, name_fallback) = decode_component(name, fallback);
            let (value, value_fallback) = decode_component(value, fallback);
            FormPair {
                name,
                value,
                used_fallback: name_fallback || value_fallback,
            }
        })
}

/// `+` to space, percent-decoding, then UTF-8 or the fallback charset.
///
/// Plain UTF-8 text (no `+`, no `%`) is borrowed; otherwise one allocation.
fn decode_component<'a>(raw: &'a [u8], fallback: &'static Encoding) -> (Cow<'a, str>, bool) {
    if !raw.iter().any(|&b| b == b'+' || b == b'%') {
        if let Ok(text) = std::str::from_utf8(raw) {
            return (Cow::Borrowed(text), false);
        }
    }
    let mut bytes = Vec::with_capacity(raw.len());
    // `+` is replaced before percent-decoding (so `%2B` stays a plus); no
    // percent sequence contains `+`, so decoding the pieces between pluses is the same.
    for (index, piece) in raw.split(|&b| b == b'+').enumerate() {
        if index > 0 {
            bytes.push(b' ');
        }
        if piece.contains(&b'%') {
            bytes.extend(percent_decode(piece));
        } else {
            bytes.extend_from_slice(piece);
        }
    }
    match String::from_utf8(bytes) {
        Ok(text) => (Cow::Owned(text), false),
        Err(err) => {
            let (text, _, _) = fallback.decode(err.as_bytes());
            (Cow::Owned(text.into_owned()), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(body: &[u8]) -> Vec<(String, String)> {
        parse(body, default_fallback())
            .into_iter()
            .map(|p| (p.name.into_owned(), p.value.into_owned()))
            .collect()
    }

    fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn aljex_overview_example() {
        let body = b"web_sync_table_name=employees&web_sync_action=create&id=demo&name=Bill+Smith&email=bill.smith%40aljex.com";
        assert_eq!(
            pairs(body),
            owned(&[
                ("web_sync_table_name", "employees"),
                ("web_sync_action", "create"),
                ("id", "demo"),
                ("name", "Bill Smith"),
                ("email", "bill.smith@aljex.com"),
            ])
        );
    }

    // Cases from the WHATWG URL standard's urlencoded parser and its web-platform tests.
    #[test]
    fn whatwg_cases() {
        type Case = (&'static [u8], &'static [(&'static str, &'static str)]);
        let cases: &[Case] = &[
            (b"", &[]),
            (b"&", &[]),
            (b"&&a=b&&", &[("a", "b")]),
            (b"a", &[("a", "")]),
            (b"a=", &[("a", "")]),
            (b"=b", &[("", "b")]),
            (b"=", &[("", "")]),
            (b"a=b=c", &[("a", "b=c")]),
            (b"a==b", &[("a", "=b")]),
            (b"a=b&a=c", &[("a", "b"), ("a", "c")]),
            (b"a+b=c+d", &[("a b", "c d")]),
            (b"a%2Bb=c%2bd", &[("a+b", "c+d")]),
            (b"a%20b=%20", &[("a b", " ")]),
            (b"a=%", &[("a", "%")]),
            (b"a=%4", &[("a", "%4")]),
            (b"a=%zz", &[("a", "%zz")]),
            (b"a=%41%42", &[("a", "AB")]),
            (b"a=%26&b=%3D", &[("a", "&"), ("b", "=")]),
            (b"a=b;c=d", &[("a", "b;c=d")]),
            (b"%E2%82%AC=%C3%A9", &[("\u{20ac}", "\u{e9}")]),
            (b"a=\xE2\x82\xAC", &[("a", "\u{20ac}")]),
            (b"a=%00", &[("a", "\0")]),
        ];
        for (body, expected) in cases {
            assert_eq!(
                pairs(body),
                owned(expected),
                "body {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn invalid_utf8_falls_back_to_windows_1252() {
        let parsed = parse(b"name=CAF%C9+%80&city=ok", default_fallback());
        assert_eq!(parsed[0].value, "CAF\u{c9} \u{20ac}");
        assert!(parsed[0].used_fallback);
        assert_eq!(parsed[1].value, "ok");
        assert!(!parsed[1].used_fallback);
    }

    #[test]
    fn raw_high_bytes_fall_back_too() {
        let parsed = parse(b"n=\x93quoted\x94", default_fallback());
        assert_eq!(parsed[0].value, "\u{201c}quoted\u{201d}");
    }

    #[test]
    fn every_byte_survives_windows_1252() {
        // Windows-1252 in encoding_rs maps every byte to a character, so nothing is lost.
        let body: Vec<u8> = (0x80u8..=0xff)
            .flat_map(|b| format!("%{b:02X}").into_bytes())
            .collect();
        let mut form = b"v=".to_vec();
        form.extend(body);
        let parsed = parse(&form, default_fallback());
        assert_eq!(parsed[0].value.chars().count(), 128);
        assert!(!parsed[0].value.contains('\u{fffd}'));
    }

    #[test]
    fn fallback_labels() {
        assert_eq!(
            fallback_for_label("windows-1252"),
            Some(encoding_rs::WINDOWS_1252)
        );
        assert_eq!(
            fallback_for_label("latin1"),
            Some(encoding_rs::WINDOWS_1252)
        );
        assert_eq!(
            fallback_for_label(" ISO-8859-15 "),
            Some(encoding_rs::ISO_8859_15)
        );
        assert_eq!(fallback_for_label("utf-16le"), None);
        assert_eq!(fallback_for_label("shift_jis"), None);
        assert_eq!(fallback_for_label("nonsense"), None);
    }
}
