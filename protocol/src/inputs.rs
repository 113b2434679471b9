//! A thunk's inputs: the map from sandbox path to ref, held in two sorted parts, one that many
//! thunks share (the headers and toolchain a thousand compiles all read) and one of the thunk's
//! own. The split is a matter of storage only: equality, hashing, iteration and the canonical
//! encoding see one map, so a thunk has the same id however its inputs are split.
//!
//! On the wire a shared part is one `Arc`, which rkyv writes once per message however many
//! thunks hold it; [`share`] finds the shared parts of a job (and makes equal environments one),
//! and [`Interner`] makes parts that arrive in different messages one allocation again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rkyv::{Archive, Deserialize, Serialize};

use crate::thunk::{Ref, Thunk};

/// One input: sandbox path and ref.
pub type Input = (String, Ref);

/// Inputs a part shared with other thunks must hold before splitting pays.
const MIN_SHARED: usize = 2;

/// Sandbox path -> ref, as a shared part and an own part, each sorted by path (see the module).
#[derive(Archive, Serialize, Deserialize, Clone, Default)]
#[rkyv(derive(Debug))]
pub struct Inputs {
    shared: Option<Arc<[Input]>>,
    own: Vec<Input>,
}

impl Inputs {
    /// No inputs.
    pub fn new() -> Inputs {
        Inputs::default()
    }

    /// `shared` (as many thunks hold it) and `own`; each must be sorted by path, and no path may
    /// be in both (what [`crate::Thunk::validate`] checks).
    pub fn split(shared: Arc<[Input]>, own: Vec<Input>) -> Inputs {
        Inputs { shared: Some(shared), own }
    }

    /// The shared part, if any.
    pub fn shared(&self) -> Option<&Arc<[Input]>> {
        self.shared.as_ref()
    }

    /// The thunk's own part.
    pub fn own(&self) -> &[Input] {
        &self.own
    }

    /// How many inputs.
    pub fn len(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.len()) + self.own.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inputs, sorted by path.
    pub fn iter(&self) -> Merge<'_> {
        Merge { a: self.shared.as_deref().unwrap_or_default(), b: &self.own }
    }

    /// The paths, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.iter().map(|(p, _)| p)
    }

    /// The refs, in the order of their paths.
    pub fn values(&self) -> impl Iterator<Item = &Ref> {
        self.iter().map(|(_, r)| r)
    }

    /// The ref at `path`.
    pub fn get(&self, path: &str) -> Option<&Ref> {
        fn find<'a>(part: &'a [Input], path: &str) -> Option<&'a Ref> {
            part.binary_search_by(|(p, _)| p.as_str().cmp(path)).ok().map(|i| &part[i].1)
        }
        self.shared.as_deref().and_then(|s| find(s, path)).or_else(|| find(&self.own, path))
    }

    /// Places `r` at `path` (the inputs become all the thunk's own if `path` was shared).
    pub fn insert(&mut self, path: String, r: Ref) {
        if self.shared.as_ref().is_some_and(|s| s.iter().any(|(p, _)| *p == path)) {
            *self = self.iter().map(|(p, r)| (p.clone(), r.clone())).collect();
        }
        match self.own.binary_search_by(|(p, _)| p.cmp(&path)) {
            Ok(i) => self.own[i].1 = r,
            Err(i) => self.own.insert(i, (path, r)),
        }
    }

    /// Whether each part is sorted by path with no path twice.
    pub fn sorted(&self) -> bool {
        let sorted = |part: &[Input]| part.windows(2).all(|w| w[0].0 < w[1].0);
        sorted(self.shared.as_deref().unwrap_or_default()) && sorted(&self.own)
    }
}

impl FromIterator<Input> for Inputs {
    /// One part of the thunk's own; a path given twice keeps its last ref.
    fn from_iter<I: IntoIterator<Item = Input>>(iter: I) -> Inputs {
        let map: BTreeMap<String, Ref> = iter.into_iter().collect();
        Inputs { shared: None, own: map.into_iter().collect() }
    }
}

