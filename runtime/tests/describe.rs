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
