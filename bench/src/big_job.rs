//! `thunkmesh-bench big-job`: writes a job file of tens of thousands of compile-like thunks, as a
//! mid-size build would give (issue 15's first finding: such a job was refused as one oversized
//! frame). Modules of 100 C files; each compile reads its source and 20 headers (10 every module
//! reads, 10 of its module) and writes their byte count; each module's archive concatenates its
//! objects; the link concatenates the archives. `expected-app` beside it holds what the target
//! must be, so that `cmp out/app expected-app` checks a run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Compiles per module.
const FILES: usize = 100;

/// Headers every module reads, and headers of each module.
const COMMON: usize = 10;
const OWN: usize = 10;

#[derive(Debug, clap::Args)]
pub struct BigJobArgs {
    /// Thunks, about (whole modules of 100 compiles and an archive, and the link).
    #[arg(long, default_value_t = 60_000)]
    thunks: usize,
    /// The folder to write the job, its files and `expected-app` into.
    #[arg(long, default_value = "target/big-job")]
    dir: PathBuf,
}

pub fn main(args: &BigJobArgs) -> Result<()> {
    let modules = (args.thunks / (FILES + 1)).max(1);
    let (job, expected) = write_files(&args.dir, modules)?;
    std::fs::write(args.dir.join("job.toml"), &job)?;
    std::fs::write(args.dir.join("expected-app"), expected)?;
    println!(
        "wrote {} ({} thunks, {} MiB); run it with `thunkmesh run job.toml` in that folder, then `cmp out/app expected-app`",
        args.dir.join("job.toml").display(),
        modules * (FILES + 1) + 1,
        job.len() >> 20
    );
    Ok(())
}

/// Writes the sources and headers; returns the job file's text and the expected target.
fn write_files(dir: &Path, modules: usize) -> Result<(String, String)> {
    let file = |rel: &str, text: &str| -> Result<usize> {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().context("a parent")?)?;
        std::fs::write(&path, text).with_context(|| path.display().to_string())?;
        Ok(text.len())
    };
    let mut values = String::from("[values]\n");
    let mut thunks = String::new();
    let mut expected = String::new();
    let mut common_bytes = 0;
    for h in 0..COMMON {
        common_bytes += file(&format!("include/common-{h}.h"), &format!("#define COMMON_{h} {h}\n"))?;
        let _ = writeln!(values, "common{h} = \"include/common-{h}.h\"");
    }
    let mut libs = Vec::with_capacity(modules);
    for m in 0..modules {
        let mut own_bytes = 0;
        for h in 0..OWN {
            own_bytes += file(&format!("mod{m}/include/h{h}.h"), &format!("#define MOD_{m}_{h} {}\n", m * h))?;
            let _ = writeln!(values, "m{m}h{h} = \"mod{m}/include/h{h}.h\"");
        }
        let headers: String = (0..COMMON)
            .map(|h| format!("\"include/common-{h}.h\" = \"common{h}\", "))
            .chain((0..OWN).map(|h| format!("\"include/mod-{h}.h\" = \"m{m}h{h}\", ")))
            .collect();
        let mut objects = Vec::with_capacity(FILES);
        for f in 0..FILES {
            let source = format!("int f_{m}_{f}(void) {{ return {}; }}\n", m * FILES + f);
            let bytes = file(&format!("mod{m}/f{f:03}.c"), &source)? + common_bytes + own_bytes;
            let _ = writeln!(values, "m{m}f{f} = \"mod{m}/f{f:03}.c\"");
            let _ = write!(
                thunks,
                "[[thunk]]\nname = \"cc-{m}-{f}\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"cat src.c include/*.h | wc -c > out.o\"]\ninputs = {{ {headers}\"src.c\" = \"m{m}f{f}\" }}\noutputs = [\"out.o\"]\n\n"
            );
            let _ = writeln!(expected, "{bytes}");
            objects.push(format!("\"o/{f:03}.o\" = \"cc-{m}-{f}#out.o\""));
        }
        let _ = write!(
            thunks,
            "[[thunk]]\nname = \"ar-{m}\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"cat o/* > lib.a\"]\ninputs = {{ {} }}\noutputs = [\"lib.a\"]\n\n",
            objects.join(", ")
        );
        libs.push(format!("\"lib/{m:05}.a\" = \"ar-{m}#lib.a\""));
    }
    let _ = write!(
        thunks,
        "[[thunk]]\nname = \"link\"\nprogram = {{ host = \"/bin/sh\" }}\nargs = [\"-c\", \"cat lib/* > app\"]\ninputs = {{ {} }}\noutputs = [\"app\"]\n\n[targets]\n\"app\" = \"link#app\"\n",
        libs.join(", ")
    );
    Ok((values + "\n" + &thunks, expected))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_small_big_job_parses_and_names_its_expected_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (job, expected) = super::write_files(dir.path(), 2).expect("written");
        std::fs::write(dir.path().join("job.toml"), &job).expect("job");
        let loaded = thunkmesh_client::load_job(&dir.path().join("job.toml")).expect("a valid job");
        assert_eq!(loaded.job.thunks.len(), 2 * 101 + 1);
        assert_eq!(expected.lines().count(), 200);
        let compile = &loaded.job.thunks[0].thunk;
        assert_eq!(compile.inputs.len(), 21);
    }
}
