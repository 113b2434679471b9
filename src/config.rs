//! The config file: defaults for flags by their long names, read from `THUNKMESH_CONFIG` or else
//! `$XDG_CONFIG_HOME/thunkmesh/config.toml` (`~/.config/thunkmesh/config.toml`). Top-level keys
//! apply to every subcommand that has the flag, a table named after a subcommand (`[node]`,
//! `[run]`) to that one only. A flag on the command line, then its environment variable, win over
//! the file; the file wins over the built-in default. A key no subcommand takes is an error that
//! names the file and the key (exit status 2), as is a value that is not a string, number or
//! boolean.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Command, CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "THUNKMESH_CONFIG";

/// The largest config file read: a config file is a few lines; anything larger is a wrong path.
const MAX_CONFIG: u64 = 1 << 20;

/// Settings: flag name -> value as it would be typed.
type Settings = BTreeMap<String, String>;

/// Parses the command line over the config file's defaults; clap's own errors (and `--help`)
/// exit here as clap does.
pub fn parse() -> Result<Cli> {
    let mut command = Cli::command();
    let mut loaded = None;
    if let Some(path) = path() {
        let text = match thunkmesh_client::load::read_bounded(&path, MAX_CONFIG) {
            Ok(bytes) => {
                Some(String::from_utf8(bytes).with_context(|| format!("config file {}: not UTF-8", path.display()))?)
            }
            // Only a file named by THUNKMESH_CONFIG must exist.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os(CONFIG_ENV).is_none() => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read the config file {}", path.display())),
        };
        if let Some(text) = text {
            command = with_defaults(command, &text).with_context(|| format!("config file {}", path.display()))?;
            loaded = Some((path, values(&text)));
        }
    }
    let matches = match command.try_get_matches() {
        Ok(matches) => matches,
        Err(e) => return Err(from_config(e, loaded.as_ref())),
    };
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

/// A command line error that a value of the config file caused, named as the config file's; any
/// other (and `--help`, `--version`) ends the process as clap ends it.
fn from_config(e: clap::Error, loaded: Option<&(PathBuf, BTreeSet<String>)>) -> anyhow::Error {
    use clap::error::{ContextKind, ContextValue};
    let invalid = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => Some(value.clone()),
        _ => None,
    };
    match (loaded, invalid) {
        (Some((path, values)), Some(value)) if values.contains(&value) => {
            let said = e.to_string();
            let first = said.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
            anyhow::anyhow!("config file {}: {first}", path.display())
        }
        _ => e.exit(),
    }
}

/// Every value the config file `text` sets, as the command line would see it.
fn values(text: &str) -> BTreeSet<String> {
    let Ok(table) = text.parse::<toml::Table>() else { return BTreeSet::new() };
    let leaves = table.into_iter().flat_map(|(key, value)| match value {
        toml::Value::Table(t) => t.into_iter().map(|(k, v)| (format!("{key}.{k}"), v)).collect::<Vec<_>>(),
        v => vec![(key, v)],
    });
    leaves.filter_map(|(key, value)| typed(&key, value).ok()).collect()
}

fn path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(CONFIG_ENV) {
        return Some(path.into());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("thunkmesh/config.toml"))
}

/// `command` with the defaults `text` (TOML) sets.
pub fn with_defaults(command: Command, text: &str) -> Result<Command> {
    let table: toml::Table = text.parse()?;
    let mut common = Settings::new();
    let mut per_command = BTreeMap::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(t) => {
                let mut settings = Settings::new();
                for (k, v) in t {
                    settings.insert(normal(&k), typed(&format!("{key}.{k}"), v)?);
                }
                per_command.insert(key, settings);
            }
            v => {
                common.insert(normal(&key), typed(&key, v)?);
            }
        }
    }
    let mut used = BTreeSet::new();
    let command = apply(command, &common, &mut used);
    let names: Vec<String> = command.get_subcommands().map(|c| c.get_name().to_owned()).collect();
    let mut command = command;
    for (name, settings) in &per_command {
        if !names.contains(name) {
            bail!("`[{name}]`: thunkmesh has no subcommand `{name}`");
        }
        let mut used_here = BTreeSet::new();
        command = command.mut_subcommand(name, |sub| apply(sub, settings, &mut used_here));
        if let Some(unknown) = settings.keys().find(|k| !used_here.contains(*k)) {
            bail!("`{name}.{unknown}`: `thunkmesh {name}` has no flag --{unknown}");
        }
    }
    if let Some(unknown) = common.keys().find(|k| !used.contains(*k)) {
        bail!("`{unknown}`: no subcommand has a flag --{unknown}");
    }
    Ok(command)
}

