//! Byte-level helpers for the journal's compact records: LEB128 varints, zigzag, a reader that
//! reports truncation as an error. Pure.

use super::record::RecordError;

/// Appends `value` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a signed `value` as a zigzag varint.
pub fn put_signed(out: &mut Vec<u8>, value: i64) {
    put_varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// The difference `to − from` as a signed value (wrapping: any two u64 round-trip).
pub fn delta(from: u64, to: u64) -> i64 {
    to.wrapping_sub(from) as i64
}

/// Applies a [`delta`].
pub fn apply_delta(from: u64, delta: i64) -> u64 {
    from.wrapping_add(delta as u64)
}

/// Reads the values written by the `put_*` functions, in order.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    /// One byte.
    pub fn byte(&mut self) -> Result<u8, RecordError> {
        let (&first, rest) = self.bytes.split_first().ok_or_else(truncated)?;
        self.bytes = rest;
        Ok(first)
    }

    /// `len` bytes.
    pub fn take(&mut self, len: usize) -> Result<&'a [u8], RecordError> {
        if self.bytes.len() < len {
            return Err(truncated());
        }
        let (taken, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(taken)
    }

    /// An unsigned varint.
    pub fn varint(&mut self) -> Result<u64, RecordError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(RecordError::Corrupt(
            "varint longer than 10 bytes".to_string(),
        ))
    }

    /// A zigzag varint.
    pub fn signed(&mut self) -> Result<i64, RecordError> {
        let raw = self.varint()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    /// A varint that must fit in `usize` and be at most `max` (a length or a count).
    pub fn count(&mut self, max: usize) -> Result<usize, RecordError> {
        let value = self.varint()?;
        match usize::try_from(value) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(RecordError::Corrupt(format!(
                "count {value} is over the limit of {max}"
            ))),
        }
    }
}

fn truncated() -> RecordError {
    RecordError::Corrupt("record ends early".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_round_trip_at_the_edges() {
        let unsigned = [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX];
        let signed = [0, 1, -1, 63, -64, 64, i64::MIN, i64::MAX];
        let mut out = Vec::new();
        for v in unsigned {
            put_varint(&mut out, v);
        }
        for v in signed {
            put_signed(&mut out, v);
        }
        let mut reader = Reader::new(&out);
        for v in unsigned {
            assert_eq!(reader.varint(), Ok(v));
        }
        for v in signed {
            assert_eq!(reader.signed(), Ok(v));
        }
        assert!(reader.is_empty());
        assert!(Reader::new(&[0x80]).varint().is_err());
        assert!(Reader::new(&[0xff; 11]).varint().is_err());
    }

    #[test]
    fn deltas_wrap_both_ways() {
        for (a, b) in [(5u64, 3u64), (0, u64::MAX), (u64::MAX, 0), (7, 7)] {
            assert_eq!(apply_delta(a, delta(a, b)), b);
        }
    }
}
