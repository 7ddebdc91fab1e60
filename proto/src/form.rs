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
pub fn pairs<'a>(body: &'a [u8], fallback: &'static Encoding) -> Pairs<'a> {
    Pairs {
        body,
        text: std::str::from_utf8(body).ok(),
        next: 0,
        fallback,
    }
}

/// Iterator over the pairs of an urlencoded body (see [`pairs`]).
///
/// Each `&`-separated sequence is scanned once. When the whole body is UTF-8
/// (checked once, up front), a component without `+` or `%` is a slice of it.
#[derive(Debug, Clone)]
pub struct Pairs<'a> {
    body: &'a [u8],
    /// The body as text, when it is valid UTF-8.
    text: Option<&'a str>,
    /// Offset of the next sequence.
    next: usize,
    fallback: &'static Encoding,
}

/// Where one `name=value` sequence splits, found in a single scan.
struct Sequence {
    /// Bytes up to the `&` or the end of the body.
    len: usize,
    /// Offset of the first `=`, if any.
    equals: Option<usize>,
    /// Whether the name, and the value, contain `+` or `%`.
    escaped: [bool; 2],
}

impl Sequence {
    fn scan(bytes: &[u8]) -> Sequence {
        let mut sequence = Sequence {
            len: bytes.len(),
            equals: None,
            escaped: [false; 2],
        };
        for (at, &byte) in bytes.iter().enumerate() {
            match byte {
                b'&' => {
                    sequence.len = at;
                    break;
                }
                b'=' if sequence.equals.is_none() => sequence.equals = Some(at),
                b'+' | b'%' => sequence.escaped[usize::from(sequence.equals.is_some())] = true,
                _ => {}
            }
        }
        sequence
    }
}

impl<'a> Pairs<'a> {
    /// The component at `start..end` of the body, decoded. Without `+` or `%`
    /// (`escaped` false) UTF-8 text is borrowed; anything else is decoded.
    fn component(&self, start: usize, end: usize, escaped: bool) -> (Cow<'a, str>, bool) {
        let raw = self.body.get(start..end).unwrap_or_default();
        if !escaped {
            let text = match self.text {
                Some(text) => text.get(start..end),
                None => std::str::from_utf8(raw).ok(),
            };
            if let Some(text) = text {
                return (Cow::Borrowed(text), false);
            }
        }
        let (text, used_fallback) = decode_component(raw, self.fallback);
        (Cow::Owned(text), used_fallback)
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = FormPair<'a>;

    fn next(&mut self) -> Option<FormPair<'a>> {
        loop {
            let start = self.next;
            let rest = self.body.get(start..).filter(|rest| !rest.is_empty())?;
            let sequence = Sequence::scan(rest);
            self.next = start + sequence.len + 1;
            if sequence.len == 0 {
                continue;
            }
            let end = start + sequence.len;
            let (name_end, value_start) = match sequence.equals {
                Some(at) => (start + at, start + at + 1),
                None => (end, end),
            };
            let (name, name_fallback) = self.component(start, name_end, sequence.escaped[0]);
            let (value, value_fallback) = self.component(value_start, end, sequence.escaped[1]);
            return Some(FormPair {
                name,
                value,
                used_fallback: name_fallback || value_fallback,
            });
        }
    }
}

/// `+` to space, percent-decoding, then UTF-8 or the fallback charset (the
/// flag says it was used).
fn decode_component(raw: &[u8], fallback: &'static Encoding) -> (String, bool) {
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
        Ok(text) => (text, false),
        Err(err) => {
            let (text, _, _) = fallback.decode(err.as_bytes());
            (text.into_owned(), true)
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
    fn plain_components_borrow_the_body() {
        let parsed = parse(b"id=50482&name=Bill+Smith&empty=", default_fallback());
        assert!(matches!(parsed[0].name, Cow::Borrowed("id")));
        assert!(matches!(parsed[0].value, Cow::Borrowed("50482")));
        assert!(matches!(parsed[1].value, Cow::Owned(ref v) if v == "Bill Smith"));
        assert!(matches!(parsed[2].value, Cow::Borrowed("")));
    }

    #[test]
    fn a_body_with_raw_high_bytes_keeps_its_utf8_pairs() {
        // The body as a whole is not UTF-8, so each component is checked on its own.
        let parsed = parse(b"a=\x93q\x94&b=plain&c=\xE2\x82\xAC", default_fallback());
        let pairs: Vec<(&str, &str, bool)> = parsed
            .iter()
            .map(|p| (p.name.as_ref(), p.value.as_ref(), p.used_fallback))
            .collect();
        assert_eq!(
            pairs,
            [
                ("a", "\u{201c}q\u{201d}", true),
                ("b", "plain", false),
                ("c", "\u{20ac}", false)
            ]
        );
        assert!(matches!(parsed[1].value, Cow::Borrowed("plain")));
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