/// Sets each flag of `command` and its subcommands named in `settings` to default to its value.
fn apply(command: Command, settings: &Settings, used: &mut BTreeSet<String>) -> Command {
    let command = command.mut_args(|arg| {
        let value = arg.get_long().and_then(|long| settings.get_key_value(long));
        match value {
            Some((key, value)) => {
                used.insert(key.clone());
                arg.default_value(value.clone()).required(false)
            }
            None => arg,
        }
    });
    let names: Vec<String> = command.get_subcommands().map(|c| c.get_name().to_owned()).collect();
    names.iter().fold(command, |command, name| command.mut_subcommand(name, |sub| apply(sub, settings, used)))
}

/// Keys may be written as the flag is (`state-dir`) or with underscores (`state_dir`).
fn normal(key: &str) -> String {
    key.replace('_', "-")
}

fn typed(key: &str, value: toml::Value) -> Result<String> {
    match value {
        toml::Value::String(s) => Ok(s),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => bail!("`{key}`: expected a string, number or boolean, found {}", other.type_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(config: &str, args: &[&str]) -> Result<Cli> {
        let command = with_defaults(Cli::command(), config)?;
        let matches = command.try_get_matches_from(std::iter::once("thunkmesh").chain(args.iter().copied()))?;
        Ok(Cli::from_arg_matches(&matches)?)
    }

    #[test]
    fn the_file_sets_defaults_and_the_command_line_wins() {
        let config = "workers = 7\nstate-dir = \"/var/lib/tm\"\n[node]\nslots = 3\n";
        let cli = parse_with(config, &["run", "job.toml"]).expect("parses");
        let crate::cli::Command::Run(run) = cli.command else { panic!("not run") };
        assert_eq!((run.flags.workers, run.flags.state_dir.to_str()), (Some(7), Some("/var/lib/tm")));
        let cli = parse_with(config, &["run", "job.toml", "-j", "2"]).expect("parses");
        let crate::cli::Command::Run(run) = cli.command else { panic!("not run") };
        assert_eq!(run.flags.workers, Some(2));
        let cli = parse_with(config, &["node", "--rendezvous", "h:1", "--fingerprint", "00"]).expect("parses");
        let crate::cli::Command::Node(node) = cli.command else { panic!("not node") };
        assert_eq!(node.slots, 3);
    }

    #[test]
    fn a_required_flag_can_come_from_the_file() {
        let cli = parse_with("rendezvous = \"mesh.example.org:7700\"\n", &["node"]).expect("parses");
        let crate::cli::Command::Node(node) = cli.command else { panic!("not node") };
        assert_eq!(node.rendezvous, "mesh.example.org:7700");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = parse_with("wokers = 7\n", &["run", "job.toml"]).expect_err("typo").to_string();
        assert_eq!(e, "`wokers`: no subcommand has a flag --wokers");
        let e = parse_with("[node]\nworkers = 7\n", &["node"]).expect_err("not a node flag").to_string();
        assert_eq!(e, "`node.workers`: `thunkmesh node` has no flag --workers");
        let e = parse_with("[nod]\nslots = 7\n", &["node"]).expect_err("no such command").to_string();
        assert_eq!(e, "`[nod]`: thunkmesh has no subcommand `nod`");
        let e = parse_with("workers = [1]\n", &["run", "x"]).expect_err("array").to_string();
        assert_eq!(e, "`workers`: expected a string, number or boolean, found array");
        let e = parse_with("workers = \"many\"\n", &["run", "x"]).expect_err("not a number").to_string();
        assert!(e.contains("invalid value 'many'"), "{e}");
    }
}
