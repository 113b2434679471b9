//! The thunk record, the refs it points at, and its canonical, versioned byte encoding.
//!
//! A thunk's id is BLAKE3 over [`Thunk::encode`]. The layout is written down in `docs/ir.md`
//! and pinned by golden vectors in this module's tests; changing it is a format version bump.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rkyv::{Archive, Deserialize, Serialize};

use crate::id::{Id, Kind};
use crate::inputs::Inputs;

/// The first bytes of every encoded thunk: `TMTHUNK` and the format version.
pub const THUNK_MAGIC: &[u8; 8] = b"TMTHUNK\x01";

/// The options byte that ends the encoding of a thunk with options (absent when it has none,
/// so every other thunk keeps the id it had before options existed): this bit says the thunk
/// uses the network.
const NETWORK: u8 = 1;

/// The options bit that says the program's standard output is its output [`STDOUT_OUTPUT`].
const STDOUT: u8 = 2;

/// The options bit that says the program starts in a folder of its sandbox, whose path follows.
const DIR: u8 = 4;

/// The output that a thunk whose result is its standard output declares: the node makes the
/// program's standard output this file of its sandbox (`docs/ir.md`, "Options").
pub const STDOUT_OUTPUT: &str = "stdout";

/// The sandbox folder whose inputs make a thunk's own root file system: input `.root/usr/bin/cc`
/// is the program's `/usr/bin/cc`, and a thunk with any such input sees no host folder at all
/// (`docs/ir.md`, "Own roots").
pub const ROOT_DIR: &str = ".root";

/// Where a node that isolates programs in namespaces shows them the sandbox: the folder they
/// start in (or in `dir` below it). A program that names its inputs by absolute path (a
/// compile of an inferred CMake build) names them under it.
pub const SANDBOX_DIR: &str = "/thunk";

/// The top-level folders of a private root that the sandbox provides itself, which a thunk's own
/// root may not hold.
pub const ROOT_RESERVED: [&str; 4] = ["dev", "tmp", "thunk", ".program"];

/// Longest sandbox path, argument, or environment entry accepted.
pub const MAX_STRING: usize = 64 * 1024;

/// What a thunk input (or program) points at.
#[derive(Archive, Serialize, Deserialize, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[rkyv(derive(Debug))]
pub enum Ref {
    /// A blob, by id.
    Blob(Id),
    /// Output `name` of the thunk `thunk`.
    Output {
        /// The producing thunk.
        thunk: Id,
        /// One of its declared outputs.
        name: String,
    },
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Blob(id) => write!(f, "{id}"),
            Ref::Output { thunk, name } => write!(f, "{thunk}#{name}"),
        }
    }
}

/// Why a printed ref did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseRefError {
    /// The id part is not an id.
    #[error(transparent)]
    Id(#[from] crate::id::ParseIdError),
    /// A blob id with `#output`, or a thunk id without one.
    #[error("`{0}` is neither a blob id nor a thunk id with `#output`")]
    Shape(String),
}

impl std::str::FromStr for Ref {
    type Err = ParseRefError;

    /// Parses what [`Ref`]'s `Display` prints: `B...-SIZE`, or `T...-SIZE#name`.
    fn from_str(s: &str) -> Result<Ref, ParseRefError> {
        let (id, name) = match s.split_once('#') {
            Some((id, name)) => (id.parse::<Id>()?, Some(name)),
            None => (s.parse::<Id>()?, None),
        };
        match (id.kind, name) {
            (Kind::Blob, None) => Ok(Ref::Blob(id)),
            (Kind::Thunk, Some(name)) if !name.is_empty() => Ok(Ref::Output { thunk: id, name: name.to_owned() }),
            _ => Err(ParseRefError::Shape(s.to_owned())),
        }
    }
}

impl fmt::Debug for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The executable a thunk runs.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub enum Program {
    /// Content-addressed: shipped to the node like any input.
    Ref(Ref),
    /// A program on the node's host, by absolute path, pinned by the hash it had at plan time.
    Host {
        /// Absolute path on the node.
        path: String,
        /// The id of that file's bytes when the job was planned.
        pin: Id,
    },
}

