//! `ar`, `ranlib` and `strip`. `ar` with `r` or `q` becomes a thunk that writes the archive,
//! deterministically (`D`) and with its index (`s`), so `ranlib` of an archive that is still a
//! placeholder has nothing to add and records nothing. `strip` of a placeholder becomes a thunk
//! that strips a copy. Both read an existing archive or program through the copy-then-run shell
//! line of [`in_place`], since a thunk's input and output cannot be one path (so their roots hold
//! `sh`, `cp` and `chmod` besides the tool). `ar x` and `ar t` of an archive that is still a
//! placeholder are answered from the thunks that make it ([`members_of`]): no archive is needed.

use std::path::{Path, PathBuf};

use thunkmesh_protocol::thunk::SANDBOX_DIR;
use thunkmesh_protocol::{Id, Ref};

use super::{Call, Outcome};
use crate::placeholder::Placeholder;
use crate::state::State;
use crate::toolchain::{self, Root};
use crate::wrap::WrapError;

/// An `ar` command line, sorted out: the operation and its modifiers (from `cru`, `-cru`, `-r -c`
/// or `--thin`), the options passed on as they are (`--plugin`), and the archive and members.
#[derive(Debug, Default, PartialEq)]
struct ArArgs {
    ops: String,
    options: Vec<String>,
    archive: String,
    members: Vec<String>,
}

/// The modifiers of `r` and `q` the model writes an archive with.
const MODIFIERS: &str = "cDfsSTuUvl";

fn parse_ar(args: &[String]) -> Result<ArArgs, String> {
    let mut parsed = ArArgs::default();
    let mut positional = Vec::new();
    let mut keyed = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--plugin" => {
                let plugin = it.next().ok_or("`--plugin` without its value")?;
                parsed.options.extend([arg.clone(), plugin.clone()]);
            }
            "--thin" => parsed.ops.push('T'),
            a if a.starts_with("--plugin=") => parsed.options.push(arg.clone()),
            a if a.starts_with("--") => return Err(format!("`{a}` is an option the model does not know")),
            a if a.starts_with('-') && a.len() > 1 && positional.is_empty() => {
                parsed.ops.push_str(&a[1..]);
                keyed = true;
            }
            a if !keyed && positional.is_empty() => {
                parsed.ops.push_str(a);
                keyed = true;
            }
            _ => positional.push(arg.clone()),
        }
    }
    let Some((archive, members)) = positional.split_first() else { return Err("no archive".into()) };
    parsed.archive = archive.clone();
    parsed.members = members.to_vec();
    Ok(parsed)
}

pub(super) fn ar(call: &Call) -> Result<Outcome, WrapError> {
    let parsed = match parse_ar(&call.args) {
        Ok(parsed) => parsed,
        Err(why) => return Ok(Outcome::Real(why)),
    };
    let ops = parsed.ops.as_str();
    if ops == "s" {
        return ranlib_of(call, &parsed.archive);
    }
    if matches!(ops, "x" | "xo" | "ox" | "xv" | "t") && Placeholder::is_at(&call.cwd.join(&parsed.archive)) {
        return extract_or_list(call, &parsed);
    }
    if !is_insertion(ops) {
        return Ok(Outcome::Real(format!("`ar {ops}` is not an insertion the model knows")));
    }
    let ArArgs { options, archive, members, .. } = &parsed;
    if members.iter().any(|m| !call.inside(Path::new(m))) || !call.inside(Path::new(archive)) {
        return Ok(Outcome::Real("a file outside the build folder".into()));
    }
    let (program, plugin, root) = archiver(call)?;
    let mut tool_args = plugin;
    tool_args.extend(options.iter().cloned());
    tool_args.extend([deterministic(ops), archive.clone()]);
    tool_args.extend(members.iter().cloned());
    let inputs: Vec<PathBuf> = members.iter().map(PathBuf::from).collect();
    if call.cwd.join(archive).exists() {
        in_place(call, &program, archive, &tool_args, &inputs, 0o644, &root)?;
    } else {
        call.record(&program, &tool_args, &inputs, &[PathBuf::from(archive)], 0o644, &root)?;
    }
    Ok(Outcome::Recorded)
}

/// The archiver a thunk runs, with the options it needs and what its root holds besides it:
/// the called `ar` itself; for GCC's wrapper (`gcc-ar-12`), which finds the LTO plugin beside
/// its compiler and runs `ar --plugin`, that `ar` with that plugin (as the wrapper would run it).
fn archiver(call: &Call) -> Result<(PathBuf, Vec<String>, Root), WrapError> {
    let name = call.program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !name.contains("gcc-ar") {
        return Ok((call.program.clone(), Vec::new(), Root::default()));
    }
    let driver = call.real(&name.replace("gcc-ar", "gcc"))?;
    let plugin = toolchain::ask(&driver, "-print-file-name=liblto_plugin.so")?;
    if !Path::new(&plugin).is_absolute() {
        return Err(toolchain::ToolchainError::NoLtoPlugin(driver.display().to_string()).into());
    }
    let mut root = Root::default();
    root.add(Path::new(&plugin));
    Ok((call.real("ar")?, vec!["--plugin".into(), plugin], root))
}

