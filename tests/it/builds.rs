//! The walls real builds hit under `infer` (issue 27), each on a small project of its own:
//! tools called by absolute path and by versioned names, every spelling of `ar` that automake,
//! libtool and CMake use, files named inside `-Wl,` options, response files, `-g` objects that
//! name the real folder, generators the build compiles and then runs, configure steps, and
//! `force` keeping what completed. Each builds with `make` first, then in the same folder through
//! `infer` and `force --all`, and compares the bytes.

use std::path::Path;

use crate::infer::{force, tm};
use crate::util::Run;

/// Writes `files` into `dir`.
fn project(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
}

fn run_make(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("make").arg("-s").args(args).current_dir(dir).output().expect("make");
    assert!(out.status.success(), "make failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Builds `built` with `make ARGS` in `dir`, removes them, builds them again in the same folder
/// through `infer -- make ARGS` and `force --all`, and checks each has make's bytes. Returns what
/// `infer` and `force` said.
fn as_make_builds_it(dir: &Path, args: &[&str], built: &[&str]) -> (Run, Run) {
    through_infer(dir, args, built, &[])
}

/// [`as_make_builds_it`], where the files of `forced_early` are real already when `infer` ends
/// (a generator the build ran, what a tool that reads built files read); every other file of
/// `built` must be a placeholder then.
fn through_infer(dir: &Path, args: &[&str], built: &[&str], forced_early: &[&str]) -> (Run, Run) {
    run_make(dir, args);
    let made: Vec<Vec<u8>> = built.iter().map(|f| std::fs::read(dir.join(f)).expect("make built it")).collect();
    for file in built {
        std::fs::remove_file(dir.join(file)).expect("remove");
    }
    let infer = tm(dir, &[&["infer", "--", "make", "-s"][..], args].concat());
    infer.ok();
    for file in built.iter().filter(|f| !forced_early.contains(f)) {
        let text = std::fs::read(dir.join(file)).expect("a placeholder");
        assert!(text.len() < 512 && text.windows(11).any(|w| w == b"# thunkmesh"), "{file} was built for real");
    }
    let forced = force(dir, &["--all"]);
    forced.ok();
    for (file, made) in built.iter().zip(made) {
        assert!(std::fs::read(dir.join(file)).expect("forced") == made, "{file} differs from make's");
    }
    (infer, forced)
}

const LIBRARY: [(&str, &str); 4] = [
    ("a.c", "#include \"ab.h\"\nint a(int x) { return x + B; }\n"),
    ("b.c", "#include \"ab.h\"\nint hidden(void) { return 1; }\nint b(int x) { return 2 * x + hidden(); }\n"),
    ("ab.h", "#define B 40\nint a(int x);\nint b(int x);\n"),
    ("main.c", "#include <stdio.h>\n#include \"ab.h\"\nint main(void) { printf(\"%d\\n\", a(b(1)) - 1); return 0; }\n"),
];

/// automake's and libtool's `ar cru`, Lua's `ar rcu`, `ar -r -c`, CMake's `ar qc` + `ranlib`, a
/// thin archive (`T`) that a link reads with its members;
/// a shared library whose version script is named only inside `-Wl,` and whose objects come
/// from a response file the build removes at once; `-g -O2`, autotools' default, whose objects
/// name the real folder in their debug information as make's do.
#[test]
fn archives_version_scripts_response_files_and_debug_info_come_out_as_make_makes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    project(dir.path(), &LIBRARY);
    let makefile = "CFLAGS = -g -O2 -fPIC\n\
        all: prog thin libcru.a librcu.a libdash.a libqc.a libab.so\n\
        %.o: %.c ab.h\n\t$(CC) $(CFLAGS) -c $< -o $@\n\
        libcru.a: a.o b.o\n\tar cru $@ a.o b.o\n\tranlib $@\n\
        librcu.a: a.o b.o\n\tar rcu $@ a.o b.o\n\
        libdash.a: a.o b.o\n\tar -r -c $@ a.o b.o\n\
        libqc.a: a.o b.o\n\tar qc $@ a.o b.o\n\tranlib $@\n\
        libab.so: a.o b.o ab.map\n\techo a.o b.o > objs.rsp\n\t\
        $(CC) -shared -Wl,-version-script -Wl,ab.map -Wl,-soname,libab.so.1 -o $@ @objs.rsp\n\trm objs.rsp\n\
        libthin.a: a.o b.o\n\tar rcT $@ a.o b.o\n\
        thin: main.o libthin.a\n\t$(CC) -o $@ main.o libthin.a\n\
        prog: main.o libcru.a\n\t$(CC) -g -o $@ main.o -L. -lcru\n";
    project(dir.path(), &[("Makefile", makefile), ("ab.map", "{ global: a; b; local: *; };\n")]);
    let built = [
        "a.o",
        "b.o",
        "main.o",
        "libcru.a",
        "librcu.a",
        "libdash.a",
        "libqc.a",
        "libab.so",
        "libthin.a",
        "thin",
        "prog",
    ];
    let (infer, _) = as_make_builds_it(dir.path(), &[], &built);
    assert!(infer.stderr.contains("recorded as thunks"), "{}", infer.stderr);
    assert!(!infer.stderr.contains("ran the real tool"), "every call was modelled: {}", infer.stderr);
    let object = std::fs::read(dir.path().join("a.o")).expect("read");
    let folder = dir.path().display().to_string();
    assert!(object.windows(folder.len()).any(|w| w == folder.as_bytes()), "the debug info names {folder}");
    assert!(!object.windows(7).any(|w| w == b"/thunk/"), "and not the sandbox");
    for program in ["prog", "thin"] {
        let said = std::process::Command::new(dir.path().join(program)).output().expect("run it");
        assert_eq!(said.stdout, b"42\n", "{program}");
    }
}

/// CMake calls `/usr/bin/cc` and `/usr/bin/ar` by path, with absolute source and include paths;
/// other builds name a versioned compiler. The mount namespace of `infer` catches them all.
#[test]
fn tools_called_by_absolute_and_versioned_names_are_caught() {
    if !crate::util::root_or_skip(
        "builds::tools_called_by_absolute_and_versioned_names_are_caught",
        "catching calls by path takes a mount namespace (root, as in CI)",
    ) {
        return;
    }
    let versioned = std::fs::read_dir("/usr/bin")
        .expect("/usr/bin")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("gcc-") && n[4..].chars().all(|c| c.is_ascii_digit()))
        .expect("a versioned gcc in /usr/bin");
    let dir = tempfile::tempdir().expect("tempdir");
    project(dir.path(), &LIBRARY);
    let makefile = format!(
        "all: prog\n\
         %.o: %.c ab.h\n\t/usr/bin/cc -g -I$(CURDIR) -c $(CURDIR)/$< -o $(CURDIR)/$@\n\
         libab.a: a.o b.o\n\t/usr/bin/ar qc libab.a a.o b.o\n\t/usr/bin/ranlib libab.a\n\
         prog: main.o libab.a\n\t{versioned} -o $@ main.o libab.a\n"
    );
    project(dir.path(), &[("Makefile", &makefile)]);
    let (infer, _) = as_make_builds_it(dir.path(), &[], &["a.o", "b.o", "main.o", "libab.a", "prog"]);
    assert!(infer.stderr.contains("saw 6 call(s) of modelled tools: 6 recorded as thunks"), "{}", infer.stderr);
    let said = std::process::Command::new(dir.path().join("prog")).output().expect("run prog");
    assert_eq!(said.stdout, b"42\n");
}

