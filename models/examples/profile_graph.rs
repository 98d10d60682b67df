//! Where a graph's time goes, node by node (a developer aid; the product never runs it):
//!
//!     cargo run --release -p lookout-models --example profile_graph -- FILE.onnx 1 3 416 416
//!     cargo run --release -p lookout-models --example profile_graph -- FILE.nnef.tar 1 3 416 416
//!
//! Loads an ONNX graph with one f32 input of the given shape (prepared as the engine prepares it), or a compiled
//! archive as the engine loads it, runs it on a constant input, and prints the median time of whole runs, the mean
//! time per operator kind and the slowest nodes. `PROFILE_THREADS=N` runs it on N threads, `PROFILE_NODES=N` lists
//! the N slowest nodes (15), `PROFILE_ROUNDS=N` times N whole runs (5), `PROFILE_INFO=1` prints what each of them
//! says of itself (shapes, kernels, fused operations), and `PROFILE_INPUT=FILE.npy` runs it on a tensor `lookout
//! bench --suite vision` wrote instead of a constant.

use std::collections::BTreeMap;
use std::path::Path;

use lookout_models::engine::{self, DatumType, Dim, Graph, GraphSpec};
use lookout_models::npy;

const ROUNDS: usize = 5;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: profile_graph FILE.onnx|FILE.nnef.tar DIM...";
    let path = Path::new(args.get(1).ok_or_else(|| anyhow::anyhow!(usage))?);
    let dims = args[2..].iter().map(|a| a.parse::<usize>()).collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!dims.is_empty(), usage);
    if let Some(threads) = std::env::var("PROFILE_THREADS").ok().and_then(|n| n.parse().ok()) {
        engine::set_threads(threads);
    }
    let graph = if path.to_string_lossy().ends_with(".nnef.tar") {
        Graph::load_compiled("profiled", path)?
    } else {
        let spec = GraphSpec::new(vec![(DatumType::F32, dims.iter().map(|&d| Dim::Fixed(d)).collect())]);
        Graph::load("profiled", path, &spec)?
    };
    let values = match std::env::var_os("PROFILE_INPUT") {
        Some(file) => npy::read_f32(Path::new(&file)).map_err(anyhow::Error::msg)?.values,
        None => vec![0.5f32; dims.iter().product()],
    };
    anyhow::ensure!(values.len() == dims.iter().product::<usize>(), "the input holds {} values", values.len());
    let input = engine::tensor(&dims, &values)?;
    let times = graph.profile(std::iter::once(input.clone()).collect(), ROUNDS)?;
    let mut state = graph.new_state()?;
    let whole_rounds = std::env::var("PROFILE_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(ROUNDS);
    let mut runs: Vec<f64> = (0..=whole_rounds)
        .map(|_| {
            let started = std::time::Instant::now();
            state.run(std::iter::once(input.clone()).collect()).map(|_| started.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()?;
    runs.sort_by(f64::total_cmp);
    println!("whole runs: median {:.1} ms", runs[runs.len() / 2]);
    let mut by_op: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for time in &times {
        let op = by_op.entry(&time.op).or_default();
        op.0 += time.ms;
        op.1 += 1;
    }
    println!("total {:.1} ms over {} nodes", times.iter().map(|t| t.ms).sum::<f64>(), times.len());
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    for (op, (ms, nodes)) in ops.iter().take(15) {
        println!("{ms:8.2} ms  {nodes:4} nodes  {op}");
    }
    let mut nodes: Vec<_> = times.iter().collect();
    nodes.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    for time in nodes.iter().take(std::env::var("PROFILE_NODES").ok().and_then(|n| n.parse().ok()).unwrap_or(15)) {
        println!("{:8.2} ms  {} {}", time.ms, time.op, time.node);
        if std::env::var_os("PROFILE_INFO").is_some() && !time.info.is_empty() {
            println!("             {}", time.info);
        }
    }
    Ok(())
}
