//! What `infer` knows of the build command it runs, apart from running it: whether it is a
//! configure step (which must run outside `infer`: its probes need the real tools' answers at
//! once), which folder is the build folder (an out-of-tree CMake, Meson or automake build reads
//! sources beside its own folder), and what the models said of the calls they saw.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why `command` is a configure step, if it is one: `./configure`, `config.status`, `cmake`
/// (other than `--build`, `--install`, `-E`, `-P`), `meson setup`, `autoreconf`, `autogen.sh`.
pub fn configure_step(command: &[String]) -> Option<String> {
    let (program, args) = command.split_first()?;
    let name = Path::new(program).file_name()?.to_string_lossy().into_owned();
    let first = args.first().map(String::as_str);
    let configures = match name.as_str() {
        "configure" | "config.status" | "autoreconf" | "autogen.sh" | "bootstrap" => true,
        "cmake" => {
            !args.iter().any(|a| ["--build", "--install", "-E", "-P", "--version", "--help"].contains(&a.as_str()))
        }
        "meson" => {
            !matches!(first, Some("compile" | "test" | "install" | "introspect" | "dist" | "devenv" | "--version"))
        }
        _ => false,
    };
    configures.then(|| {
        format!(
            "`{}` is a configure step: its probes must run the real compiler, and their answers are \
             needed at once. Run it without infer, then infer the build (`thunkmesh infer -- make`, \
             `-- ninja`, `-- cmake --build DIR`, `-- meson compile -C DIR`)",
            command.join(" ")
        )
    })
}

/// The build folder for a build started in `cwd`: the nearest folder that holds `cwd` and the
/// source folder a configured CMake (`CMakeCache.txt`), Meson (`meson-info/meson-info.json`) or
/// automake (`Makefile`'s `abs_top_srcdir`) build in `cwd` names; `cwd` itself when it names none,
/// or when only `/` would hold both.
pub fn build_top(cwd: &Path) -> PathBuf {
    let common = source_folder(cwd).map(|source| common_ancestor(cwd, &source));
    common.filter(|c| c.parent().is_some()).unwrap_or_else(|| cwd.to_owned())
}

fn source_folder(cwd: &Path) -> Option<PathBuf> {
    let read = |name: &str| std::fs::read_to_string(cwd.join(name)).ok();
    let value = |text: String, key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key).map(|v| PathBuf::from(v.trim()))).filter(|p| p.is_absolute())
    };
    if let Some(found) = read("CMakeCache.txt").and_then(|t| value(t, "CMAKE_HOME_DIRECTORY:INTERNAL=")) {
        return Some(found);
    }
    if let Some(text) = read("meson-info/meson-info.json") {
        // `"source": "/abs/path"` inside `"directories"`; the file is JSON, but one key is enough.
        let after = text.split("\"source\"").nth(1)?;
        let quoted = after.split('"').nth(1)?;
        return Some(PathBuf::from(quoted)).filter(|p| p.is_absolute());
    }
    read("Makefile").and_then(|t| value(t, "abs_top_srcdir ="))
}

fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    a.components().zip(b.components()).take_while(|(x, y)| x == y).map(|(x, _)| x).collect()
}

/// What the models said of the calls of one build: one line each in the call log.
#[derive(Debug, Default, PartialEq)]
pub struct Calls {
    /// Calls that became thunks.
    pub recorded: usize,
    /// Calls that ran the real tool, by model and why, with how many.
    pub real: BTreeMap<(String, String), usize>,
    /// Calls that failed (the model said why on the build's output).
    pub failed: usize,
}

impl Calls {
    /// Reads the call log `text` (`model TAB outcome TAB why` a line).
    pub fn read(text: &str) -> Calls {
        let mut calls = Calls::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, '\t');
            let (model, outcome, why) = (parts.next(), parts.next(), parts.next().unwrap_or_default());
            match (model, outcome) {
                (_, Some("recorded")) => calls.recorded += 1,
                (Some(model), Some("real")) => *calls.real.entry((model.to_owned(), why.to_owned())).or_default() += 1,
                (_, Some("failed")) => calls.failed += 1,
                _ => {}
            }
        }
        calls
    }

    /// Every call seen.
    pub fn seen(&self) -> usize {
        self.recorded + self.real.values().sum::<usize>() + self.failed
    }

    /// The summary `infer` prints: how many calls it saw and what became of them, the most
    /// frequent reasons for running a real tool first (at most `shown` of them).
    pub fn summary(&self, shown: usize) -> String {
        let real: usize = self.real.values().sum();
        let mut text = format!("saw {} call(s) of modelled tools: {} recorded as thunks", self.seen(), self.recorded);
        if self.failed > 0 {
            text.push_str(&format!(", {} refused (said above)", self.failed));
        }
        if real == 0 {
            return text;
        }
        text.push_str(&format!(", {real} ran the real tool:"));
        let mut reasons: Vec<_> = self.real.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for ((model, why), count) in reasons.iter().take(shown) {
            text.push_str(&format!("\n  {count:>5} {model}: {why}"));
        }
        if reasons.len() > shown {
            text.push_str(&format!("\n  ({} other reasons; `infer -v` names each call's)", reasons.len() - shown));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn configure_steps_are_told_apart_from_builds() {
        for step in
            ["./configure --prefix=/usr", "../configure", "cmake -S . -B build -G Ninja", "cmake ..", "meson setup b"]
        {
            let why = configure_step(&words(step)).expect(step);
            assert!(why.starts_with(&format!("`{step}` is a configure step")), "{why}");
        }
        for build in ["make -j2", "ninja -C build", "cmake --build build", "meson compile -C b", "sh -c make"] {
            assert_eq!(configure_step(&words(build)), None, "{build}");
        }
    }

    #[test]
    fn an_out_of_tree_build_folder_reaches_up_to_its_sources() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (source, build) = (dir.path().join("json-c"), dir.path().join("json-c/build"));
        std::fs::create_dir_all(&build).expect("mkdir");
        assert_eq!(build_top(&build), build, "nothing configured");
        let cache = format!("# CMake\nCMAKE_HOME_DIRECTORY:INTERNAL={}\n", source.display());
        std::fs::write(build.join("CMakeCache.txt"), cache).expect("write");
        assert_eq!(build_top(&build), source);
        std::fs::write(build.join("CMakeCache.txt"), "CMAKE_HOME_DIRECTORY:INTERNAL=/elsewhere\n").expect("write");
        assert_eq!(build_top(&build), build, "only / holds both");
        std::fs::remove_file(build.join("CMakeCache.txt")).expect("rm");
        std::fs::write(build.join("Makefile"), format!("abs_top_srcdir = {}\n", source.display())).expect("write");
        assert_eq!(build_top(&build), source);
    }

    #[test]
    fn the_call_log_is_summed_up_with_the_commonest_reasons_first() {
        let log = "cc\trecorded\t\ncc\treal\ta configure probe (conftest.c)\nar\trecorded\t\n\
                   cc\treal\t`-E` asks the compiler\ncc\treal\t`-E` asks the compiler\nld\tfailed\tx\n";
        let calls = Calls::read(log);
        assert_eq!((calls.seen(), calls.recorded, calls.failed), (6, 2, 1));
        assert_eq!(
            calls.summary(1),
            "saw 6 call(s) of modelled tools: 2 recorded as thunks, 1 refused (said above), 3 ran the real tool:\n\
             \x20     2 cc: `-E` asks the compiler\n  (1 other reasons; `infer -v` names each call's)"
        );
    }
}
