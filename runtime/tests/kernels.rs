//! `lookout models kernels` on the prepared bundle: every matrix product of every stage's graphs gets a kernel of
//! this CPU's vector unit (AVX2 or better on x86, NEON on ARM), and `--runs` runs a stage the number of times asked.

mod common;

use common::{lookout, testdata_dir};
use serde_json::Value;

fn kernels(args: &[&str]) -> Value {
    let out = lookout(&[&["models", "kernels", "--json"], args].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Whether a matrix-product kernel is written for the vector unit every board of this build has.
fn vectorized(kernel: &str) -> bool {
    #[cfg(target_arch = "x86_64")]
    if !std::is_x86_feature_detected!("avx2") {
        return true;
    }
    let prefixes: &[&str] = if cfg!(target_arch = "aarch64") {
        &["arm64", "lookout_block"]
    } else if cfg!(target_arch = "arm") {
        &["armv7neon", "lookout_block"]
    } else {
        &["avx", "fma", "lookout_block_avx2", "lookout_avx512"]
    };
    prefixes.iter().any(|prefix| kernel.starts_with(prefix))
}

#[test]
fn every_product_of_every_stage_gets_a_vectorized_kernel() {
    let report = kernels(&[]);
    let stages: Vec<&str> = report["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["vad", "speech", "vision", "vision-ocr", "decoder"]);
    for stage in report["stages"].as_array().unwrap() {
        for graph in stage["graphs"].as_array().unwrap() {
            let count = |op: &str| graph["ops"][op].as_u64().unwrap_or(0);
            let products = count("OptMatMul") + count("BlockMatMul") + count("Pointwise") + count("DirectConv");
            let kernels = graph["product_kernels"].as_object().unwrap();
            let with_kernel: u64 = kernels.values().map(|n| n.as_u64().unwrap()).sum();
            assert!(
                products > 0 && with_kernel >= products,
                "{}: {products} products, {kernels:?}",
                graph["component"]
            );
            for name in kernels.keys() {
                assert!(vectorized(name), "{} runs {name}", graph["component"]);
            }
        }
    }
    let routines = report["routines"].as_array().unwrap();
    assert!(routines.iter().any(|r| r[0] == "sigmoid" && r[1].is_string()), "{routines:?}");
}

#[test]
fn runs_run_the_stage_as_often_as_asked() {
    let dog = testdata_dir().join("vision/photos/dog.jpg");
    let report =
        kernels(&["--stage", "vision", "--variant", "nanodet", "--runs", "2", "--image", dog.to_str().unwrap()]);
    let stage = &report["stages"][0];
    assert_eq!((stage["stage"].as_str(), stage["variant"].as_str()), (Some("vision"), Some("nanodet")));
    assert_eq!(stage["runs"]["count"], 2);
    assert!(stage["runs"]["ms"].as_f64().unwrap() > 0.0);
    let decoder = kernels(&["--stage", "decoder", "--runs", "3"]);
    let tokens = decoder["stages"][0]["runs"]["count"].as_u64().unwrap();
    assert!((1..=3).contains(&tokens), "{tokens} tokens");

    let out = lookout(&["models", "kernels", "--stage", "ears"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("unknown stage `ears`") && stderr.contains("vision-ocr"), "{stderr}");
}
