//! The `thunkmesh` binary: parses flags, sets up logging, and calls into the libraries.

mod cache;
mod cli;
mod commands;
mod config;
mod exit;
mod infer;
mod invocation;
mod lambda;
mod mesh;
mod test;

use std::process::ExitCode;

fn main() -> ExitCode {
    // The node starts this binary again to isolate each program it runs.
    if std::env::args_os().nth(1).is_some_and(|a| a == thunkmesh_node::jail::LAUNCHER_ARG) {
        let code = thunkmesh_node::jail::launcher_main(std::env::args_os().skip(2));
        return ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX));
    }
    // Started in the mount namespace of an inferred build (as a model over a tool's file, or by
    // a placeholder that runs itself): back to infer's, where the real tools are.
    if let Err(e) = thunkmesh_infer::intercept::leave() {
        eprintln!("thunkmesh: {e}");
        return ExitCode::from(2);
    }
    // Started as a model (`thunkmesh infer` put this binary on the build's PATH as `cc`, `ar`...,
    // or over `/usr/bin/gcc-12`...).
    if std::env::var_os(thunkmesh_infer::models::REAL_PATH_ENV).is_some() {
        let mut args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
        let invoked = args.next().unwrap_or_default();
        let name = std::path::Path::new(&invoked).file_name().unwrap_or_default().to_string_lossy().into_owned();
        if thunkmesh_infer::models::model_of(&name).is_some() {
            return thunkmesh_infer::models::main(&invoked, args.collect());
        }
    }
    // A placeholder of a program, run (a generator the build just made): force it, then run it.
    if std::env::args_os().nth(1).is_some_and(|a| a == thunkmesh_infer::placeholder::RUN_ARG) {
        return infer::run_placeholder(std::env::args_os().skip(2).collect());
    }
    // Started by the Lambda runtime (no arguments, the runtime API in the environment): a node
    // per invocation.
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() && std::env::args_os().len() == 1 {
        return lambda();
    }
    let cli = match config::parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let quiet_commands = matches!(
        cli.command,
        cli::Command::Run(_)
            | cli::Command::Force(_)
            | cli::Command::Wrap(_)
            | cli::Command::Infer(_)
            | cli::Command::Describe(_)
            | cli::Command::Hash(_)
            | cli::Command::Cache(_)
            | cli::Command::Completions(_)
    );
    let level = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "error",
        (false, 0) if quiet_commands => "warn",
        (false, 0 | 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(cli.global.color.stderr())
        .init();
    // A node's work is process spawns and small messages: one thread runs it with fewer
    // hand-offs between threads than a pool would (blocking file work has its own threads).
    let built = match cli.command {
        cli::Command::Node(_) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(commands::dispatch(cli.command, cli.global))
}

fn lambda() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(thunkmesh_node::lambda::serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: the Lambda runtime stopped: {e}");
            ExitCode::FAILURE
        }
    }
}
