//! The deployment package: a zip with one executable entry, `bootstrap`, which is how the
//! `provided.al2023` runtime finds a custom runtime. The binary is checked first: it must be a
//! Linux ELF executable for the function's architecture, or the function would fail at its first
//! cold start with an error far from the cause.

use std::io::Write;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;

/// The name the runtime starts.
pub const BOOTSTRAP: &str = "bootstrap";

/// A function's instruction set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86-64.
    X86_64,
    /// AArch64 (Graviton), about 20% cheaper per GB-second.
    Arm64,
}

impl Arch {
    /// The ELF `e_machine` of binaries for this architecture.
    fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Arm64 => 183,
        }
    }

    /// The name Lambda uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The architecture of a machine type as `uname -m` or `std::env::consts::ARCH` spell it.
    pub fn from_machine(machine: &str) -> Option<Arch> {
        match machine {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

/// Why a binary cannot be packaged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// The binary cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The binary.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a 64-bit little-endian ELF executable.
    #[error("{path} is not a 64-bit Linux executable (ELF); build one as docs/lambda.md shows")]
    NotElf {
        /// The binary.
        path: PathBuf,
    },
    /// Built for another instruction set than the function's.
    #[error(
        "{path} is built for ELF machine {found}, not {arch}; build for the function's architecture or pass --arch"
    )]
    WrongArch {
        /// The binary.
        path: PathBuf,
        /// Its `e_machine`.
        found: u16,
        /// The function's architecture.
        arch: &'static str,
    },
    /// Writing the archive failed.
    #[error("cannot write the zip archive: {0}")]
    Zip(#[from] zip::result::ZipError),
}

/// The zip archive (in memory) that deploys `binary` as a function for `arch`.
pub fn package(binary: &Path, arch: Arch) -> Result<Vec<u8>, PackageError> {
    let bytes = std::fs::read(binary).map_err(|source| PackageError::Read { path: binary.into(), source })?;
    check_elf(binary, &bytes, arch)?;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).unix_permissions(0o755);
    zip.start_file(BOOTSTRAP, options)?;
    zip.write_all(&bytes).map_err(zip::result::ZipError::Io)?;
    Ok(zip.finish()?.into_inner())
}

/// Checks the ELF identification and machine of `bytes`.
fn check_elf(path: &Path, bytes: &[u8], arch: Arch) -> Result<(), PackageError> {
    // e_ident: magic, class 2 (64-bit), data 1 (little-endian); e_machine at offset 18.
    let header = bytes.get(..20).filter(|h| h[..4] == *b"\x7fELF" && h[4] == 2 && h[5] == 1);
    let Some(header) = header else {
        return Err(PackageError::NotElf { path: path.into() });
    };
    let found = u16::from_le_bytes([header[18], header[19]]);
    if found != arch.elf_machine() {
        return Err(PackageError::WrongArch { path: path.into(), found, arch: arch.as_str() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn elf(machine: u16) -> Vec<u8> {
        let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
        bytes.resize(18, 0);
        bytes.extend(machine.to_le_bytes());
        bytes.extend(b"rest of the program");
        bytes
    }

    #[test]
    fn the_archive_holds_the_binary_as_an_executable_bootstrap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let binary = dir.path().join("thunkmesh");
        std::fs::write(&binary, elf(183)).expect("write");
        let zip = package(&binary, Arch::Arm64).expect("package");
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("a zip");
        assert_eq!(archive.len(), 1);
        let mut entry = archive.by_index(0).expect("entry");
        assert_eq!(entry.name().expect("a UTF-8 name"), BOOTSTRAP);
        assert_eq!(entry.unix_mode().map(|m| m & 0o777), Some(0o755));
        let mut content = Vec::new();
        entry.read_to_end(&mut content).expect("read");
        assert_eq!(content, elf(183));
    }

    #[test]
    fn a_binary_for_another_machine_or_not_elf_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let binary = dir.path().join("thunkmesh");
        std::fs::write(&binary, elf(62)).expect("write");
        let e = package(&binary, Arch::Arm64).expect_err("x86-64 binary for arm64");
        assert!(e.to_string().contains("ELF machine 62, not arm64"), "{e}");
        std::fs::write(&binary, b"#!/bin/sh\n").expect("write");
        let e = package(&binary, Arch::X86_64).expect_err("a script");
        assert!(matches!(e, PackageError::NotElf { .. }) && e.to_string().contains("thunkmesh"), "{e}");
        let e = package(&dir.path().join("missing"), Arch::X86_64).expect_err("missing");
        assert!(e.to_string().starts_with("cannot read"), "{e}");
    }
}