/// sqlite's way: the build compiles a generator, runs it into a header, and compiles against
/// that header; here the generator also loads a shared library of the build. The generator's
/// placeholder forces itself and that library when run; nothing empty is left.
#[test]
fn a_generator_the_build_compiles_and_runs_works_under_infer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let makefile = "prog: main.o\n\t$(CC) -o $@ main.o\n\
        main.o: main.c table.h\n\t$(CC) -O2 -c main.c\n\
        table.h: gen\n\t./gen 40 > table.h\n\
        gen: gen.c libval.so\n\t$(CC) -O2 -o gen gen.c -L. -lval -Wl,-rpath,$(CURDIR)\n\
        libval.so: val.c\n\t$(CC) -O2 -fPIC -shared -Wl,-soname,libval.so.1 -o libval.so.1.0 val.c\n\t\
        ln -sf libval.so.1.0 libval.so.1\n\tln -sf libval.so.1.0 libval.so\n";
    let generator = "#include <stdio.h>\n#include <stdlib.h>\nint value(void);\n\
        int main(int argc, char **argv) { printf(\"#define ANSWER %d\\n\", atoi(argv[1]) + value()); return 0; }\n";
    let main = "#include <stdio.h>\n#include \"table.h\"\nint main(void) { printf(\"%d\\n\", ANSWER); return 0; }\n";
    let library = "int value(void) { return 2; }\n";
    project(dir.path(), &[("Makefile", makefile), ("gen.c", generator), ("main.c", main), ("val.c", library)]);
    let built = ["gen", "table.h", "main.o", "prog", "libval.so.1.0"];
    let (infer, _) = through_infer(dir.path(), &[], &built, &["gen", "table.h", "libval.so.1.0"]);
    assert!(infer.stderr.contains("saw 4 call(s) of modelled tools: 4 recorded as thunks"), "{}", infer.stderr);
    assert_eq!(std::fs::read_to_string(dir.path().join("table.h")).expect("read"), "#define ANSWER 42\n");
    let said = std::process::Command::new(dir.path().join("prog")).output().expect("run prog");
    assert_eq!(said.stdout, b"42\n");
}

