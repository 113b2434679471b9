//! `thunkmesh-bench infer`: an unchanged build through `thunkmesh infer` and `force` against
//! `make -j2` on the same machine. zlib (Debian's source package, fetched by
//! `scripts/fetch-sources zlib`) and a synthetic project of many sources run each step in a fresh
//! copy of the configured tree. The Debian projects of the corpus (lz4, xz-utils, mosh, sqlite3:
//! `scripts/fetch-sources lz4 xz-utils mosh sqlite3`) build as a user would, in one folder:
//! configured, built with make, cleaned, then inferred and forced there, every output compared
//! with make's byte for byte, then cleaned, inferred and forced again from the memo cache. The
//! figures are wall-clock medians over `--reps` runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Options of `infer`.
#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// Runs of each step.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Sources of the synthetic project.
    #[arg(long, default_value_t = 200)]
    sources: usize,
    /// Local workers `force` starts (and `make -j`).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The thunkmesh binary [default: `thunkmesh` next to this program].
    #[arg(long)]
    thunkmesh: Option<PathBuf>,
    /// The Debian projects built in place (any of lz4, xz-utils, mosh, sqlite3).
    #[arg(long, value_delimiter = ',', default_value = "lz4,xz-utils,mosh,sqlite3")]
    debian: Vec<String>,
}

/// Makes a project's configured tree in an empty folder.
type Prepare = Box<dyn Fn(&Path) -> Result<()>>;

/// A project: how to make a configured tree in a folder, and what to build.
struct Project {
    name: String,
    prepare: Prepare,
    targets: Vec<String>,
    /// A source file the incremental step changes (a comment is added).
    change: String,
}

pub fn main(args: &InferArgs) -> Result<()> {
    let binary = crate::thunkmesh_binary(args.thunkmesh.as_ref())?;
    let projects = [zlib()?, synthetic(args.sources)];
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>12}",
        "project", "make -n", "make -j", "infer", "force", "ratio", "memo force", "one changed"
    );
    let rows = projects.iter().map(|p| measure(&binary, p, args).map(|row| (p.name.clone(), row)));
    let in_place = args.debian.iter().map(|name| in_place(&binary, name, args).map(|row| (name.clone(), row)));
    for row in rows.chain(in_place) {
        let (name, row) = row?;
        println!(
            "{:<16} {:>9} {:>9} {:>9} {:>9} {:>8.2}x {:>10} {:>7} ({})",
            name,
            secs(row.dry_run),
            secs(row.make),
            secs(row.infer),
            secs(row.force),
            (row.infer + row.force) / row.make,
            secs(row.memo_rerun),
            secs(row.changed),
            row.changed_ran
        );
    }
    println!(
        "ratio: (infer + force) / make -j; memo force: force of a fresh copy (of a Debian project: of its folder, \
         cleaned), inferred again, whose results the memo cache has; one changed: infer and force after one source \
         of that copy changed (thunks run; not measured for the Debian projects)"
    );
    Ok(())
}

/// Medians of one project's steps, in seconds.
struct Row {
    dry_run: f64,
    make: f64,
    infer: f64,
    force: f64,
    memo_rerun: f64,
    changed: f64,
    changed_ran: String,
}

