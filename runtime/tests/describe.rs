//! `lookout describe` on real photos through the binary: objects with positions, counts and the scene labels,
//! plain and JSON, compared with the onnxruntime pipeline's references.

mod common;

use common::{lookout, testdata_dir};
use serde_json::Value;

fn describe(args: &[&str]) -> String {
    let result = lookout(&[&["describe"], args].concat());
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    String::from_utf8(result.stdout).unwrap()
}

#[test]
fn a_photo_is_described_with_objects_counts_and_scene_labels() {
    let photos = testdata_dir().join("vision/photos");
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(testdata_dir().join("vision/index.json")).unwrap()).unwrap();
    let kite = photos.join("kite.jpg");
    let json: Value = serde_json::from_str(&describe(&["--json", kite.to_str().unwrap()])).unwrap();
    assert!(
        json["counts"]["kite"].as_u64().unwrap() >= 3 && json["counts"]["person"].as_u64().unwrap() >= 3,
        "{}",
        json["counts"]
    );
    assert!(json["objects"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["box"].as_array().unwrap().len() == 4 && o["position"].is_string()));
    let reference = &index["scene_labels"]["kite.jpg"];
    assert_eq!(json["scene_labels"][0]["label"], reference[0]["label"], "{}", json["scene_labels"]);
    assert!(json["timings_ms"]["classify"].as_f64().unwrap() > 0.0);

    let coffee = photos.join("coffee.png");
    let plain = describe(&[coffee.to_str().unwrap()]);
    let top = index["scene_labels"]["coffee.png"][0]["label"].as_str().unwrap();
    assert!(plain.lines().any(|l| l.starts_with(&format!("scene {top:?} "))), "{plain}");
    let without = describe(&["--no-scene", coffee.to_str().unwrap()]);
    assert!(!without.contains("scene "), "{without}");
}

/// Tiles through the command: a large camera frame (the concourse clip's frame 168, 1920x1080, far people) gives
/// more people than with `--no-tiles`, and the daemon's `tiles` setting is a boolean `check-config` holds it to.
#[test]
fn tiles_on_a_large_frame_find_more_people() {
    let frame = testdata_dir().join("camera/concourse/f0168.jpg");
    let people = |extra: &[&str]| {
        let json: Value =
            serde_json::from_str(&describe(&[&["--json", "--no-ocr", frame.to_str().unwrap()], extra].concat()))
                .unwrap();
        json["counts"]["person"].as_u64().unwrap_or(0)
    };
    let (whole, tiled) = (people(&["--no-tiles"]), people(&[]));
    assert!(whole >= 8 && tiled as f64 >= 1.8 * whole as f64, "{whole} people whole, {tiled} in tiles");
    let dir = std::env::temp_dir().join(format!("lookout-tiles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (value, valid) in [("true", true), ("\"yes\"", false)] {
        let config = dir.join("lookout.toml");
        std::fs::write(&config, format!("board = \"x86-dev\"\n[objects]\ntiles = {value}\n")).unwrap();
        let checked = lookout(&["check-config", "--any-target", config.to_str().unwrap()]);
        assert_eq!(checked.status.code(), Some(if valid { 0 } else { 78 }), "{value}: {checked:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