/// A hermetic command: the unit of work.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub struct Thunk {
    /// What runs.
    pub program: Program,
    /// argv after argv\[0\].
    pub args: Vec<String>,
    /// The whole environment: nothing is inherited. Shared: the thunks of a build mostly have
    /// one environment, held once.
    pub env: Arc<BTreeMap<String, String>>,
    /// Sandbox path -> what is placed there before the run.
    pub inputs: Inputs,
    /// Sandbox paths the program must create, sorted and unique.
    pub outputs: Vec<String>,
    /// Wall-clock limit of one run, in milliseconds.
    pub timeout_ms: u64,
    /// The program may use the network (the node's): it then runs outside the sandbox's empty
    /// network namespace. Off unless a job asks; such a thunk's result depends on what it reached.
    pub network: bool,
    /// The program's standard output is its output [`STDOUT_OUTPUT`] (which `outputs` must
    /// list), so a program that only prints, such as a test, is a thunk without an output file
    /// of its own. Its exit status still decides success: a program that fails has no result.
    pub stdout: bool,
    /// The folder of the sandbox the program starts in (its top when `None`): a call that a
    /// build made in a subfolder reads files beside that folder (`../include/x.h`).
    pub dir: Option<String>,
}

/// Why a thunk is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThunkError {
    /// A sandbox path is empty, absolute, or climbs out with `..`.
    #[error("path `{0}` must be relative and stay inside the sandbox")]
    EscapingPath(String),
    /// Two inputs or outputs nest inside each other or are the same path.
    #[error("paths `{0}` and `{1}` overlap")]
    OverlappingPaths(String, String),
    /// No outputs were declared.
    #[error("a thunk needs at least one output")]
    NoOutputs,
    /// Outputs are not sorted and unique.
    #[error("outputs must be sorted and unique")]
    UnsortedOutputs,
    /// A part of the inputs is not sorted by path.
    #[error("inputs must be sorted by path")]
    UnsortedInputs,
    /// A host program path is not absolute.
    #[error("host program `{0}` must be an absolute path")]
    RelativeHostProgram(String),
    /// An environment variable name is empty or holds `=` or NUL.
    #[error("environment variable name `{0}` is not valid")]
    EnvName(String),
    /// A string holds NUL (or a path a newline), or is longer than [`MAX_STRING`].
    #[error("a string is longer than {MAX_STRING} bytes or contains NUL (or, in a path, a newline)")]
    BadString,
    /// The timeout is zero.
    #[error("the timeout must be more than zero")]
    ZeroTimeout,
    /// A thunk with its own root runs a host program that is not in that root with its pin.
    #[error("host program `{0}` must be in the thunk's own root (input `.root{0}`, the blob it is pinned to)")]
    ProgramNotInRoot(String),
    /// A file of the thunk's own root is where the sandbox puts its own things.
    #[error(
        "`.root{0}`: the thunk's own root may not hold /dev, /tmp, /thunk or /.program, which the sandbox provides"
    )]
    ReservedInRoot(String),
    /// A thunk whose result is its standard output does not declare that output.
    #[error("a thunk whose result is its standard output must list the output `{STDOUT_OUTPUT}`")]
    StdoutNotDeclared,
    /// An output would be written into the thunk's own root.
    #[error("output `{0}` is inside `.root`, the thunk's own root, which is read only")]
    OutputInRoot(String),
}

/// Why bytes are not a canonical thunk encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes do not start with [`THUNK_MAGIC`].
    #[error("not an encoded thunk (bad magic or unknown version)")]
    Magic,
    /// The bytes end in the middle of a field.
    #[error("encoded thunk is truncated at byte {0}")]
    Truncated(usize),
    /// A tag byte has no meaning.
    #[error("unknown tag {tag} at byte {at}")]
    Tag {
        /// The tag read.
        tag: u8,
        /// Where it was read.
        at: usize,
    },
    /// A string is not UTF-8.
    #[error("string at byte {0} is not UTF-8")]
    Utf8(usize),
    /// Bytes remain after the last field.
    #[error("{0} trailing bytes after the encoded thunk")]
    Trailing(usize),
    /// The fields decode but do not form a valid thunk.
    #[error("decoded thunk is not valid: {0}")]
    Invalid(#[from] ThunkError),
    /// The fields decode but are not in canonical form (order or duplicates).
    #[error("encoded thunk is not in canonical form")]
    NotCanonical,
}

impl Thunk {
    /// The id of this thunk: BLAKE3 over its canonical encoding.
    pub fn id(&self) -> Id {
        Id::new(Kind::Thunk, &self.encode())
    }