/// libtool's way of making a static library of a convenience library: `ar x` of the archive
/// (still a placeholder under `infer`), `ar t` to check its member names, and `ar cr` of the
/// extracted members; the convenience library itself is made in two steps (added to in place).
#[test]
fn members_of_an_archive_that_is_still_a_placeholder_are_extracted_and_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    project(dir.path(), &LIBRARY);
    let makefile = "prog: main.o libfull.a\n\t$(CC) -o prog main.o libfull.a\n\
        %.o: %.c ab.h\n\t$(CC) -O2 -c $< -o $@\n\
        libconv.a: a.o b.o\n\trm -f $@\n\tar cr $@ a.o\n\tar cr $@ b.o\n\tranlib $@\n\
        libfull.a: libconv.a\n\trm -rf lax && mkdir lax\n\tcd lax && ar x $(CURDIR)/libconv.a\n\t\
        ar t libconv.a > members.txt\n\tar cr $@ lax/a.o lax/b.o\n\tranlib $@\n";
    project(dir.path(), &[("Makefile", makefile)]);
    let (infer, _) = as_make_builds_it(dir.path(), &[], &["a.o", "b.o", "main.o", "libconv.a", "libfull.a", "prog"]);
    assert!(!infer.stderr.contains("ran the real tool"), "every call was modelled: {}", infer.stderr);
    assert_eq!(std::fs::read_to_string(dir.path().join("members.txt")).expect("read"), "a.o\nb.o\n");
    let said = std::process::Command::new(dir.path().join("prog")).output().expect("run prog");
    assert_eq!(said.stdout, b"42\n");
}

