//! `lookout serve --config FILE [--board NAME] [--print-plan]`: runs the daemon, or prints its memory plan.

use std::path::PathBuf;

use super::{open_config_bundle, Context};
use crate::config::Config;
use crate::daemon;
use crate::plan;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The daemon's configuration (see /etc/lookout/lookout.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Use this board instead of the file's `board` key.
    #[arg(long, value_name = "NAME")]
    board: Option<String>,
    /// Print the memory plan and exit (non-zero when it exceeds the budget).
    #[arg(long)]
    print_plan: bool,
}

pub fn run(ctx: &Context, args: ServeArgs) -> anyhow::Result<()> {
    if !args.print_plan {
        return daemon::serve(ctx, &args.config, args.board.as_deref());
    }
    let config = Config::load(&args.config, args.board.as_deref())?.config;
    config.check_build(&args.config)?;
    let plan = plan::plan(&config, &open_config_bundle(ctx, &config)?)?;
    println!("{plan}");
    Ok(plan.check_fits(&args.config)?)
}