fn measure(binary: &Path, project: &Project, args: &InferArgs) -> Result<Row> {
    let jobs = format!("-j{}", args.workers);
    let workers = args.workers.to_string();
    let (mut dry, mut make, mut infer, mut force, mut memo, mut changed) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut changed_ran = String::new();
    for _ in 0..args.reps {
        let scratch = tempfile::tempdir()?;
        let tree = |name: &str| -> Result<PathBuf> {
            let dir = scratch.path().join(name);
            std::fs::create_dir_all(&dir)?;
            (project.prepare)(&dir)?;
            Ok(dir)
        };
        let direct = tree("direct")?;
        dry.push(crate::timed(Command::new("make").arg("-n").args(&project.targets).current_dir(&direct))?);
        make.push(crate::timed(Command::new("make").arg("-s").arg(&jobs).args(&project.targets).current_dir(&direct))?);
        let inferred = tree("inferred")?;
        let state = inferred.join(".thunkmesh");
        let infer_cmd = |dir: &Path| {
            let mut c = Command::new(binary);
            c.args(["infer", "--state-dir"]).arg(&state).args(["--", "make", "-s"]).args(&project.targets);
            c.current_dir(dir);
            c
        };
        let force_cmd = |dir: &Path| {
            let mut c = Command::new(binary);
            c.args(["force", "--all", "--workers", &workers, "--state-dir"]).arg(&state).current_dir(dir);
            c
        };
        infer.push(crate::timed(&mut infer_cmd(&inferred))?);
        force.push(crate::timed(&mut force_cmd(&inferred))?);
        for target in &project.targets {
            if std::fs::read(inferred.join(target))? != std::fs::read(direct.join(target))? {
                bail!("{}: {target} differs from make's", project.name);
            }
        }
        let again = tree("again")?;
        crate::timed(&mut infer_cmd(&again))?;
        memo.push(crate::timed(&mut force_cmd(&again))?);
        let changed_file = again.join(&project.change);
        let text = std::fs::read_to_string(&changed_file)? + "/* changed by thunkmesh-bench */\n";
        std::fs::write(&changed_file, text)?;
        let summary = again.join("summary.json");
        let mut forced = force_cmd(&again);
        forced.arg("--summary-json").arg(&summary);
        changed.push(crate::timed(&mut infer_cmd(&again))? + crate::timed(&mut forced)?);
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary)?)?;
        changed_ran = format!("{} run", json["thunks_executed"]);
    }
    Ok(Row {
        dry_run: median(dry),
        make: median(make),
        infer: median(infer),
        force: median(force),
        memo_rerun: median(memo),
        changed: median(changed),
        changed_ran,
    })
}

/// How each Debian project of the corpus is configured.
fn configure_step(name: &str) -> Result<&'static [&'static str]> {
    Ok(match name {
        "lz4" => &[],
        "xz-utils" | "mosh" => &["./configure"],
        "sqlite3" => &["./configure", "--disable-tcl"],
        other => bail!("no recipe for {other}: the Debian projects are lz4, xz-utils, mosh and sqlite3"),
    })
}

/// A Debian project built in one folder: `make -jN`, then `make clean`, `infer -- make -jN` and
/// `force --all` there (every ELF file and archive compared with make's), then `make clean`,
/// `infer` and a `force` that the memo cache answers.
fn in_place(binary: &Path, name: &str, args: &InferArgs) -> Result<Row> {
    let configure = configure_step(name)?;
    let jobs = format!("-j{}", args.workers);
    let (mut make, mut infer, mut force, mut memo) = (vec![], vec![], vec![], vec![]);
    for _ in 0..args.reps {
        let scratch = tempfile::tempdir()?;
        let tree = unpack(name, scratch.path())?;
        if let Some((program, rest)) = configure.split_first() {
            crate::timed(Command::new(program).args(rest).current_dir(&tree))?;
        }
        let run = |c: &mut Command| crate::timed(c.current_dir(&tree));
        make.push(run(Command::new("make").arg("-s").arg(&jobs))?);
        let made = outputs(&tree)?;
        run(Command::new("make").arg("clean"))?;
        let infer_cmd = || {
            let mut c = Command::new(binary);
            c.args(["infer", "--", "make", "-s", &jobs]);
            c
        };
        let force_cmd = || {
            let mut c = Command::new(binary);
            c.args(["force", "--all", "--workers", &args.workers.to_string()]);
            c
        };
        infer.push(run(&mut infer_cmd())?);
        force.push(run(&mut force_cmd())?);
        let forced = outputs(&tree)?;
        if let Some((file, _)) = made.iter().find(|(f, bytes)| forced.get(*f) != Some(bytes)) {
            bail!("{name}: {} differs from make's", file.display());
        }
        run(Command::new("make").arg("clean"))?;
        run(&mut infer_cmd())?;
        memo.push(run(&mut force_cmd())?);
    }
    // `make -n` is not measured: a recursive automake tree cannot dry-run before its libraries exist.
    Ok(Row {
        dry_run: f64::NAN,
        make: median(make),
        infer: median(infer),
        force: median(force),
        memo_rerun: median(memo),
        changed: f64::NAN,
        changed_ran: "-".into(),
    })
}

/// Debian's source package `name` (without its patches) unpacked into `dir`.
fn unpack(name: &str, dir: &Path) -> Result<PathBuf> {
    let tree = dir.join(name);
    crate::timed(Command::new("dpkg-source").args(["-x", "--skip-patches"]).arg(dsc(name)?).arg(&tree))?;
    Ok(tree)
}