/// What the preprocessor does not name and the stub link does not open: an assembler source
/// (`.s`, nettle's), `-ffast-math`'s `crtfastmath.o` (libogg's), and the startup files libtool's
/// C++ shared links name by path with `-nostdlib` (flac's).
#[test]
fn assembler_sources_fast_math_and_startup_files_named_by_path_are_in_the_thunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    project(dir.path(), &LIBRARY);
    let assembly = "\t.text\n\t.globl seven\n\t.type seven, @function\nseven:\n\tmovl $7, %eax\n\tret\n\
        \t.section .note.GNU-stack,\"\",@progbits\n";
    let makefile = "CRT = $(shell $(CC) -print-file-name=crti.o) $(shell $(CC) -print-file-name=crtbeginS.o)\n\
        END = $(shell $(CC) -print-file-name=crtendS.o) $(shell $(CC) -print-file-name=crtn.o)\n\
        all: fast libab.so seven.o\n\
        %.o: %.c ab.h\n\t$(CC) -O2 -fPIC -c $< -o $@\n\
        seven.o: seven.s\n\t$(CC) -c seven.s -o seven.o\n\
        fast: main.o a.o b.o\n\t$(CC) -ffast-math -o fast main.o a.o b.o\n\
        libab.so: a.o b.o\n\t$(CC) -shared -nostdlib $(CRT) a.o b.o -lc $(END) -Wl,-soname,libab.so -o libab.so\n";
    project(dir.path(), &[("Makefile", makefile), ("seven.s", assembly)]);
    as_make_builds_it(dir.path(), &[], &["a.o", "b.o", "main.o", "seven.o", "fast", "libab.so"]);
    let said = std::process::Command::new(dir.path().join("fast")).output().expect("run fast");
    assert_eq!(said.stdout, b"42\n");
}

/// Meson archives with GCC's wrapper, `gcc-ar csrDT` (which runs `ar --plugin` with the LTO
/// plugin found beside its compiler), and pixman links with `-fopenmp` (the driver reads
/// `libgomp.spec`): both in the thunks' roots (pixman failed on each).
#[test]
fn gcc_ar_and_openmp_links_bring_their_plugin_and_spec() {
    if !crate::util::root_or_skip(
        "builds::gcc_ar_and_openmp_links_bring_their_plugin_and_spec",
        "gcc-ar is caught by path, which takes a mount namespace (root, as in CI)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    project(dir.path(), &LIBRARY);
    let makefile = "all: omp thin\n\
        %.o: %.c ab.h\n\t$(CC) -O2 -c $< -o $@\n\
        libab.a: a.o b.o\n\trm -f $@\n\tgcc-ar csrDT $@ a.o b.o\n\
        thin: main.o libab.a\n\t$(CC) -o $@ main.o libab.a\n\
        omp: main.o a.o b.o\n\t$(CC) -fopenmp -o $@ main.o a.o b.o\n";
    project(dir.path(), &[("Makefile", makefile)]);
    as_make_builds_it(dir.path(), &[], &["a.o", "b.o", "main.o", "libab.a", "thin", "omp"]);
    for program in ["thin", "omp"] {
        let said = std::process::Command::new(dir.path().join(program)).output().expect("run it");
        assert_eq!(said.stdout, b"42\n", "{program}");
    }
}

/// libtool's `-export-symbols-regex` (jq's): `nm` of objects that are still placeholders makes
/// the version script of a shared library. The objects `nm` reads are forced first, so the script
/// lists the real symbols (it was empty, and the link failed at force time).
#[test]
fn a_tool_that_reads_built_files_gets_them_forced_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    project(dir.path(), &LIBRARY);
    let makefile = "libab.so: a.o b.o\n\t\
        nm -B a.o b.o | sed -n 's/^[0-9a-f]* T //p' | sed 's/$$/;/' > syms\n\t\
        (echo '{ global:'; cat syms; echo 'local: *; };') > ab.ver\n\t\
        $(CC) -shared -Wl,--version-script=ab.ver -o libab.so a.o b.o\n\
        %.o: %.c ab.h\n\t$(CC) -O2 -fPIC -c $< -o $@\n";
    project(dir.path(), &[("Makefile", makefile)]);
    let (infer, _) = through_infer(dir.path(), &[], &["a.o", "b.o", "libab.so"], &["a.o", "b.o"]);
    assert!(infer.stderr.contains("reader: reads 2 built file(s), forced first"), "{}", infer.stderr);
    assert_eq!(std::fs::read_to_string(dir.path().join("syms")).expect("read"), "a;\nb;\nhidden;\n");
}