    /// The run time limit.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Every ref this thunk reads: the program (if content-addressed) and the inputs.
    pub fn refs(&self) -> impl Iterator<Item = &Ref> {
        let program = match &self.program {
            Program::Ref(r) => Some(r),
            Program::Host { .. } => None,
        };
        program.into_iter().chain(self.inputs.values())
    }

    /// Checks the rules every thunk obeys, whoever built it.
    pub fn validate(&self) -> Result<(), ThunkError> {
        if self.outputs.is_empty() {
            return Err(ThunkError::NoOutputs);
        }
        if self.outputs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ThunkError::UnsortedOutputs);
        }
        if !self.inputs.sorted() {
            return Err(ThunkError::UnsortedInputs);
        }
        if self.timeout_ms == 0 {
            return Err(ThunkError::ZeroTimeout);
        }
        if self.stdout && !self.outputs.iter().any(|o| o == STDOUT_OUTPUT) {
            return Err(ThunkError::StdoutNotDeclared);
        }
        if let Some(dir) = &self.dir {
            check_sandbox_path(dir)?;
        }
        if let Program::Host { path, .. } = &self.program {
            check_string(path)?;
            if !path.starts_with('/') {
                return Err(ThunkError::RelativeHostProgram(path.clone()));
            }
        }
        for arg in &self.args {
            check_string(arg)?;
        }
        for (key, value) in self.env.iter() {
            check_env_name(key)?;
            check_string(value)?;
        }
        let paths: Vec<&str> = self.inputs.keys().chain(&self.outputs).map(String::as_str).collect();
        check_sandbox_paths(&paths)?;
        self.check_root()
    }

    /// Whether the thunk brings its own root file system (inputs under [`ROOT_DIR`]).
    pub fn has_root(&self) -> bool {
        self.root_files().next().is_some()
    }

    /// The files of the thunk's own root: (absolute path in the root, what is there).
    pub fn root_files(&self) -> impl Iterator<Item = (&str, &Ref)> {
        self.inputs.iter().filter_map(|(path, r)| Some((in_root(path)?, r)))
    }

    /// A thunk with its own root runs its host program from there: the root must hold it, as
    /// the blob it is pinned to. Nothing may be written into the root.
    fn check_root(&self) -> Result<(), ThunkError> {
        if !self.has_root() {
            return Ok(());
        }
        if let Some(output) = self.outputs.iter().find(|o| o.as_str() == ROOT_DIR || in_root(o).is_some()) {
            return Err(ThunkError::OutputInRoot(output.clone()));
        }
        let reserved = |path: &str| {
            let top = path.trim_start_matches('/').split('/').next().unwrap_or_default();
            ROOT_RESERVED.contains(&top)
        };
        if let Some((path, _)) = self.root_files().find(|(path, _)| reserved(path)) {
            return Err(ThunkError::ReservedInRoot(path.to_owned()));
        }
        if let Program::Host { path, pin } = &self.program {
            let held = self.inputs.get(&format!("{ROOT_DIR}{path}"));
            if held != Some(&Ref::Blob(*pin)) {
                return Err(ThunkError::ProgramNotInRoot(path.clone()));
            }
        }
        Ok(())
    }

    /// The canonical encoding (see `docs/ir.md`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(THUNK_MAGIC);
        match &self.program {
            Program::Ref(r) => {
                out.push(0);
                put_ref(&mut out, r);
            }
            Program::Host { path, pin } => {
                out.push(1);
                put_str(&mut out, path);
                put_id(&mut out, pin);
            }
        }
        put_u32(&mut out, self.args.len());
        self.args.iter().for_each(|a| put_str(&mut out, a));
        put_u32(&mut out, self.env.len());
        for (k, v) in self.env.iter() {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        put_u32(&mut out, self.inputs.len());
        for (path, r) in &self.inputs {
            put_str(&mut out, path);
            put_ref(&mut out, r);
        }
        put_u32(&mut out, self.outputs.len());
        self.outputs.iter().for_each(|o| put_str(&mut out, o));
        out.extend_from_slice(&self.timeout_ms.to_le_bytes());
        let options = (u8::from(self.network) * NETWORK)
            | (u8::from(self.stdout) * STDOUT)
            | (u8::from(self.dir.is_some()) * DIR);
        if options != 0 {
            out.push(options);
        }
        if let Some(dir) = &self.dir {
            put_str(&mut out, dir);
        }
        out
    }

    /// Parses a canonical encoding, refusing anything that would not re-encode to the same bytes.
    pub fn decode(bytes: &[u8]) -> Result<Thunk, DecodeError> {
        if bytes.len() < THUNK_MAGIC.len() || &bytes[..THUNK_MAGIC.len()] != THUNK_MAGIC {
            return Err(DecodeError::Magic);
        }
        let mut r = Reader { bytes, at: THUNK_MAGIC.len() };
        let thunk = r.thunk()?;
        if r.at != bytes.len() {
            return Err(DecodeError::Trailing(bytes.len() - r.at));
        }
        thunk.validate()?;
        if thunk.encode() != bytes {
            return Err(DecodeError::NotCanonical);
        }
        Ok(thunk)
    }
}

