//! The snapshot's binary records: user chunks, entries and in-doubt records, each checked with
//! a CRC-32, and the `serial` file's 12 bytes. Pure functions over bytes.

use crate::model::{
    AttrName, AttrValue, Attrs, DoubtNote, InDoubt, Interner, SnapshotEntry, UserId,
};

/// Records a decoded chunk reserves room for at most (a chunk is split past 2 × 128 users).
const CHUNK_CAPACITY: usize = 4 * 2 * 128;

pub(super) fn encode_serial(serial: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&serial.to_le_bytes());
    let crc = crc32fast::hash(&out[..8]);
    out[8..].copy_from_slice(&crc.to_le_bytes());
    out
}

pub(super) fn decode_serial(bytes: &[u8]) -> Option<u64> {
    let bytes: &[u8; 12] = bytes.try_into().ok()?;
    let (serial, crc) = bytes.split_at(8);
    (crc32fast::hash(serial).to_le_bytes() == crc)
        .then(|| u64::from_le_bytes(serial.try_into().unwrap_or_default()))
}

/// Attributes as `[n: u8]` then n × `[len: u8][name][len: u8][value]`. Names and values are at
/// most 50 bytes, so a byte holds each length.
pub(super) fn encode_attrs(attrs: &Attrs, out: &mut Vec<u8>) {
    out.push(attrs.len() as u8);
    for (name, value) in attrs.iter() {
        out.push(name.as_str().len() as u8);
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(value.as_str().len() as u8);
        out.extend_from_slice(value.as_str().as_bytes());
    }
}

pub(super) fn decode_attrs(cursor: &mut &[u8], decoder: &mut Decoder) -> Option<Attrs> {
    let (&count, rest) = cursor.split_first()?;
    *cursor = rest;
    let mut pairs = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = decoder.name(take_field(cursor)?)?;
        let value = decoder.value(take_field(cursor)?)?;
        pairs.push((name, value));
    }
    Some(decoder.shared.attrs(pairs))
}

/// Record layout, version 1: `[1][applied_at: u64 LE]` then the attributes.
pub(super) fn encode_entry(attrs: &Attrs, applied_at: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + attrs.len() * 24);
    out.push(1);
    out.extend_from_slice(&applied_at.to_le_bytes());
    encode_attrs(attrs, &mut out);
    out
}

pub(super) fn decode_entry(bytes: &[u8], decoder: &mut Decoder) -> Option<SnapshotEntry> {
    let (&version, rest) = bytes.split_first()?;
    if version != 1 || rest.len() < 9 {
        return None;
    }
    let applied_at = u64::from_le_bytes(rest[..8].try_into().ok()?);
    // The encoding of a set is canonical (sorted, each name once), so equal bytes are an
    // equal set: one seen before is shared without decoding it again.
    let encoded = &rest[8..];
    if let Some(attrs) = decoder.sets.get(encoded) {
        return Some(SnapshotEntry {
            attrs: attrs.clone(),
            applied_at,
        });
    }
    let mut cursor = encoded;
    let attrs = decode_attrs(&mut cursor, decoder)?;
    if !cursor.is_empty() {
        return None;
    }
    decoder.sets.insert(encoded.into(), attrs.clone());
    Some(SnapshotEntry { attrs, applied_at })
}

/// In-doubt record: `[1][crc32 of the rest: u32 LE][since: u64 LE][reason len: u16 LE][reason]`
/// then the attributes the server may hold.
pub(super) fn encode_doubt(doubt: &InDoubt) -> Vec<u8> {
    let reason = doubt.note.reason.as_bytes();
    let reason = &reason[..reason.len().min(u16::MAX as usize)];
    let mut body = Vec::with_capacity(12 + reason.len() + doubt.maybe.len() * 24);
    body.extend_from_slice(&doubt.note.since.to_le_bytes());
    body.extend_from_slice(&(reason.len() as u16).to_le_bytes());
    body.extend_from_slice(reason);
    encode_attrs(&doubt.maybe, &mut body);
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(1);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

pub(super) fn decode_doubt(bytes: &[u8], decoder: &mut Decoder) -> Option<InDoubt> {
    let (&version, rest) = bytes.split_first()?;
    let (crc, body) = rest.split_at_checked(4)?;
    if version != 1 || crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let (since, rest) = body.split_at_checked(8)?;
    let (len, rest) = rest.split_at_checked(2)?;
    let (reason, mut cursor) =
        rest.split_at_checked(u16::from_le_bytes(len.try_into().ok()?) as usize)?;
    let maybe = decode_attrs(&mut cursor, decoder)?;
    cursor.is_empty().then(|| InDoubt {
        maybe,
        note: DoubtNote {
            since: u64::from_le_bytes(since.try_into().unwrap_or_default()),
            reason: String::from_utf8_lossy(reason).into_owned(),
        },
    })
}

/// Chunk layout, version 2: `[2][crc32 of the rest: u32 LE][count: u32 LE]` then count ×
/// `[id len: u8][id][record len: u16 LE][record]`. Version 1 had no checksum.
pub(super) fn encode_chunk(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        9 + records
            .iter()
            .map(|(id, r)| 3 + id.len() + r.len())
            .sum::<usize>(),
    );
    out.push(2);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for (id, record) in records {
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&(record.len() as u16).to_le_bytes());
        out.extend_from_slice(record);
    }
    let crc = crc32fast::hash(&out[5..]);
    out[1..5].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The `(user id, record)` pairs of a chunk, borrowed from it; `None` if it is malformed or