impl From<BTreeMap<String, Ref>> for Inputs {
    fn from(map: BTreeMap<String, Ref>) -> Inputs {
        Inputs { shared: None, own: map.into_iter().collect() }
    }
}

impl<'a> IntoIterator for &'a Inputs {
    type Item = (&'a String, &'a Ref);
    type IntoIter = Merge<'a>;

    fn into_iter(self) -> Merge<'a> {
        self.iter()
    }
}

impl std::ops::Index<&str> for Inputs {
    type Output = Ref;

    fn index(&self, path: &str) -> &Ref {
        self.get(path).unwrap_or_else(|| panic!("no input at `{path}`"))
    }
}

impl PartialEq for Inputs {
    fn eq(&self, other: &Inputs) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Inputs {}

impl Hash for Inputs {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        self.iter().for_each(|input| input.hash(state));
    }
}

impl fmt::Debug for Inputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The inputs of both parts in path order.
#[derive(Debug, Clone)]
pub struct Merge<'a> {
    a: &'a [Input],
    b: &'a [Input],
}

impl<'a> Iterator for Merge<'a> {
    type Item = (&'a String, &'a Ref);

    fn next(&mut self) -> Option<Self::Item> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(a), Some(b)) => a.0 <= b.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let part = if take_a { &mut self.a } else { &mut self.b };
        let (first, rest) = part.split_first()?;
        *part = rest;
        Some((&first.0, &first.1))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.a.len() + self.b.len();
        (n, Some(n))
    }
}

/// Makes what the thunks of a job hold in common one allocation: equal environments, and the
/// inputs that more than one thunk reads (see [`share_inputs`]). Ids do not change; what
/// changes is how much memory and wire the job takes.
pub fn share<'a>(thunks: impl IntoIterator<Item = &'a mut Thunk>) {
    let mut interner = Interner::default();
    let mut inputs = Vec::new();
    for thunk in thunks {
        interner.intern_env(&mut thunk.env);
        inputs.push(&mut thunk.inputs);
    }
    share_inputs(inputs);
}

/// Splits the inputs of every thunk into the inputs at least one other thunk also reads (the
/// shared part, one allocation for every thunk with the same such inputs) and its own. Inputs
/// already split (a job built with shared parts) are left as they are.
pub fn share_inputs<'a>(inputs: impl IntoIterator<Item = &'a mut Inputs>) {
    let mut all: Vec<&mut Inputs> = inputs.into_iter().filter(|i| i.shared.is_none()).collect();
    let mut counts: HashMap<(&String, &Ref), u32> = HashMap::new();
    let splits: Vec<Option<(Vec<Input>, Vec<Input>)>> = {
        for inputs in &all {
            for input in inputs.iter() {
                *counts.entry(input).or_default() += 1;
            }
        }
        all.iter()
            .map(|inputs| {
                let (shared, own): (Vec<_>, Vec<_>) = inputs.iter().partition(|input| counts[input] > 1);
                let owned =
                    |part: Vec<(&String, &Ref)>| part.into_iter().map(|(p, r)| (p.clone(), r.clone())).collect();
                (shared.len() >= MIN_SHARED).then(|| (owned(shared), owned(own)))
            })
            .collect()
    };
    let mut interner = Interner::default();
    for (inputs, split) in all.iter_mut().zip(splits) {
        if let Some((shared, own)) = split {
            **inputs = Inputs { shared: Some(interner.intern(shared.into())), own };
        }
    }
}

/// Makes equal shared parts and environments one allocation (parts of a job that arrived in
/// different messages).
#[derive(Debug, Default)]
pub struct Interner {
    parts: HashSet<Arc<[Input]>>,
    envs: HashSet<Arc<BTreeMap<String, String>>>,
}

