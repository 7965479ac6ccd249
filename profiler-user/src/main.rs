//! The `stallscope` binary: parse, run, and turn the outcome into an exit code and one line.
//! Exit codes (DESIGN.md): 0 fine, 1 error, 2 bad usage, 3 budget exceeded.

use std::process::ExitCode;

use clap::Parser;
use profiler_user::{
    cli::{Cli, Command},
    config::UsageError,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help/version to stdout (exit 0) and mistakes to stderr (exit 2).
            let _ = err.print();
            return ExitCode::from(err.exit_code() as u8);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            if let Some(usage) = err.downcast_ref::<UsageError>() {
                // A value the user typed may hold a newline: the message stays one line.
                eprintln!("stallscope: {}", usage.to_string().replace('\n', "\\n"));
                return ExitCode::from(2);
            }
            eprintln!("stallscope: error: {}", one_line(&err));
            ExitCode::from(1)
        }
    }
}

/// The error chain on one line, outermost context first.
fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ").replace('\n', " ")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Record(args) => {
            let config = args.to_config()?;
            let outcome = runtime.block_on(profiler_user::commands::record::run(config))?;
            Ok(ExitCode::from(outcome.exit_code()))
        }
        Command::Ci(args) => {
            let options = args.to_options()?;
            let code = runtime.block_on(profiler_user::commands::ci::run(options))?;
            Ok(ExitCode::from(code))
        }
        Command::Report(args) => {
            let outcome = profiler_user::commands::replay::run(args.to_options()?)?;
            Ok(ExitCode::from(outcome.exit_code()))
        }
        Command::Watch(args) => {
            let config = args.to_config()?;
            runtime.block_on(profiler_user::commands::watch::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(args) => Ok(ExitCode::from(profiler_user::commands::doctor::run(
            args.developer,
        ))),
        Command::Diff(args) => {
            let outcome = profiler_user::commands::diff::run(args.to_options()?)?;
            Ok(ExitCode::from(outcome.exit_code()))
        }
    }
}
