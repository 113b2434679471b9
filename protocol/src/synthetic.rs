//! A compile-shaped job built in memory, for the tests and benchmarks that measure scale: modules
//! of C files, each compile reading its source and its module's headers (20 to 200 of them, the
//! project's common headers among them), one archive per module, one link. Pure: the same
//! arguments give the same job.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::inputs::{Input, Inputs};
use crate::wire::{Mode, Submission, SubmittedThunk};
use crate::{Id, Program, Ref, Thunk};

/// Compiles per module (one archive each).
pub const FILES_PER_MODULE: usize = 100;

/// Headers every module reads.
const COMMON_HEADERS: usize = 20;

/// A compile-shaped job of at least `thunks` thunks (whole modules) (compiles, archives and the link), each
/// module's headers one shared input part. `program` is what every thunk runs.
pub fn compile_job(thunks: usize, program: &Program) -> Submission {
    let modules = thunks.div_ceil(FILES_PER_MODULE + 1).max(1);
    let common: Vec<Input> = (0..COMMON_HEADERS).map(|h| value(&format!("include/common-{h:02}.h"))).collect();
    let env = Arc::new(BTreeMap::from([
        ("LC_ALL".to_owned(), "C".to_owned()),
        ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
    ]));
    let mut out = Vec::with_capacity(thunks);
    let mut archives = Vec::with_capacity(modules);
    for m in 0..modules {
        // 20 to 200 headers: the common ones and 0 to 180 of the module's own.
        let own_headers = (m * 37) % 181;
        let mut headers = common.clone();
        headers.extend((0..own_headers).map(|h| value(&format!("mod{m}/include/h{h:03}.h"))));
        headers.sort();
        let headers: Arc<[Input]> = headers.into();
        let mut objects = Vec::with_capacity(FILES_PER_MODULE);
        for f in 0..FILES_PER_MODULE {
            let source = format!("mod{m}/f{f:03}.c");
            let args = ["-c", "-O2", "-Iinclude", &source, "-o", "out.o"].map(String::from).to_vec();
            let inputs = Inputs::split(headers.clone(), vec![value(&source)]);
            let thunk = thunk(program, args, env.clone(), inputs, "out.o");
            objects.push((format!("in/{f:03}.o"), Ref::Output { thunk: thunk.id(), name: "out.o".into() }));
            out.push(SubmittedThunk { name: format!("cc/{m}/{f}"), thunk });
        }
        let args = ["rcs", "lib.a"].map(String::from).to_vec();
        let archive = thunk(program, args, env.clone(), objects.into_iter().collect(), "lib.a");
        archives.push((format!("lib/{m:05}.a"), Ref::Output { thunk: archive.id(), name: "lib.a".into() }));
        out.push(SubmittedThunk { name: format!("ar/{m}"), thunk: archive });
    }
    let link = thunk(program, vec!["-o".into(), "app".into()], env, archives.into_iter().collect(), "app");
    let target = Ref::Output { thunk: link.id(), name: "app".into() };
    out.push(SubmittedThunk { name: "link".into(), thunk: link });
    Submission {
        store: "file:///synthetic".into(),
        mode: Mode::P2p,
        thunks: out,
        targets: vec![target],
        stored: Vec::new(),
        memo: Vec::new(),
        require_direct: false,
        keep_going: false,
        verify: 0,
        verify_salt: 0,
        report_tasks: false,
        carried: Vec::new(),
    }
}

/// The values (sources and headers) a [`compile_job`] reads, which must be in storage.
pub fn values(sub: &Submission) -> Vec<Id> {
    let ids: std::collections::BTreeSet<Id> = sub
        .thunks
        .iter()
        .flat_map(|t| t.thunk.inputs.values())
        .filter_map(|r| if let Ref::Blob(id) = r { Some(*id) } else { None })
        .collect();
    ids.into_iter().collect()
}

fn value(path: &str) -> Input {
    (path.to_owned(), Ref::Blob(Id::of_blob(path.as_bytes())))
}

fn thunk(
    program: &Program,
    args: Vec<String>,
    env: Arc<BTreeMap<String, String>>,
    inputs: Inputs,
    output: &str,
) -> Thunk {
    Thunk {
        program: program.clone(),
        args,
        env,
        inputs,
        outputs: vec![output.to_owned()],
        timeout_ms: 600_000,
        network: false,
        stdout: false,
        dir: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compile_job_is_valid_and_its_compiles_share_their_headers() {
        let program = Program::Host { path: "/bin/true".into(), pin: Id::of_blob(b"true") };
        let sub = compile_job(1_000, &program);
        assert!((1_000..=1_000 + FILES_PER_MODULE + 1).contains(&sub.thunks.len()), "{}", sub.thunks.len());
        assert!(sub.thunks.iter().all(|t| t.thunk.validate().is_ok()));
        let compiles: Vec<&Thunk> = sub.thunks.iter().filter(|t| t.name.starts_with("cc/")).map(|t| &t.thunk).collect();
        assert!(compiles.iter().all(|t| (21..=201).contains(&t.inputs.len())));
        assert!(compiles.iter().all(|t| t.inputs.own().len() == 1), "only the source is a compile's own");
        let first = compiles[0].inputs.shared().expect("shared");
        assert!(Arc::ptr_eq(first, compiles[99].inputs.shared().expect("shared")));
        assert!(values(&sub).len() > 1_000);
    }
}