/// A link against a system library that needs another (`libreadline.so` needs
/// `libtinfo.so.6`, which the linker opens to check readline's undefined symbols): the link's
/// own root holds both.
#[test]
fn a_link_against_a_system_library_brings_what_that_library_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = "#include <stdio.h>\n#include <stdlib.h>\n#include <readline/readline.h>\n\
        int main(int argc, char **argv) { if (argc > 5) free(readline(\"> \")); puts(\"linked\"); return 0; }\n";
    let makefile = "prog: main.o\n\t$(CC) -o prog main.o -lreadline\nmain.o: main.c\n\t$(CC) -O2 -c main.c\n";
    project(dir.path(), &[("Makefile", makefile), ("main.c", main)]);
    as_make_builds_it(dir.path(), &[], &["main.o", "prog"]);
    let said = std::process::Command::new(dir.path().join("prog")).output().expect("run prog");
    assert_eq!(said.stdout, b"linked\n");
}

/// A configure step under `infer` is refused before anything runs; a probe that a build makes
/// (autoconf's `conftest`) runs the real compiler, and `infer` counts and names it.
#[test]
fn configure_steps_are_refused_and_probes_run_for_real() {
    let dir = tempfile::tempdir().expect("tempdir");
    project(dir.path(), &[("configure", "#!/bin/sh\necho configured > configured\n")]);
    for step in [&["./configure"][..], &["cmake", "-S", ".", "-B", "build"]] {
        let refused = tm(dir.path(), &[&["infer", "--"][..], step].concat());
        assert_eq!(refused.code, Some(2), "{}", refused.stderr);
        assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
        let said = format!("error: `{}` is a configure step", step.join(" "));
        assert!(refused.stderr.starts_with(&said), "{}", refused.stderr);
    }
    assert!(!dir.path().join("configured").exists(), "nothing ran");
    project(dir.path(), &[("conftest.c", "int main(void) { return 0; }\n")]);
    let probe =
        tm(dir.path(), &["infer", "--", "sh", "-c", "cc -c conftest.c -o conftest.o && cc -E conftest.c >/dev/null"]);
    probe.ok();
    let object = std::fs::read(dir.path().join("conftest.o")).expect("read");
    assert!(object.starts_with(b"\x7fELF"), "the probe's object is real");
    assert!(
        probe.stderr.contains("saw 2 call(s) of modelled tools: 0 recorded as thunks, 2 ran the real tool:"),
        "{}",
        probe.stderr
    );
    assert!(probe.stderr.contains("cc: a configure probe (conftest.c)"), "{}", probe.stderr);
    let nothing = tm(dir.path(), &["infer", "--", "true"]);
    nothing.ok();
    assert!(nothing.stderr.contains("infer: saw no call of a compiler, archiver or linker"), "{}", nothing.stderr);
}

/// `force` puts every file that was made in place even when another thunk fails, and a named
/// file that is built already is up to date (exit 0), as make says; a missing one is an error.
#[test]
fn force_keeps_what_completed_and_says_when_a_file_is_up_to_date() {
    let dir = tempfile::tempdir().expect("tempdir");
    tm(dir.path(), &["wrap", "--out", "ok.txt", "--", "sh", "-c", "echo made > ok.txt"]).ok();
    tm(dir.path(), &["wrap", "--out", "bad.txt", "--", "sh", "-c", "echo broken >&2; exit 3"]).ok();
    let forced = force(dir.path(), &["--all"]);
    assert_eq!(forced.code, Some(1), "{}\n{}", forced.stdout, forced.stderr);
    assert!(forced.stdout.contains("forced 1 of 2 placeholder(s)"), "{}", forced.stdout);
    assert_eq!(std::fs::read_to_string(dir.path().join("ok.txt")).expect("read"), "made\n");
    assert!(std::fs::read_to_string(dir.path().join("bad.txt")).expect("read").contains("# thunkmesh placeholder"));
    let again = tm(dir.path(), &["force", "ok.txt"]);
    again.ok();
    assert!(again.stdout.contains("nothing to force: ok.txt up to date (not a placeholder)"), "{}", again.stdout);
    let missing = tm(dir.path(), &["force", "nothere.txt"]);
    assert_eq!(missing.code, Some(2), "{}", missing.stderr);
    assert!(missing.stderr.starts_with("error: nothere.txt: no such file"), "{}", missing.stderr);
}
