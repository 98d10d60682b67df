//! Where a graph's time goes in tract, node by node (a developer aid; the product never runs it):
//!
//!     cargo run --release -p lookout-models --example profile_graph -- FILE.onnx 1 3 416 416
//!
//! Loads an ONNX graph with one f32 input of the given shape, optimizes it as the engine does, runs it six times on
//! a constant input, and prints the mean time of the last five per operator kind and the slowest nodes.

use std::collections::BTreeMap;
use std::time::Instant;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{eval, SimplePlan, SimpleState};

const ROUNDS: usize = 6;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: profile_graph FILE.onnx DIM...";
    let path = args.get(1).ok_or_else(|| anyhow::anyhow!(usage))?;
    let dims = args[2..].iter().map(|a| a.parse::<usize>()).collect::<Result<Vec<_>, _>>()?;
    anyhow::ensure!(!dims.is_empty(), usage);
    let model =
        tract_onnx::onnx().model_for_path(path)?.with_input_fact(0, f32::fact(&dims).into())?.into_optimized()?;
    let plan = SimplePlan::new(model)?;
    let mut state = SimpleState::new(&plan)?;
    let input: Tensor = tract_ndarray::ArrayD::<f32>::from_elem(dims, 0.5).into();
    let mut by_op: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut by_node: BTreeMap<String, f64> = BTreeMap::new();
    for round in 0..ROUNDS {
        state.run_plan_with_eval(tvec!(input.clone().into()), |session, op_state, node, inputs| {
            let started = Instant::now();
            let outputs = eval(session, op_state, node, inputs);
            if round > 0 {
                let ms = started.elapsed().as_secs_f64() * 1e3 / (ROUNDS - 1) as f64;
                let op = by_op.entry(node.op().name().to_string()).or_default();
                op.0 += ms;
                op.1 += 1;
                *by_node.entry(format!("{} {}", node.op().name(), node.name)).or_default() += ms;
            }
            outputs
        })?;
    }
    println!("total {:.1} ms", by_op.values().map(|(ms, _)| ms).sum::<f64>());
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    for (op, (ms, runs)) in ops.iter().take(15) {
        println!("{ms:8.2} ms  {:4} nodes  {op}", runs / (ROUNDS - 1));
    }
    let mut nodes: Vec<_> = by_node.into_iter().collect();
    nodes.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (node, ms) in nodes.iter().take(15) {
        println!("{ms:8.2} ms  {node}");
    }
    Ok(())
}
