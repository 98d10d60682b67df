//! The `lookout` command: parses arguments, runs one subcommand, prints errors as one line with an exit code
//! that says what kind of failure it was.

mod allocations;
mod answer;
mod board;
mod cli;
mod config;
mod context;
mod daemon;
mod exit;
mod fusion;
mod memory;
mod plan;
mod question;
mod scene_change;
mod scheduler;
mod started;
mod tracker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    started::mark_process_start();
    let args = cli::Args::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lookout: {}", exit::one_line(&err));
            ExitCode::from(exit::code_for(&err))
        }
    }
}
