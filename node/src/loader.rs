//! An own root without namespaces: the fallback where the kernel gives a node no private root (a
//! Lambda function, `--sandbox off`). The root's files are laid out as a tree as usual
//! (`roots.rs`), and its program is started by the root's own ELF loader with the root's library
//! folders as its only search path (`ld-linux-x86-64.so.2 --library-path DIRS --argv0 PROGRAM
//! PROGRAM ARGS`), so it runs with the libraries that were shipped, not the node's. What this
//! cannot do: the program sees the node's file system, so an absolute path it opens (a data file
//! under `/usr/share`) or a program it starts (`sh -c ffmpeg`) is the node's, not the root's; a
//! program that is not ELF (a script) cannot start this way. Such a thunk needs a node with
//! namespaces, and the message says so.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The most folders of a tree searched for the loader and libraries (a shipped Python has
/// thousands of files, a few hundred folders).
const MAX_FOLDERS: usize = 10_000;

/// How to start the program at `target` (in the tree, or shipped into the sandbox) with the
/// root laid out at `tree` through the root's loader: the loader's path, and the arguments
/// before the thunk's own. `shown` names the program in errors.
pub(crate) fn command(tree: &Path, target: &Path, shown: &str) -> Result<(PathBuf, Vec<String>), String> {
    if !is_elf(target) {
        return Err(format!(
            "{shown} is not an ELF program; without namespaces only an ELF program with a shipped root can run"
        ));
    }
    let (loader, libraries) = survey(tree)?;
    let loader = loader.ok_or("the thunk's own root holds no ELF loader (ld-linux*.so*) to start it with")?;
    let target = target.display().to_string();
    let args = ["--library-path".to_owned(), libraries.join(":"), "--argv0".to_owned(), target.clone(), target];
    Ok((loader, args.into()))
}

/// The loader of the tree, and every folder of it that holds a shared library.
fn survey(tree: &Path) -> Result<(Option<PathBuf>, Vec<String>), String> {
    let mut loader = None;
    let mut libraries = Vec::new();
    let mut pending = vec![tree.to_owned()];
    let mut seen = 0;
    while let Some(dir) = pending.pop() {
        seen += 1;
        if seen > MAX_FOLDERS {
            return Err(format!("the thunk's own root has more than {MAX_FOLDERS} folders"));
        }
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut holds_library = false;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(entry.path()),
                Ok(_) if name.starts_with("ld-linux") && name.contains(".so") => loader = Some(entry.path()),
                Ok(_) if name.ends_with(".so") || name.contains(".so.") => holds_library = true,
                _ => {}
            }
        }
        if holds_library {
            libraries.push(dir.display().to_string());
        }
    }
    libraries.sort();
    Ok((loader, libraries))
}

fn is_elf(path: &Path) -> bool {
    let mut head = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == *b"\x7fELF"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree with a program, its libraries and loader starts through that loader, with only
    /// the tree's library folders searched; a script cannot.
    #[test]
    fn a_tree_s_program_starts_through_the_tree_s_loader() {
        let tree = tempfile::tempdir().expect("tempdir");
        let put = |path: &str, from: &Path| {
            let to = tree.path().join(path);
            std::fs::create_dir_all(to.parent().expect("a folder")).expect("mkdir");
            std::fs::copy(from, to).expect("copy");
        };
        let sh = Path::new("/bin/sh");
        put("bin/sh", sh);
        let libraries = ldd(sh);
        for library in &libraries {
            put(library.strip_prefix("/").expect("absolute").to_str().expect("utf-8"), library);
        }
        let (loader, args) = command(tree.path(), &tree.path().join("bin/sh"), "/bin/sh").expect("a command");
        assert!(loader.starts_with(tree.path()) && loader.to_string_lossy().contains("ld-linux"), "{loader:?}");
        assert_eq!(args[0], "--library-path");
        assert!(args[1].split(':').all(|d| d.starts_with(&*tree.path().to_string_lossy())), "{args:?}");
        let ran = std::process::Command::new(&loader).args(&args).args(["-c", "echo shipped"]).output().expect("run");
        assert_eq!(String::from_utf8_lossy(&ran.stdout), "shipped\n");
        std::fs::write(tree.path().join("bin/script"), "#!/bin/sh\n").expect("write");
        let script = tree.path().join("bin/script");
        assert!(command(tree.path(), &script, "/bin/script").is_err_and(|e| e.contains("not an ELF")));
    }

    /// The libraries `ldd` names for `program`.
    fn ldd(program: &Path) -> Vec<PathBuf> {
        let out = std::process::Command::new("ldd").arg(program).output().expect("ldd");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split("=>").last()?.split_whitespace().next().filter(|f| f.starts_with('/')).map(PathBuf::from)
            })
            .collect()
    }
}