/// The absolute path in the thunk's own root of sandbox path `path`, if it is in [`ROOT_DIR`]
/// (`.root/usr/bin/cc` is `/usr/bin/cc`).
pub fn in_root(path: &str) -> Option<&str> {
    path.strip_prefix(ROOT_DIR).filter(|rest| rest.starts_with('/'))
}

/// Checks that every path stays in the sandbox and that no two paths nest or coincide.
pub fn check_sandbox_paths(paths: &[&str]) -> Result<(), ThunkError> {
    for p in paths {
        check_sandbox_path(p)?;
    }
    let mut sorted = paths.to_vec();
    sorted.sort_unstable();
    for w in sorted.windows(2) {
        let nested = w[1].starts_with(w[0]) && w[1].as_bytes().get(w[0].len()) == Some(&b'/');
        if w[0] == w[1] || nested {
            return Err(ThunkError::OverlappingPaths(w[0].into(), w[1].into()));
        }
    }
    Ok(())
}

/// Checks that one path is relative, has no `.`/`..`/empty component, and no NUL.
pub fn check_sandbox_path(path: &str) -> Result<(), ThunkError> {
    check_string(path)?;
    if path.contains('\n') {
        return Err(ThunkError::BadString);
    }
    let bad_component = path.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if path.is_empty() || bad_component {
        return Err(ThunkError::EscapingPath(path.to_owned()));
    }
    Ok(())
}

fn check_string(s: &str) -> Result<(), ThunkError> {
    if s.len() > MAX_STRING || s.contains('\0') {
        return Err(ThunkError::BadString);
    }
    Ok(())
}

fn check_env_name(name: &str) -> Result<(), ThunkError> {
    check_string(name)?;
    if name.is_empty() || name.contains('=') {
        return Err(ThunkError::EnvName(name.to_owned()));
    }
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).expect("thunk field counts and string lengths fit in u32");
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_id(out: &mut Vec<u8>, id: &Id) {
    out.push(match id.kind {
        Kind::Blob => 0,
        Kind::Thunk => 1,
    });
    out.extend_from_slice(&id.hash);
    out.extend_from_slice(&id.size.to_le_bytes());
}

