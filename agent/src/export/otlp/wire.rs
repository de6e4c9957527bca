//! The protobuf wire format written directly into one buffer, for spans: building
//! opentelemetry-proto's message structs first (a `String` per attribute key and value,
//! then a clone per send and a drop) cost several times what encoding does.
use prost::encoding::encode_varint;

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

fn key(buf: &mut Vec<u8>, field: u32, wire_type: u64) {
    encode_varint((u64::from(field) << 3) | wire_type, buf);
}

pub fn bytes(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    len_head(buf, field, data.len());
    buf.extend_from_slice(data);
}

/// The head of a length-delimited field (a message) whose `len` bytes the caller writes
/// next: for a large message whose size is known, so that nothing is moved afterwards.
pub fn len_head(buf: &mut Vec<u8>, field: u32, len: usize) {
    key(buf, field, LEN);
    encode_varint(len as u64, buf);
}

/// The bytes a length-delimited field of `len` bytes takes, its head included.
pub fn len_field_size(field: u32, len: usize) -> usize {
    prost::encoding::key_len(field) + prost::encoding::encoded_len_varint(len as u64) + len
}

pub fn string(buf: &mut Vec<u8>, field: u32, s: &str) {
    bytes(buf, field, s.as_bytes());
}

/// An `int64`, `uint32` or enum field (negative numbers take ten bytes, as in protobuf).
pub fn varint(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, VARINT);
    encode_varint(v, buf);
}

pub fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

pub fn double(buf: &mut Vec<u8>, field: u32, v: f64) {
    fixed64(buf, field, v.to_bits());
}

pub fn fixed32(buf: &mut Vec<u8>, field: u32, v: u32) {
    key(buf, field, FIXED32);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// A nested message: `write` appends its fields, then its length goes in front of them
/// (one byte is kept for it; a longer length moves the fields along).
pub fn message(buf: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    message_with_room(buf, field, 1, write);
}

/// `message` for one of 128 bytes to 16 KiB (a span): two bytes are kept for its length.
pub fn long_message(buf: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    message_with_room(buf, field, 2, write);
}

fn message_with_room(buf: &mut Vec<u8>, field: u32, room: usize, write: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.resize(at + room, 0);
    write(buf);
    let end = buf.len();
    let len = (end - at - room) as u64;
    let mut prefix = [0u8; 10];
    let mut slot = &mut prefix[..];
    encode_varint(len, &mut slot);
    let n = 10 - slot.len();
    if n > room {
        buf.resize(end + n - room, 0);
        buf.copy_within(at + room..end, at + n);
    } else if n < room {
        buf.copy_within(at + room..end, at + n);
        buf.truncate(end - (room - n));
    }
    buf[at..at + n].copy_from_slice(&prefix[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// A message of every field kind written here reads back through prost as written.
    #[test]
    fn prost_reads_what_is_written() {
        use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
        for len in [0usize, 1, 127, 128, 300, 20_000] {
            let text = "x".repeat(len);
            let mut buf = Vec::new();
            string(&mut buf, 1, "key");
            message(&mut buf, 2, |b| string(b, 1, &text));
            let mut long = Vec::new();
            string(&mut long, 1, "key");
            long_message(&mut long, 2, |b| string(b, 1, &text));
            assert_eq!(long, buf, "long_message for {len} bytes");
            // The same message with its length written first.
            let mut known = Vec::new();
            string(&mut known, 1, "key");
            let mut value = Vec::new();
            string(&mut value, 1, &text);
            len_head(&mut known, 2, value.len());
            known.extend_from_slice(&value);
            assert_eq!(known, buf, "len_head for {len} bytes");
            assert_eq!(
                len_field_size(2, value.len()),
                buf.len() - (3 + 1 + 1),
                "len_field_size for {len} bytes"
            );
            let kv = KeyValue::decode(&buf[..]).unwrap();
            assert_eq!(kv.key, "key");
            assert_eq!(
                kv.value.unwrap().value,
                Some(any_value::Value::StringValue(text.clone()))
            );
        }
        for (write, want) in [
            (
                Box::new(|b: &mut Vec<u8>| varint(b, 3, -5i64 as u64)) as Box<dyn Fn(&mut Vec<u8>)>,
                any_value::Value::IntValue(-5),
            ),
            (
                Box::new(|b: &mut Vec<u8>| double(b, 4, 0.25)),
                any_value::Value::DoubleValue(0.25),
            ),
            (
                Box::new(|b: &mut Vec<u8>| varint(b, 2, 1)),
                any_value::Value::BoolValue(true),
            ),
        ] {
            let mut buf = Vec::new();
            write(&mut buf);
            assert_eq!(AnyValue::decode(&buf[..]).unwrap().value, Some(want));
        }
    }
}
