//! Content ids: a kind (blob or thunk), a BLAKE3 digest and a size, with one printable form.
//!
//! The printable form is the kind letter (`B` or `T`), the 64 lowercase hex digits of the digest,
//! a `-` and the size in decimal: `B6f2c…e1-1024`. `docs/ir.md` is normative for it.

use std::fmt;
use std::str::FromStr;

use rkyv::{Archive, Deserialize, Serialize};

/// What an id names.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[rkyv(derive(Debug))]
pub enum Kind {
    /// Plain bytes.
    Blob,
    /// The canonical encoding of a thunk.
    Thunk,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Blob => 'B',
            Kind::Thunk => 'T',
        }
    }
}

/// A content id: kind, BLAKE3 digest of the bytes, and their length.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[rkyv(derive(Debug))]
pub struct Id {
    /// What the bytes are.
    pub kind: Kind,
    /// BLAKE3 of the bytes.
    pub hash: [u8; 32],
    /// Length of the bytes.
    pub size: u64,
}

impl Id {
    /// The id of `bytes` taken as a blob.
    pub fn of_blob(bytes: &[u8]) -> Id {
        Id::new(Kind::Blob, bytes)
    }

    /// One digest of a list of ids (a thunk's inputs as they resolved, in the order of its refs):
    /// equal lists, equal digests.
    pub fn digest_of(ids: &[Id]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        for id in ids {
            hasher.update(&[id.kind as u8]);
            hasher.update(&id.hash);
            hasher.update(&id.size.to_le_bytes());
        }
        *hasher.finalize().as_bytes()
    }

    /// The id of `bytes` taken as `kind`.
    pub fn new(kind: Kind, bytes: &[u8]) -> Id {
        Id { kind, hash: *blake3::hash(bytes).as_bytes(), size: bytes.len() as u64 }
    }

    /// The id of a blob whose digest and size were computed elsewhere (streaming).
    pub fn blob(hash: [u8; 32], size: u64) -> Id {
        Id { kind: Kind::Blob, hash, size }
    }

    /// The digest as 64 lowercase hex digits (used in storage keys and file names).
    pub fn hex(&self) -> String {
        hex::encode(self.hash)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}-{}", self.kind.letter(), self.hex(), self.size)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Why a printable id did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseIdError {
    /// The first character is not `B` or `T`.
    #[error("id `{0}` does not start with B (blob) or T (thunk)")]
    Kind(String),
    /// The digest is not 64 hex digits followed by `-`.
    #[error("id `{0}` does not have 64 hex digits after its kind letter")]
    Digest(String),
    /// The size is not a decimal number.
    #[error("id `{0}` does not end with `-SIZE` in decimal")]
    Size(String),
}

impl FromStr for Id {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Id, ParseIdError> {
        let kind = match s.chars().next() {
            Some('B') => Kind::Blob,
            Some('T') => Kind::Thunk,
            _ => return Err(ParseIdError::Kind(s.to_owned())),
        };
        let rest = &s[1..];
        let (digest, size) = rest.split_once('-').ok_or_else(|| ParseIdError::Size(s.to_owned()))?;
        let mut hash = [0u8; 32];
        let lower = digest.len() == 64 && !digest.bytes().any(|b| b.is_ascii_uppercase());
        if !lower || hex::decode_to_slice(digest, &mut hash).is_err() {
            return Err(ParseIdError::Digest(s.to_owned()));
        }
        let plain = !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit());
        let size = size.parse().ok().filter(|_| plain).ok_or_else(|| ParseIdError::Size(s.to_owned()))?;
        Ok(Id { kind, hash, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_blob_has_the_blake3_of_nothing() {
        let id = Id::of_blob(b"");
        assert_eq!(id.to_string(), "Baf1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262-0");
    }

    #[test]
    fn malformed_ids_are_refused_with_the_reason() {
        assert!(matches!("X00-1".parse::<Id>(), Err(ParseIdError::Kind(_))));
        assert!(matches!("B00-1".parse::<Id>(), Err(ParseIdError::Digest(_))));
        let upper = format!("B{}-1", "A".repeat(64));
        assert!(matches!(upper.parse::<Id>(), Err(ParseIdError::Digest(_))));
        let no_size = format!("B{}-", "a".repeat(64));
        assert!(matches!(no_size.parse::<Id>(), Err(ParseIdError::Size(_))));
        let signed = format!("B{}-+1", "a".repeat(64));
        assert!(matches!(signed.parse::<Id>(), Err(ParseIdError::Size(_))));
    }

    proptest! {
        #[test]
        fn printable_form_round_trips(hash in any::<[u8; 32]>(), size in any::<u64>(), thunk in any::<bool>()) {
            let kind = if thunk { Kind::Thunk } else { Kind::Blob };
            let id = Id { kind, hash, size };
            prop_assert_eq!(id.to_string().parse::<Id>(), Ok(id));
        }
    }
}