/// Whether `word` is the operation of a thin archive's insertion as the model records it (so a
/// link that reads the archive also reads its members, which the archive names by path).
pub(super) fn is_thin_insertion(word: &str) -> bool {
    word.contains('T') && is_insertion(word)
}

/// Whether `ops` is one insertion (`r` or `q`) with modifiers the model writes archives with.
fn is_insertion(ops: &str) -> bool {
    ops.chars().filter(|c| *c == 'r' || *c == 'q').count() == 1
        && ops.chars().all(|c| c == 'r' || c == 'q' || MODIFIERS.contains(c))
}

/// `ar x` (or `t`) of an archive that is still a placeholder, as libtool does to make a static
/// library of a convenience library: the archive's members are known from the thunk that makes
/// it, so each extracted member is a placeholder of the same output (or a copy of the same
/// recorded bytes), and `t` lists their names, in the archive's order.
fn extract_or_list(call: &Call, parsed: &ArArgs) -> Result<Outcome, WrapError> {
    let Some(Placeholder { output: Ref::Output { thunk, .. } }) =
        Placeholder::read(&call.cwd.join(&parsed.archive)).ok().flatten()
    else {
        return Ok(Outcome::Real("not an archive the ar model made".into()));
    };
    let members = match members_of(&call.state, thunk, 0)? {
        Ok(members) => members,
        Err(why) => return Ok(Outcome::Real(why)),
    };
    let wanted = |name: &String| parsed.members.is_empty() || parsed.members.contains(name);
    for (name, member) in members.iter().filter(|(name, _)| wanted(name)) {
        match parsed.ops.contains('t') {
            true => println!("{name}"),
            false => extract(call, name, member, parsed.ops.contains('v'))?,
        }
    }
    Ok(Outcome::Recorded)
}

/// Writes the member `name` (which is `member`) into the call's folder.
fn extract(call: &Call, name: &str, member: &Ref, verbose: bool) -> Result<(), WrapError> {
    let path = call.cwd.join(name);
    let io = |error| WrapError::Io { path: path.display().to_string(), error };
    match member {
        Ref::Output { .. } => Placeholder { output: member.clone() }.write(&path, 0o644).map_err(io)?,
        Ref::Blob(id) => drop(std::fs::copy(call.state.blob(*id)?, &path).map_err(io)?),
    }
    if verbose {
        println!("x - {name}");
    }
    Ok(())
}

/// The members of the archive that the recorded `ar` thunk `id` writes, by name in the
/// archive's order, each with what it is; the inner error is why they cannot be known (an
/// archive that began as a real file, a member the thunk does not read).
fn members_of(state: &State, id: Id, depth: usize) -> Result<Result<Vec<(String, Ref)>, String>, WrapError> {
    let thunk = state.thunk(id)?;
    let Some(at) = thunk.args.iter().position(|a| is_insertion(a)) else {
        return Ok(Err("the archive's placeholder is not of an `ar` insertion".into()));
    };
    let ops = thunk.args[at].clone();
    let mut members = Vec::new();
    if let Some((_, before)) = thunk.inputs.iter().find(|(path, _)| path.ends_with(".thunkmesh-in")) {
        match before {
            Ref::Output { thunk: earlier, .. } if depth < 64 => match members_of(state, *earlier, depth + 1)? {
                Ok(earlier) => members = earlier,
                Err(why) => return Ok(Err(why)),
            },
            _ => return Ok(Err("the archive was added to one made for real".into())),
        }
    }
    for written in thunk.args.iter().skip(at + 2) {
        let Some(member) = thunk.inputs.get(&sandbox_member(thunk.dir.as_deref(), written)) else {
            return Ok(Err(format!("the archive's thunk does not read its member {written}")));
        };
        let name = written.rsplit('/').next().unwrap_or(written).to_owned();
        match members.iter_mut().find(|(n, _)| *n == name).filter(|_| ops.contains('r')) {
            Some(same) => same.1 = member.clone(),
            None => members.push((name, member.clone())),
        }
    }
    Ok(Ok(members))
}

/// The sandbox path of a member named `written` by an `ar` thunk that runs in `dir`.
fn sandbox_member(dir: Option<&str>, written: &str) -> String {
    let sandbox = format!("{SANDBOX_DIR}/");
    let path = match written.strip_prefix(&sandbox) {
        Some(rest) => std::path::PathBuf::from("/").join(rest),
        None => Path::new("/").join(dir.unwrap_or_default()).join(written),
    };
    let normal = crate::toolchain::normal(&path);
    normal.strip_prefix("/").unwrap_or(&normal).display().to_string()
}

