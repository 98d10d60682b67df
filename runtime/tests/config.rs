//! `lookout check-config` and `lookout boards` end to end: every board profile and the packaged configuration
//! pass with the real bundle's measured memory plan; bad and over-budget configurations exit 78 naming the field
//! or the largest items.

mod common;

use std::path::{Path, PathBuf};

use common::lookout;
use serde_json::Value;

const BOARDS: [&str; 9] =
    ["rpi0-2w", "rpi0-2w-32", "rpi3", "rpi3-32", "rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "x86-dev"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn check(file: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["check-config", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    lookout(&args)
}

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lookout-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_board_profile_and_the_packaged_config_fit_their_budget() {
    let packaged = repo().join("cross/package/lookout.toml");
    for board in BOARDS {
        for (file, extra) in [
            (repo().join(format!("board-configs/{board}.toml")), vec!["--json", "--any-target"]),
            (packaged.clone(), vec!["--json", "--any-target", "--board", board]),
        ] {
            let out = check(&file, &extra);
            assert!(out.status.success(), "{board} {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
            let report: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(report["board"], board);
            let plan = &report["plan"];
            assert!(plan.is_object(), "{board}: the memory plan was not made: {}", report["plan_skipped"]);
            let total = plan["total_mib"].as_f64().unwrap();
            let budget = plan["budget_mib"].as_f64().unwrap();
            assert!(total > 100.0 && total <= budget, "{board}: plan {total} MiB, budget {budget} MiB");
            let items: Vec<&str> =
                plan["resident"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
            assert!(
                items.contains(&"process") && items.contains(&"frame pool") && items.contains(&"audio ring"),
                "{items:?}"
            );
        }
    }
}

#[test]
fn the_zero_2w_profiles_stay_under_350_mib_with_voice_vision_and_the_decoder() {
    for board in ["rpi0-2w", "rpi0-2w-32"] {
        let out = check(&repo().join(format!("board-configs/{board}.toml")), &["--json", "--any-target"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let models = &report["config"]["models"];
        assert_eq!(models["speech"], "int8");
        assert_eq!(models["detector"], "nanodet");
        assert_eq!(models["decoder"], "q4", "the Zero answers with the language decoder");
        assert_eq!(models["context"], 256);
        assert!(!models["leaves_out"].as_str().unwrap().is_empty(), "the profile says what it leaves out");
        let total = report["plan"]["total_mib"].as_f64().unwrap();
        assert!(total < 350.0, "{board} plan {total} MiB");
    }
}

#[test]
fn a_profile_for_another_build_is_refused_with_78_naming_the_build_to_install() {
    // The Pi 3's two profiles: one for the 64-bit OS (aarch64 build), one for the 32-bit OS (armv7 build).
    let (board, target, arch) = if cfg!(target_arch = "arm") {
        ("rpi3", "aarch64-unknown-linux-gnu", "arm64")
    } else {
        ("rpi3-32", "armv7-unknown-linux-gnueabihf", "armhf")
    };
    let profile = repo().join(format!("board-configs/{board}.toml"));
    let config = temp_config("other-build.toml", &format!("board = \"{board}\"\n"));
    for out in [
        check(&profile, &[]),
        check(&repo().join("cross/package/lookout.toml"), &["--board", board]),
        lookout(&["serve", "--config", config.to_str().unwrap()]),
        lookout(&["serve", "--config", config.to_str().unwrap(), "--print-plan"]),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(
            stderr.contains(&format!("board {board} is for {target} builds"))
                && stderr.contains(&format!("_{arch}.deb")),
            "{stderr}"
        );
    }
    assert!(check(&profile, &["--any-target"]).status.success());
}

#[test]
fn an_invalid_config_exits_78_naming_the_field() {
    for (text, expected) in [
        ("board = \"rpi4\"\n[camera]\nfsp = 2\n", "camera.fsp: unknown field `fsp`"),
        (
            "board = \"rpi4\"\n[models]\nspeech = \"int4\"\n",
            "models.speech: unknown variant `int4`, expected one of `int8`, `f32`, `off`",
        ),
        ("board = \"rpi4\"\n[http]\nlisten = \"0.0.0.0:8470\"\n", "http.token: required"),
        ("board = \"banana-pi\"\n", "unknown board `banana-pi`"),
        ("board = \"rpi4\"\n[camera\n", "not valid TOML"),
        ("board = \"rpi4\"\n[objects]\nconfirm_frames = 9\n", "objects.confirm_frames: 9 is outside 1..=5"),
        ("board = \"rpi4\"\n[objects.filters.person]\nmin_score = 2.0\n", "person.min_score: 2 is outside 0..=1"),
        (
            "board = \"rpi4\"\n[objects.filters.person]\nmoving_min_score = -0.1\n",
            "person.moving_min_score: -0.1 is outside 0..=1",
        ),
        ("board = \"rpi4\"\n[objects.filters.person]\nmin_scor = 0.5\n", "unknown field `min_scor`"),
        (
            "board = \"rpi4\"\n[objects.filters.unicorn]\nmin_score = 0.5\n",
            "`unicorn` is not one of the detector's labels",
        ),
    ] {
        let path = temp_config("bad.toml", text);
        let out = check(&path, &["--any-target"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text:?}: {stderr}");
        assert!(stderr.contains(expected) && stderr.lines().count() == 1, "{text:?}: {stderr}");
    }
    let out = check(Path::new("/nonexistent/lookout.toml"), &[]);
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn an_over_budget_config_exits_78_naming_the_largest_items() {
    let path = temp_config("over.toml", "board = \"rpi0-2w\"\n[models]\ndecoder = \"f32\"\n");
    let out = check(&path, &["--any-target"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("allows 350 MiB") && stderr.contains("decoder f32"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OVER BUDGET"));
}

#[test]
fn boards_lists_every_profile_and_marks_this_machine() {
    let out = lookout(&["boards", "--json"]);
    assert!(out.status.success());
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, BOARDS);
    let here: Vec<&str> =
        rows.iter().filter(|r| r["this_machine"] == true).map(|r| r["name"].as_str().unwrap()).collect();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(here, ["x86-dev"]);
    }
}
