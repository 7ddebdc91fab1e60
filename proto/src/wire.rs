//! The few pieces of the protobuf wire format the filter needs to write a
//! `ChangeRequest` from borrowed text (proto3: fields holding their default
//! value are not written). Tags must be below 16 (one-byte keys).

/// Wire type of integers.
pub const VARINT: u8 = 0;
/// Wire type of strings, bytes and embedded messages.
pub const LENGTH_DELIMITED: u8 = 2;

/// Writes the key of field `tag` (below 16) with `wire_type`.
pub fn put_key(buf: &mut Vec<u8>, tag: u8, wire_type: u8) {
    buf.push((tag << 3) | wire_type);
}

/// Writes `value` as a base-128 varint.
pub fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Bytes [`put_varint`] writes for `value`.
pub fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Writes string field `tag` unless `value` is empty.
pub fn put_string(buf: &mut Vec<u8>, tag: u8, value: &str) {
    if !value.is_empty() {
        put_key(buf, tag, LENGTH_DELIMITED);
        put_varint(buf, value.len() as u64);
        buf.extend_from_slice(value.as_bytes());
    }
}

/// Bytes [`put_string`] writes for `value` (key included).
pub fn string_len(value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        1 + varint_len(value.len() as u64) + value.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), varint_len(value), "{value}");
        }
    }
}
