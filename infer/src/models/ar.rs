//! `ar`, `ranlib` and `strip`. `ar` with `r` or `q` becomes a thunk that writes the archive,
//! deterministically (`D`) and with its index (`s`), so `ranlib` of an archive that is still a
//! placeholder has nothing to add and records nothing. `strip` of a placeholder becomes a thunk
//! that strips a copy. Both read an existing archive or program through the copy-then-run shell
//! line of [`in_place`], since a thunk's input and output cannot be one path (so their roots hold
//! `sh`, `cp` and `chmod` besides the tool).

use std::path::{Path, PathBuf};

use super::{Call, Outcome};
use crate::placeholder::Placeholder;
use crate::toolchain::{self, Root};
use crate::wrap::WrapError;

pub(super) fn ar(call: &Call) -> Result<Outcome, WrapError> {
    let Some((ops, rest)) = call.args.split_first() else { return Ok(Outcome::Real("no operation".into())) };
    let ops = ops.trim_start_matches('-');
    let Some((archive, members)) = rest.split_first() else { return Ok(Outcome::Real("no archive".into())) };
    if !(ops.contains('r') || ops.contains('q'))
        || ops.contains(['a', 'b', 'i', 'N', 'P', 'T', 'x', 'd', 'm', 't', 'p'])
    {
        return Ok(Outcome::Real(format!("`ar {ops}` is not an insertion the model knows")));
    }
    if members.iter().any(|m| !call.inside(Path::new(m))) || !call.inside(Path::new(archive)) {
        return Ok(Outcome::Real("a file outside the build folder".into()));
    }
    let mut ops = ops.replace('U', "");
    for flag in ['D', 's'] {
        if !ops.contains(flag) {
            ops.push(flag);
        }
    }
    let inputs: Vec<PathBuf> = members.iter().map(PathBuf::from).collect();
    let mut tool_args = vec![ops, archive.clone()];
    tool_args.extend(members.iter().cloned());
    if call.cwd.join(archive).exists() {
        in_place(call, "ar", archive, &tool_args, &inputs, 0o644)?;
    } else {
        call.record("ar", &tool_args, &inputs, &[PathBuf::from(archive)], 0o644, &Root::default())?;
    }
    Ok(Outcome::Recorded)
}

pub(super) fn ranlib(call: &Call) -> Result<Outcome, WrapError> {
    match call.args.as_slice() {
        [archive] if Placeholder::is_at(&call.cwd.join(archive)) => Ok(Outcome::Recorded),
        _ => Ok(Outcome::Real("not an archive the ar model made".into())),
    }
}

pub(super) fn strip(call: &Call) -> Result<Outcome, WrapError> {
    let Some((file, flags)) = call.args.split_last() else { return Ok(Outcome::Real("no file".into())) };
    if !Placeholder::is_at(&call.cwd.join(file)) || flags.iter().any(|f| !f.starts_with('-') || f.starts_with("-o")) {
        return Ok(Outcome::Real("not one placeholder stripped in place".into()));
    }
    let mut tool_args = flags.to_vec();
    tool_args.push(file.clone());
    in_place(call, "strip", file, &tool_args, &[], 0o755).map(|()| Outcome::Recorded)
}

/// Records `tool ARGS` changing `file` in place: the thunk reads the current `file` as
/// `file.thunkmesh-in`, copies it to `file`, then runs the tool, through the node's `/bin/sh`.
fn in_place(
    call: &Call,
    tool: &str,
    file: &str,
    tool_args: &[String],
    inputs: &[PathBuf],
    mode: u32,
) -> Result<(), WrapError> {
    let before = format!("{file}.thunkmesh-in");
    let staged = call.cwd.join(&before);
    std::fs::copy(call.cwd.join(file), &staged)
        .map_err(|error| WrapError::Io { path: staged.display().to_string(), error })?;
    let real = call.real(tool)?;
    let mut args = vec!["-c".to_owned(), "cp \"$1\" \"$2\" && chmod u+w \"$2\" && shift 2 && exec \"$@\"".into()];
    args.extend(["sh".into(), before.clone(), file.to_owned(), real.display().to_string()]);
    args.extend(tool_args.iter().cloned());
    let mut all_inputs = inputs.to_vec();
    all_inputs.push(PathBuf::from(&before));
    let system = match call.hermetic() {
        true => {
            let mut root = call.programs_root(&["cp", "chmod"])?;
            root.extend(&toolchain::program(&call.state, &real).map_err(WrapError::Toolchain)?);
            root
        }
        false => Root::default(),
    };
    let recorded = call.record("sh", &args, &all_inputs, &[PathBuf::from(file)], mode, &system);
    let _ = std::fs::remove_file(&staged);
    recorded
}
