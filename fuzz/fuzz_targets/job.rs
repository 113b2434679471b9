//! Job files and tails (a tail is what a thunk's output may hold, so it comes from programs):
//! parsing never panics, and a parsed spec resolves.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use thunkmesh_protocol::Id;
use thunkmesh_protocol::job::{JobSpec, SpecKind, is_tail};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let kind = if is_tail(data) { SpecKind::Tail } else { SpecKind::Job };
    if let Ok(spec) = JobSpec::parse(text, "fuzz.toml", kind) {
        let values: BTreeMap<String, Id> =
            spec.values.keys().map(|name| (name.clone(), Id::of_blob(name.as_bytes()))).collect();
        let hosts: BTreeMap<String, Id> =
            spec.host_programs().into_iter().map(|path| (path.to_owned(), Id::of_blob(path.as_bytes()))).collect();
        let _ = spec.resolve(&values, &hosts);
    }
});
