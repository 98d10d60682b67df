//! `lookout check-config FILE` and `lookout boards`: validate a daemon configuration and its memory plan, and
//! list the built-in board profiles with the one this machine is.

use std::path::PathBuf;

use serde::Serialize;

use super::{check_label_filters, open_config_bundle, print_json, Context};
use crate::board::BoardSource;
use crate::board::{self, Probe};
use crate::config::{Config, Loaded};
use crate::daemon::unit;
use crate::plan::OverBudget;
use crate::plan::{self, Plan};

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The configuration (or a board profile) to check.
    file: PathBuf,
    /// Use this board instead of the file's `board` key.
    #[arg(long, value_name = "NAME")]
    board: Option<String>,
    #[arg(long)]
    json: bool,
    /// Print the systemd drop-in that fits the service to this configuration (memory limits from its plan, the
    /// addresses its HTTP API may talk to) instead of the report; install it as
    /// /etc/systemd/system/lookout.service.d/50-limits.conf.
    #[arg(long, conflicts_with = "json")]
    unit_limits: bool,
    /// Check a board profile made for another build than this binary (planning from a workstation); without
    /// it such a profile is refused, as `serve` refuses it.
    #[arg(long)]
    any_target: bool,
}

#[derive(Debug, clap::Args)]
pub struct BoardsArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    file: String,
    board: &'a str,
    board_source: &'a BoardSource,
    config: &'a Config,
    plan: Option<&'a Plan>,
    plan_skipped: Option<String>,
}

pub fn check_config(ctx: &Context, args: CheckConfigArgs) -> anyhow::Result<()> {
    let Loaded { config, board_source } = Config::load(&args.file, args.board.as_deref())?;
    if !args.any_target {
        config.check_build(&args.file)?;
    }
    config.mqtt.password(&args.file)?;
    if matches!(board_source, BoardSource::Detected(_)) {
        if let Some(total) = std::fs::read_to_string("/proc/meminfo").ok().as_deref().and_then(board::mem_total_mib) {
            board::check_ram(config.budget.memory_mib, config.budget.os_reserve_mib, total)
                .map_err(|reason| OverBudget(format!("{}: {reason}", args.file.display())))?;
        }
    }
    let (plan, plan_skipped) = match open_config_bundle(ctx, &config) {
        Ok(bundle) => {
            check_label_filters(&config, &bundle, &args.file)?;
            (Some(plan::plan(&config, &bundle)?), None)
        }
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    if args.unit_limits {
        let Some(plan) = &plan else {
            anyhow::bail!("no memory plan, so no memory limits: {}", plan_skipped.unwrap_or_default());
        };
        plan.check_fits(&args.file)?;
        print!("{}", unit::limits_drop_in(&config, &board_source, plan, &args.file));
        return Ok(());
    }
    if args.json {
        let report = Report {
            file: args.file.display().to_string(),
            board: &config.board.name,
            board_source: &board_source,
            config: &config,
            plan: plan.as_ref(),
            plan_skipped: plan_skipped.clone(),
        };
        print_json(&report)?;
    } else {
        let from = match &board_source {
            BoardSource::File => "defined in the file".to_string(),
            BoardSource::Named(n) => format!("named `{n}`"),
            BoardSource::Detected(n) => format!("detected as `{n}`"),
            BoardSource::Path(p) => format!("read from {}", p.display()),
        };
        println!("{}: valid; board {} ({from}): {}", args.file.display(), config.board.name, config.board.description);
        if !config.models.leaves_out.is_empty() {
            println!("leaves out: {}", config.models.leaves_out);
        }
        match &plan {
            Some(plan) => println!("{plan}"),
            None => println!("memory plan not checked: {}", plan_skipped.as_deref().unwrap_or_default()),
        }
    }
    match plan {
        Some(plan) => Ok(plan.check_fits(&args.file)?),
        None => Ok(()),
    }
}

#[derive(Serialize)]
struct BoardRow {
    name: &'static str,
    description: String,
    target: String,
    ram_mib: u32,
    budget_mib: u32,
    this_machine: bool,
}

pub fn boards(args: BoardsArgs) -> anyhow::Result<()> {
    let detected = board::detect(&Probe::this_machine());
    let mut rows = Vec::new();
    for (name, text) in board::BUILT_IN {
        let config = Config::parse(text, std::path::Path::new(name), None, &Probe::default())?.config;
        rows.push(BoardRow {
            name,
            description: config.board.description,
            target: config.board.target,
            ram_mib: config.board.ram_mib,
            budget_mib: config.budget.memory_mib,
            this_machine: matches!(detected, Ok(n) if n == name),
        });
    }
    if args.json {
        return print_json(&rows);
    }
    for row in &rows {
        let mark = if row.this_machine { "*" } else { " " };
        println!(
            "{mark} {:<17} {:>5} MiB RAM, budget {:>5} MiB  {}",
            row.name, row.ram_mib, row.budget_mib, row.description
        );
    }
    if let Err(reason) = detected {
        println!("this machine: {reason}");
    }
    Ok(())
}
