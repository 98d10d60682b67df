//! Lookout's runtime as a library: the scheduler, fusion, the turn (models loaded by stage; frame + question →
//! scene → answer) and every front end on it (the CLI commands, the daemon with its HTTP and OpenAI API). The
//! `lookout` binary only parses arguments and calls [`cli::run`].

pub mod allocations;
pub mod answer;
pub mod board;
pub mod cli;
pub mod config;
pub mod context;
pub mod daemon;
pub mod exit;
pub mod fusion;
pub mod memory;
pub mod plan;
pub mod question;
pub mod scene_change;
pub mod scheduler;
pub mod started;
pub mod tracker;
pub mod turn;
