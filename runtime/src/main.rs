//! The `lookout` command: parses arguments, runs one subcommand, prints errors as one line with an exit code
//! that says what kind of failure it was.

use std::process::ExitCode;

use clap::Parser;
use lookout::{cli, exit, started};

/// Every allocation is counted, so `lookout bench --suite frames` can show a per-frame path allocation-free.
#[global_allocator]
static GLOBAL: lookout_models::allocations::Counting = lookout_models::allocations::Counting;

fn main() -> ExitCode {
    started::mark_process_start();
    let args = cli::Args::parse();
    if !args.is_daemon() {
        // Rust ignores SIGPIPE, so a closed pipe would make every print fail with a panic; the default ends the
        // process without a word.
        // SAFETY: restores a signal's default disposition before any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lookout: {}", exit::one_line(&err));
            ExitCode::from(exit::code_for(&err))
        }
    }
}
