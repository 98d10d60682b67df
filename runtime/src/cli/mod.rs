//! Command-line arguments and dispatch to one module per subcommand.

mod ask;
#[cfg(feature = "bench")]
mod bench;
mod check_config;
mod describe;
mod kernels;
mod measure;
mod models;
mod probe;
mod serve;
mod soak;
mod transcribe;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use lookout_models::bundle::{self, DEFAULT_BUNDLE};

pub use crate::context::{check_label_filters, open_config_bundle, Context};

#[derive(Debug, Parser)]
#[command(
    name = "lookout",
    version,
    about = "See and listen on a small board: cameras, microphones, small quantized models"
)]
pub struct Args {
    /// Models directory (or one bundle); else $LOOKOUT_MODELS, else ~/.local/share/lookout/models, else /var/lib/lookout/models.
    #[arg(long, global = true, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Bundle inside the models directory.
    #[arg(long, global = true, default_value = DEFAULT_BUNDLE, value_name = "NAME")]
    bundle: String,
    #[command(subcommand)]
    command: Command,
}

impl Args {
    /// Whether this is the daemon, which keeps writing its events when a reader of its output goes away; every
    /// other command ends quietly then, as a Unix tool does (`lookout models list | head`).
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Serve(_))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Speech to text from a WAV or FLAC file.
    Transcribe(transcribe::TranscribeArgs),
    /// Benchmark against peers on the same weights and inputs.
    #[cfg(feature = "bench")]
    Bench(bench::BenchArgs),
    /// Objects, counts and text in a JPEG or PNG image.
    Describe(describe::DescribeArgs),
    /// One sentence about a photo, from the scene and the language decoder.
    Caption(ask::CaptionArgs),
    /// Answer a spoken or typed question about a photo.
    Ask(ask::AskArgs),
    /// Validate a daemon configuration (or a board profile) and its memory plan.
    CheckConfig(check_config::CheckConfigArgs),
    /// The built-in board profiles, and which one this machine is.
    Boards(check_config::BoardsArgs),
    /// The cameras, microphones and GPIO chips of this machine, as Lookout sees them.
    Probe(probe::ProbeArgs),
    /// The daemon: camera and microphone in, captions and answers out as events and over HTTP.
    Serve(serve::ServeArgs),
    /// Runs the daemon's pipeline on many frames and questions and reports whether its memory stays flat.
    Soak(soak::SoakArgs),
    /// List or verify model bundles.
    #[command(subcommand)]
    Models(models::ModelsCommand),
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let models_dir = bundle::resolve_models_dir(args.models.as_deref());
    let ctx = Context { models_dir, bundle: args.bundle };
    match args.command {
        Command::Transcribe(a) => transcribe::run(&ctx, a),
        Command::Models(c) => models::run(&ctx, c),
        #[cfg(feature = "bench")]
        Command::Bench(a) => bench::run(&ctx, a),
        Command::Describe(a) => describe::run(&ctx, a),
        Command::Caption(a) => ask::caption(&ctx, a),
        Command::Ask(a) => ask::ask(&ctx, a),
        Command::CheckConfig(a) => check_config::check_config(&ctx, a),
        Command::Boards(a) => check_config::boards(a),
        Command::Serve(a) => serve::run(&ctx, a),
        Command::Probe(a) => probe::run(a),
        Command::Soak(a) => soak::run(&ctx, a),
    }
}

/// `--text-budget SECONDS`: how long reading one image's text may take, within the configuration's limits.
pub fn parse_text_budget(text: &str) -> Result<std::time::Duration, String> {
    let limits = crate::config::TEXT_BUDGET_LIMITS_S;
    match text.parse::<f32>() {
        Ok(seconds) if limits.contains(&seconds) => Ok(std::time::Duration::from_secs_f32(seconds)),
        _ => Err(format!("`{text}` is not a number of seconds from {} to {}", limits.start(), limits.end())),
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