/// The `.dsc` of Debian's source package `name`, fetched into `target/sources/NAME`.
fn dsc(name: &str) -> Result<PathBuf> {
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sources").join(name);
    std::fs::read_dir(&sources)
        .ok()
        .and_then(|d| d.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "dsc")))
        .with_context(|| format!("no {name} source package in {}: run scripts/fetch-sources {name}", sources.display()))
}

/// Every ELF file and `ar` archive under `dir` (outside the state folder), with its bytes.
fn outputs(dir: &Path) -> Result<std::collections::BTreeMap<PathBuf, Vec<u8>>> {
    let mut found = std::collections::BTreeMap::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let (path, kind) = (entry.path(), entry.file_type()?);
            if kind.is_dir() && entry.file_name() != ".thunkmesh" {
                folders.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path)?;
                if bytes.starts_with(b"\x7fELF") || bytes.starts_with(b"!<arch>\n") {
                    found.insert(path, bytes);
                }
            }
        }
    }
    Ok(found)
}

/// Seconds as the table shows them; `-` for a step not measured.
fn secs(value: f64) -> String {
    match value.is_nan() {
        true => "-".into(),
        false => format!("{value:.2}s"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// zlib 1.2.13 from Debian, configured with `--static`; `make libz.a example minigzip`.
fn zlib() -> Result<Project> {
    let dsc = dsc("zlib")?;
    let prepare = move |dir: &Path| -> Result<()> {
        let tree = dir.join("zlib");
        crate::timed(Command::new("dpkg-source").arg("-x").arg(&dsc).arg(&tree))?;
        crate::timed(Command::new("./configure").arg("--static").current_dir(&tree))?;
        for entry in std::fs::read_dir(&tree)? {
            let entry = entry?;
            std::fs::rename(entry.path(), dir.join(entry.file_name()))?;
        }
        Ok(std::fs::remove_dir(&tree)?)
    };
    Ok(Project {
        name: "zlib".into(),
        prepare: Box::new(prepare),
        targets: ["libz.a", "example", "minigzip"].map(String::from).to_vec(),
        change: "adler32.c".into(),
    })
}

/// `sources` C files of some dozens of functions each, built into a static library and a
/// program that calls one function of each.
fn synthetic(sources: usize) -> Project {
    let prepare = move |dir: &Path| -> Result<()> {
        let mut main = String::from("#include <stdio.h>\n");
        for i in 0..sources {
            main.push_str(&format!("long f{i}(long);\n"));
            std::fs::write(dir.join(format!("s{i}.c")), source(i))?;
        }
        main.push_str("int main(void) { long t = 0;\n");
        for i in 0..sources {
            main.push_str(&format!("  t += f{i}({i});\n"));
        }
        main.push_str("  printf(\"%ld\\n\", t); return 0; }\n");
        std::fs::write(dir.join("main.c"), main)?;
        let objects: Vec<String> = (0..sources).map(|i| format!("s{i}.o")).collect();
        let makefile = format!(
            "CFLAGS = -O2\nOBJS = {}\n\nprog: main.o libsyn.a\n\t$(CC) $(CFLAGS) -o prog main.o -L. -lsyn\n\nlibsyn.a: $(OBJS)\n\tar rc libsyn.a $(OBJS)\n\n%.o: %.c\n\t$(CC) $(CFLAGS) -c -o $@ $<\n",
            objects.join(" ")
        );
        Ok(std::fs::write(dir.join("Makefile"), makefile)?)
    };
    Project {
        name: format!("synthetic-{sources}"),
        prepare: Box::new(prepare),
        targets: vec!["prog".into()],
        change: "s0.c".into(),
    }
}

/// Source `i` of the synthetic project: forty small functions and one that calls them.
fn source(i: usize) -> String {
    let mut text = format!("static long g{i};\n");
    for k in 0..40 {
        text.push_str(&format!(
            "static long h{k}(long x) {{ long a[16]; for (int j = 0; j < 16; j++) a[j] = x * j + {k}; long s = 0; for (int j = 0; j < 16; j++) s ^= a[j] << (j % 7); return s + g{i}; }}\n"
        ));
    }
    text.push_str(&format!("long f{i}(long x) {{ long s = 0;"));
    for k in 0..40 {
        text.push_str(&format!(" s += h{k}(x + {k});"));
    }
    text.push_str(" return s; }\n");
    text
}