fn put_ref(out: &mut Vec<u8>, r: &Ref) {
    match r {
        Ref::Blob(id) => {
            out.push(0);
            put_id(out, id);
        }
        Ref::Output { thunk, name } => {
            out.push(1);
            put_id(out, thunk);
            put_str(out, name);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated(self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let at = self.at;
        let len = self.u32()?;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::Utf8(at))
    }

    fn tag(&mut self, max: u8) -> Result<u8, DecodeError> {
        let at = self.at;
        let tag = self.u8()?;
        if tag > max {
            return Err(DecodeError::Tag { tag, at });
        }
        Ok(tag)
    }

    fn id(&mut self) -> Result<Id, DecodeError> {
        let kind = if self.tag(1)? == 0 { Kind::Blob } else { Kind::Thunk };
        let mut hash = [0u8; 32];
        hash.copy_from_slice(self.take(32)?);
        let size = self.u64()?;
        Ok(Id { kind, hash, size })
    }

    fn reference(&mut self) -> Result<Ref, DecodeError> {
        if self.tag(1)? == 0 {
            return Ok(Ref::Blob(self.id()?));
        }
        let thunk = self.id()?;
        let name = self.string()?;
        Ok(Ref::Output { thunk, name })
    }

    fn count<T>(&mut self, mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>) -> Result<Vec<T>, DecodeError> {
        let n = self.u32()?;
        // Every item takes at least four bytes; refuse counts the input cannot hold.
        if n > self.bytes.len().saturating_sub(self.at) / 4 {
            return Err(DecodeError::Truncated(self.at));
        }
        (0..n).map(|_| item(self)).collect()
    }

    fn thunk(&mut self) -> Result<Thunk, DecodeError> {
        let program = if self.tag(1)? == 0 {
            Program::Ref(self.reference()?)
        } else {
            let path = self.string()?;
            Program::Host { path, pin: self.id()? }
        };
        let args = self.count(Reader::string)?;
        let env = self.count(|r| Ok((r.string()?, r.string()?)))?;
        let inputs = self.count(|r| Ok((r.string()?, r.reference()?)))?;
        let outputs = self.count(Reader::string)?;
        let timeout_ms = self.u64()?;
        // An options byte follows only for a thunk with options (a 0 there would not re-encode,
        // and is refused as not canonical).
        let options = if self.at < self.bytes.len() { self.options()? } else { 0 };
        let dir = if options & DIR != 0 { Some(self.string()?) } else { None };
        Ok(Thunk {
            program,
            args,
            env: Arc::new(env.into_iter().collect()),
            inputs: inputs.into_iter().collect(),
            outputs,
            timeout_ms,
            network: options & NETWORK != 0,
            stdout: options & STDOUT != 0,
            dir,
        })
    }

    fn options(&mut self) -> Result<u8, DecodeError> {
        let at = self.at;
        let options = self.u8()?;
        if options & !(NETWORK | STDOUT | DIR) != 0 {
            return Err(DecodeError::Tag { tag: options, at });
        }
        Ok(options)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn golden_thunk() -> Thunk {
        let corpus = Id::of_blob(b"hello world\n");
        let script = Id::of_blob(b"#!/bin/sh\nwc -w < in.txt > out.txt\n");
        Thunk {
            program: Program::Ref(Ref::Blob(script)),
            args: vec!["in.txt".into(), "out.txt".into()],
            env: Arc::new(BTreeMap::from([("LC_ALL".into(), "C".into())])),
            inputs: Inputs::from_iter([("in.txt".into(), Ref::Blob(corpus))]),
            outputs: vec!["out.txt".into()],
            timeout_ms: 30_000,
            network: false,
            stdout: false,
            dir: None,
        }
    }

    /// Golden vectors: these exact bytes and ids are also printed in `docs/ir.md`.
    #[test]
    fn golden_vectors_pin_the_encoding() {
        let t = golden_thunk();
        let hex = hex::encode(t.encode());
        assert_eq!(hex, include_str!("../../docs/ir-golden-1.hex").trim());
        assert_eq!(t.id().to_string(), include_str!("../../docs/ir-golden-1.id").trim());
        let consumer = Thunk {
            program: Program::Host { path: "/bin/cat".into(), pin: Id::of_blob(b"pretend this is /bin/cat") },
            args: vec!["a".into()],
            env: Default::default(),
            inputs: Inputs::from_iter([("a".into(), Ref::Output { thunk: t.id(), name: "out.txt".into() })]),
            outputs: vec!["b".into()],
            timeout_ms: 1_000,
            network: false,
            stdout: false,
            dir: None,
        };
        assert_eq!(hex::encode(consumer.encode()), include_str!("../../docs/ir-golden-2.hex").trim());
        assert_eq!(consumer.id().to_string(), include_str!("../../docs/ir-golden-2.id").trim());
    }

    #[test]
    fn decode_refuses_bad_input_with_the_reason() {
        let bytes = golden_thunk().encode();
        assert_eq!(Thunk::decode(&bytes[..5]), Err(DecodeError::Magic));
        assert!(matches!(Thunk::decode(&bytes[..bytes.len() - 1]), Err(DecodeError::Truncated(_))));
        let with = |extra: &[u8]| Thunk::decode(&[&bytes[..], extra].concat());
        assert_eq!(with(&[0]), Err(DecodeError::NotCanonical), "network off is said by absence");
        assert_eq!(with(&[NETWORK, 0]), Err(DecodeError::Trailing(1)));
        assert_eq!(with(&[9]), Err(DecodeError::Tag { tag: 9, at: bytes.len() }));
        let mut bad_tag = bytes;
        bad_tag[8] = 7;
        assert_eq!(Thunk::decode(&bad_tag), Err(DecodeError::Tag { tag: 7, at: 8 }));
    }

    #[test]
    fn refs_print_and_parse_round_trip() {
        let blob = Ref::Blob(Id::of_blob(b"x"));
        let output = Ref::Output { thunk: golden_thunk().id(), name: "out.txt".into() };
        for r in [blob.clone(), output] {
            assert_eq!(r.to_string().parse::<Ref>(), Ok(r));
        }
        let shape = |s: String| Err(ParseRefError::Shape(s));
        assert_eq!(format!("{blob}#x").parse::<Ref>(), shape(format!("{blob}#x")));
        let thunk = golden_thunk().id().to_string();
        assert_eq!(thunk.parse::<Ref>(), shape(thunk.clone()));
        assert!(matches!("nope".parse::<Ref>(), Err(ParseRefError::Id(_))));
    }

    /// The network option is one byte at the end, so thunks without it keep their ids (the
    /// golden vectors above), and a thunk with it is a different thunk.
    #[test]
    fn a_thunk_that_uses_the_network_ends_with_its_option_and_has_another_id() {
        let plain = golden_thunk();
        let online = Thunk { network: true, ..plain.clone() };
        let bytes = online.encode();
        assert_eq!(bytes, [&plain.encode()[..], &[NETWORK]].concat());
        assert_eq!(Thunk::decode(&bytes), Ok(online.clone()));
        assert_ne!(online.id(), plain.id());
    }

    /// A thunk whose result is its standard output sets the options byte's second bit, alone or
    /// with the network's; it must declare the output `stdout`. Unknown bits are refused.
    #[test]
    fn a_thunk_whose_result_is_its_stdout_declares_it_and_sets_its_option() {
        let plain = golden_thunk();
        let outputs = vec!["out.txt".to_owned(), STDOUT_OUTPUT.to_owned()];
        let printing = Thunk { stdout: true, outputs, ..plain.clone() };
        let bytes = printing.encode();
        let without = Thunk { stdout: false, ..printing.clone() };
        assert_eq!(bytes, [&without.encode()[..], &[STDOUT]].concat());
        assert_eq!(Thunk::decode(&bytes), Ok(printing.clone()));
        let both = Thunk { network: true, ..printing.clone() };
        assert_eq!(both.encode().last(), Some(&(NETWORK | STDOUT)));
        assert_eq!(Thunk::decode(&both.encode()), Ok(both));
        let undeclared = Thunk { stdout: true, ..plain.clone() };
        assert_eq!(undeclared.validate(), Err(ThunkError::StdoutNotDeclared));
        let unknown = [&plain.encode()[..], &[8]].concat();
        assert_eq!(Thunk::decode(&unknown), Err(DecodeError::Tag { tag: 8, at: unknown.len() - 1 }));
    }

    /// A program that starts in a folder of its sandbox says so with the third options bit and
    /// the folder's path after the byte; the folder must be a sandbox path.
    #[test]
    fn a_thunk_that_starts_in_a_folder_names_it_after_its_options() {
        let plain = golden_thunk();
        let inside = Thunk { dir: Some("src/lib".into()), ..plain.clone() };
        let bytes = inside.encode();
        assert_eq!(bytes, [&plain.encode()[..], &[DIR, 7, 0, 0, 0], b"src/lib"].concat());
        assert_eq!(Thunk::decode(&bytes), Ok(inside.clone()));
        assert_ne!(inside.id(), plain.id());
        let truncated = &bytes[..bytes.len() - 1];
        assert!(matches!(Thunk::decode(truncated), Err(DecodeError::Truncated(_))));
        let climbing = Thunk { dir: Some("../up".into()), ..plain };
        assert_eq!(climbing.validate(), Err(ThunkError::EscapingPath("../up".into())));
    }

    /// A thunk with inputs under `.root/` runs its host program from that root: the root must
    /// hold the program as the blob it is pinned to, and nothing is written there.
    #[test]
    fn a_thunk_with_its_own_root_runs_its_program_from_there() {
        let cc = Id::of_blob(b"a compiler");
        let header = Id::of_blob(b"int f(void);");
        let rooted = Thunk {
            program: Program::Host { path: "/usr/bin/cc".into(), pin: cc },
            inputs: Inputs::from_iter([
                (".root/usr/bin/cc".into(), Ref::Blob(cc)),
                (".root/usr/include/f.h".into(), Ref::Blob(header)),
                (".rootless".into(), Ref::Blob(header)),
            ]),
            ..golden_thunk()
        };
        assert_eq!(rooted.validate(), Ok(()));
        assert!(rooted.has_root() && !golden_thunk().has_root());
        let files: Vec<_> = rooted.root_files().map(|(path, _)| path).collect();
        assert_eq!(files, ["/usr/bin/cc", "/usr/include/f.h"]);
        let other_pin = Thunk { program: Program::Host { path: "/usr/bin/cc".into(), pin: header }, ..rooted.clone() };
        assert_eq!(other_pin.validate(), Err(ThunkError::ProgramNotInRoot("/usr/bin/cc".into())));
        let writes_root = Thunk { outputs: vec![".root/usr/lib/x".into()], ..rooted.clone() };
        assert_eq!(writes_root.validate(), Err(ThunkError::OutputInRoot(".root/usr/lib/x".into())));
        let mut dev = rooted.clone();
        dev.inputs.insert(".root/dev/null".into(), Ref::Blob(header));
        assert_eq!(dev.validate(), Err(ThunkError::ReservedInRoot("/dev/null".into())));
        assert_eq!(Thunk::decode(&rooted.encode()), Ok(rooted));
    }

    #[test]
    fn paths_that_escape_or_overlap_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a"] {
            assert_eq!(check_sandbox_path(bad), Err(ThunkError::EscapingPath(bad.into())));
        }
        assert_eq!(check_sandbox_paths(&["a", "a/b"]), Err(ThunkError::OverlappingPaths("a".into(), "a/b".into())));
        assert!(check_sandbox_paths(&["a", "ab", "a.b"]).is_ok());
    }

    fn arb_id() -> impl Strategy<Value = Id> {
        (any::<[u8; 32]>(), any::<u64>(), any::<bool>()).prop_map(|(hash, size, t)| Id {
            kind: if t { Kind::Thunk } else { Kind::Blob },
            hash,
            size,
        })
    }

    pub(crate) fn arb_ref() -> impl Strategy<Value = Ref> {
        prop_oneof![
            arb_id().prop_map(Ref::Blob),
            (arb_id(), "[a-z]{1,8}").prop_map(|(thunk, name)| Ref::Output { thunk, name }),
        ]
    }

    /// The inputs with every `every`-th one (from the first) in a shared part (none for 0).
    fn split_at(inputs: BTreeMap<String, Ref>, every: usize) -> Inputs {
        if every == 0 {
            return inputs.into();
        }
        let (shared, own): (Vec<_>, Vec<_>) = inputs.into_iter().enumerate().partition(|(i, _)| i % every == 0);
        let strip = |part: Vec<(usize, (String, Ref))>| part.into_iter().map(|(_, input)| input);
        Inputs::split(strip(shared).collect::<Vec<_>>().into(), strip(own).collect())
    }

    pub(crate) fn arb_thunk() -> impl Strategy<Value = Thunk> {
        (
            arb_ref(),
            proptest::collection::vec(".{0,12}", 0..4),
            proptest::collection::btree_map("[A-Z_]{1,6}", "[ -~]{0,8}", 0..3),
            (proptest::collection::btree_map("in/[a-z]{1,6}", arb_ref(), 0..4), 0usize..4),
            proptest::collection::btree_set("out/[a-z]{1,6}", 1..3),
            1u64..1_000_000,
            any::<bool>(),
            any::<bool>(),
            proptest::option::of("[a-z]{1,6}"),
        )
            .prop_map(
                |(program, args, env, (inputs, split), mut outputs, timeout_ms, network, stdout, dir)| {
                    if stdout {
                        outputs.insert(STDOUT_OUTPUT.to_owned());
                    }
                    Thunk {
                        program: Program::Ref(program),
                        args: args.into_iter().filter(|a| !a.contains('\0')).collect(),
                        env: env.into(),
                        inputs: split_at(inputs, split),
                        outputs: outputs.into_iter().collect(),
                        timeout_ms,
                        network,
                        stdout,
                        dir,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn encoding_round_trips(t in arb_thunk()) {
            prop_assert_eq!(Thunk::decode(&t.encode()), Ok(t));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut input = THUNK_MAGIC.to_vec();
            input.extend(bytes);
            // Whatever decodes must be canonical: it re-encodes to exactly the input.
            if let Ok(t) = Thunk::decode(&input) {
                prop_assert_eq!(t.encode(), input);
            }
        }
    }
}
