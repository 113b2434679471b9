//! The hasher of the planner's tables keyed by ids. An id is a BLAKE3 digest (with a kind and a
//! size), so mixing its words with a multiply is as good a hash as SipHash over all of it, at a
//! fraction of the cost: hashing ids was a tenth of the rendezvous' time on a compile-shaped job.
//! Whoever can submit a job chooses ids, and could make some of them collide in a table; such a
//! user can already run programs on the mesh.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use thunkmesh_protocol::Id;

/// A map keyed by ids.
pub(crate) type IdMap<V> = HashMap<Id, V, BuildHasherDefault<IdHasher>>;

/// A set of ids.
pub(crate) type IdSet = HashSet<Id, BuildHasherDefault<IdHasher>>;

/// Folds each word written into the state with a rotate, an xor and a multiply (FxHash's step).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const K: u64 = 0x517c_c1b7_2722_0a95;

impl IdHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn ids_that_differ_anywhere_hash_apart() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let a = Id::of_blob(b"a");
        let mut b = a;
        b.hash[31] ^= 1;
        let mut c = a;
        c.size += 1;
        let hashes = [build.hash_one(a), build.hash_one(b), build.hash_one(c)];
        assert!(hashes[0] != hashes[1] && hashes[0] != hashes[2] && hashes[1] != hashes[2]);
        assert_eq!(build.hash_one(a), build.hash_one(Id::of_blob(b"a")));
    }
}