/// The operation and modifiers `ops` as the model runs them: deterministic (`D`, so not `U`,
/// and not `u`, which GNU ar refuses beside `D` and which means nothing in a fresh copy), and
/// with the index (`s`) unless the build said `S`; this is what GNU ar makes by default where it
/// is built deterministic, as Debian's is.
fn deterministic(ops: &str) -> String {
    let mut ops: String = ops.chars().filter(|c| *c != 'u' && *c != 'U').collect();
    if !ops.contains('D') {
        ops.push('D');
    }
    if !ops.contains('s') && !ops.contains('S') {
        ops.push('s');
    }
    ops
}

pub(super) fn ranlib(call: &Call) -> Result<Outcome, WrapError> {
    let archives: Vec<&String> = call.args.iter().filter(|a| !a.starts_with('-')).collect();
    match archives.as_slice() {
        [archive] => ranlib_of(call, archive),
        _ => Ok(Outcome::Real("not one archive".into())),
    }
}

/// `ranlib` (or `ar s`) of `archive`: nothing to do for a placeholder, whose `ar` thunk writes
/// the index.
fn ranlib_of(call: &Call, archive: &str) -> Result<Outcome, WrapError> {
    match Placeholder::is_at(&call.cwd.join(archive)) {
        true => Ok(Outcome::Recorded),
        false => Ok(Outcome::Real("not an archive the ar model made".into())),
    }
}

pub(super) fn strip(call: &Call) -> Result<Outcome, WrapError> {
    let Some((file, flags)) = call.args.split_last() else { return Ok(Outcome::Real("no file".into())) };
    if !Placeholder::is_at(&call.cwd.join(file)) || flags.iter().any(|f| !f.starts_with('-') || f.starts_with("-o")) {
        return Ok(Outcome::Real("not one placeholder stripped in place".into()));
    }
    let mut tool_args = flags.to_vec();
    tool_args.push(file.clone());
    in_place(call, &call.program, file, &tool_args, &[], 0o755, &Root::default()).map(|()| Outcome::Recorded)
}

/// Records `tool ARGS` changing `file` in place: the thunk reads the current `file` as
/// `file.thunkmesh-in`, copies it to `file`, then runs the tool, through the node's `/bin/sh`.
fn in_place(
    call: &Call,
    real: &Path,
    file: &str,
    tool_args: &[String],
    inputs: &[PathBuf],
    mode: u32,
    extra: &Root,
) -> Result<(), WrapError> {
    let before = format!("{file}.thunkmesh-in");
    let staged = call.cwd.join(&before);
    std::fs::copy(call.cwd.join(file), &staged)
        .map_err(|error| WrapError::Io { path: staged.display().to_string(), error })?;
    let mut args = vec!["-c".to_owned(), "cp \"$1\" \"$2\" && chmod u+w \"$2\" && shift 2 && exec \"$@\"".into()];
    args.extend(["sh".into(), before.clone(), file.to_owned(), real.display().to_string()]);
    args.extend(tool_args.iter().cloned());
    let mut all_inputs = inputs.to_vec();
    all_inputs.push(PathBuf::from(&before));
    let system = match call.hermetic() {
        true => {
            let mut root = call.programs_root(&["cp", "chmod"])?;
            root.extend(&toolchain::program(&call.state, real)?);
            root.extend(extra);
            root
        }
        false => Root::default(),
    };
    let recorded = call.record(&call.real("sh")?, &args, &all_inputs, &[PathBuf::from(file)], mode, &system);
    let _ = std::fs::remove_file(&staged);
    recorded
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::models::tests::strings;

    /// automake's and libtool's `cru`, Lua's `rcu`, CMake's `qc`, dashed and separate modifiers,
    /// thin archives and GCC's plugin wrapper all come out as one deterministic insertion.
    #[test]
    fn every_spelling_of_an_insertion_is_one_deterministic_operation() {
        let cases: [(&[&str], &str); 8] = [
            (&["cru", "libx.a", "a.o"], "crDs"),
            (&["rcu", "libx.a", "a.o"], "rcDs"),
            (&["qc", "libx.a", "a.o"], "qcDs"),
            (&["rcs", "libx.a", "a.o"], "rcsD"),
            (&["-r", "-c", "libx.a", "a.o"], "rcDs"),
            (&["-cruU", "libx.a", "a.o"], "crDs"),
            (&["--thin", "rc", "libx.a", "a.o"], "TrcDs"),
            (&["--plugin", "/usr/lib/liblto_plugin.so", "rcS", "libx.a", "a.o"], "rcSD"),
        ];
        for (args, ops) in cases {
            let parsed = parse_ar(&strings(args)).expect("parses");
            assert_eq!((deterministic(&parsed.ops).as_str(), parsed.archive.as_str()), (ops, "libx.a"), "{args:?}");
            assert_eq!(parsed.members, ["a.o"], "{args:?}");
        }
        let plugin = parse_ar(&strings(&["--plugin", "p.so", "rc", "libx.a"])).expect("parses");
        assert_eq!(plugin.options, ["--plugin", "p.so"]);
        assert!(parse_ar(&strings(&["rc"])).is_err(), "no archive");
    }
}