impl Interner {
    /// The allocation equal to `part` that this interner already holds, else `part`.
    pub fn intern(&mut self, part: Arc<[Input]>) -> Arc<[Input]> {
        if let Some(held) = self.parts.get(&part) {
            return held.clone();
        }
        self.parts.insert(part.clone());
        part
    }

    /// Makes the shared part of `inputs` the one held here; returns what a part new here
    /// weighs (its paths' bytes and `per_ref` for each input), 0 for one already held.
    pub fn intern_inputs(&mut self, inputs: &mut Inputs, per_ref: u64) -> u64 {
        let Some(shared) = inputs.shared.take() else { return 0 };
        let known = self.parts.len();
        let shared = self.intern(shared);
        let weight = match self.parts.len() > known {
            true => shared.iter().map(|(p, _)| p.len() as u64 + per_ref).sum(),
            false => 0,
        };
        inputs.shared = Some(shared);
        weight
    }

    /// Makes `env` the equal environment held here; returns what it weighs (its strings) if it
    /// is new here, else 0.
    pub fn intern_env(&mut self, env: &mut Arc<BTreeMap<String, String>>) -> u64 {
        if let Some(held) = self.envs.get(env) {
            *env = held.clone();
            return 0;
        }
        self.envs.insert(env.clone());
        env.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    /// Distinct parts and environments held.
    pub fn len(&self) -> usize {
        self.parts.len() + self.envs.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Id;

    fn blob(n: u8) -> Ref {
        Ref::Blob(Id::blob([n; 32], 1))
    }

    fn map(pairs: &[(&str, u8)]) -> Inputs {
        pairs.iter().map(|(p, n)| ((*p).to_owned(), blob(*n))).collect()
    }

    #[test]
    fn a_split_map_iterates_equals_and_hashes_like_the_whole() {
        let whole = map(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
        let shared: Arc<[Input]> = vec![("a".to_owned(), blob(1)), ("c".to_owned(), blob(3))].into();
        let split = Inputs::split(shared, vec![("b".to_owned(), blob(2)), ("d".to_owned(), blob(4))]);
        assert_eq!(split.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "c", "d"]);
        assert_eq!(split, whole);
        assert_eq!(split.get("c"), Some(&blob(3)));
        assert_eq!(split.get("b"), Some(&blob(2)));
        assert_eq!(split.get("e"), None);
        let hash = |i: &Inputs| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            i.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&split), hash(&whole));
        assert_ne!(split, map(&[("a", 1), ("b", 2), ("c", 3)]));
    }

    #[test]
    fn inserting_a_shared_path_makes_the_map_the_thunks_own() {
        let shared: Arc<[Input]> = vec![("a".to_owned(), blob(1)), ("b".to_owned(), blob(2))].into();
        let mut split = Inputs::split(shared, vec![]);
        split.insert("a".into(), blob(9));
        assert_eq!(split, map(&[("a", 9), ("b", 2)]));
        assert!(split.shared().is_none());
    }

    #[test]
    fn sharing_finds_common_inputs_and_makes_equal_parts_one_allocation() {
        let mut thunks = [
            map(&[("h1", 1), ("h2", 2), ("src", 10)]),
            map(&[("h1", 1), ("h2", 2), ("src", 11)]),
            map(&[("x", 20), ("y", 21)]),
        ];
        let before = thunks.clone();
        share_inputs(thunks.iter_mut());
        assert_eq!(thunks, before);
        let (a, b) = (thunks[0].shared().expect("shared"), thunks[1].shared().expect("shared"));
        assert!(Arc::ptr_eq(a, b));
        assert_eq!(a.len(), 2);
        assert!(thunks[2].shared().is_none());
        assert!(thunks.iter().all(Inputs::sorted));
    }

    #[test]
    fn an_unsorted_part_is_noticed() {
        let shared: Arc<[Input]> = vec![("b".to_owned(), blob(1)), ("a".to_owned(), blob(2))].into();
        assert!(!Inputs::split(shared, vec![]).sorted());
        assert!(map(&[("b", 1), ("a", 2)]).sorted());
    }
}