/// fails its checksum.
pub(super) fn decode_chunk(chunk: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let (&version, rest) = chunk.split_first()?;
    let rest = match version {
        1 => rest,
        2 => {
            let (crc, rest) = rest.split_at_checked(4)?;
            if crc32fast::hash(rest).to_le_bytes() != crc {
                return None;
            }
            rest
        }
        _ => return None,
    };
    let (count, mut cursor) = rest.split_at_checked(4)?;
    let count = u32::from_le_bytes(count.try_into().ok()?) as usize;
    let mut records = Vec::with_capacity(count.min(CHUNK_CAPACITY));
    for _ in 0..count {
        let id = take_field(&mut cursor)?;
        let (len, tail) = cursor.split_at_checked(2)?;
        let (record, tail) =
            tail.split_at_checked(u16::from_le_bytes(len.try_into().ok()?) as usize)?;
        cursor = tail;
        records.push((id, record));
    }
    cursor.is_empty().then_some(records)
}

/// What decoding a snapshot shares between records: attribute names, values and whole
/// attribute sets, so a million users hold a few hundred allocations instead of five each.
#[derive(Default)]
pub(super) struct Decoder {
    names: Vec<AttrName>,
    shared: Interner,
    /// Attribute sets by their encoding.
    sets: std::collections::HashMap<Box<[u8]>, Attrs>,
}

impl Decoder {
    /// The attribute name in `bytes`, shared with the equal ones read before.
    pub(super) fn name(&mut self, bytes: &[u8]) -> Option<AttrName> {
        if let Some(name) = self.names.iter().find(|n| n.as_str().as_bytes() == bytes) {
            return Some(name.clone());
        }
        let name = AttrName::new(std::str::from_utf8(bytes).ok()?).ok()?;
        self.names.push(name.clone());
        Some(name)
    }

    /// The attribute value in `bytes`, shared with the equal ones read before.
    pub(super) fn value(&mut self, bytes: &[u8]) -> Option<AttrValue> {
        self.shared.value(std::str::from_utf8(bytes).ok()?).ok()
    }
}

pub(super) fn decode_user(key: &[u8]) -> Option<UserId> {
    UserId::new(std::str::from_utf8(key).ok()?).ok()
}

/// Splits one length-prefixed field off the front of `cursor`.
pub(super) fn take_field<'b>(cursor: &mut &'b [u8]) -> Option<&'b [u8]> {
    let (&len, tail) = cursor.split_first()?;
    let (field, tail) = tail.split_at_checked(len as usize)?;
    *cursor = tail;
    Some(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Attrs {
        Attrs::parse(pairs).unwrap()
    }

    fn doubt(maybe: &[(&str, &str)]) -> InDoubt {
        InDoubt {
            maybe: attrs(maybe),
            note: DoubtNote {
                since: 7,
                reason: "sent".to_owned(),
            },
        }
    }

    #[test]
    fn entries_round_trip() {
        let a = attrs(&[("city", "東京"), ("sex", "female")]);
        let bytes = encode_entry(&a, 42);
        let entry = decode_entry(&bytes, &mut Decoder::default()).unwrap();
        assert_eq!(
            entry,
            SnapshotEntry {
                attrs: a,
                applied_at: 42
            }
        );
        assert!(decode_entry(&bytes[..bytes.len() - 1], &mut Decoder::default()).is_none());
        assert!(decode_entry(&[], &mut Decoder::default()).is_none());
    }

    #[test]
    fn chunks_and_doubts_fail_their_checksum_when_a_bit_flips() {
        let chunk = encode_chunk(&[(b"a".to_vec(), encode_entry(&attrs(&[("x", "1")]), 1))]);
        assert!(decode_chunk(&chunk).is_some());
        for bit in 0..chunk.len() * 8 {
            let mut bad = chunk.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_chunk(&bad).is_none(), "bit {bit}");
        }
        let record = encode_doubt(&doubt(&[("x", "2")]));
        assert_eq!(
            decode_doubt(&record, &mut Decoder::default()),
            Some(doubt(&[("x", "2")]))
        );
        let mut bad = record.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(decode_doubt(&bad, &mut Decoder::default()).is_none());
        assert_eq!(decode_serial(&encode_serial(99)), Some(99));
        assert_eq!(decode_serial(&[0; 12][..]), None);
    }
}
