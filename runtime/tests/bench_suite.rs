//! `lookout bench` with a suite file on the real default speech models: items scored per variant, a held-out item
//! spoken by espeak-ng, broken items reported one by one without stopping the run, and the same figures twice.
#![cfg(feature = "bench")]

mod common;

use std::path::Path;

use common::{lookout, testdata_dir};
use serde_json::Value;

fn write_suite(dir: &Path, items: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("suite.toml");
    std::fs::write(&path, format!("kind = \"speech\"\ndescription = \"test suite\"\n{items}")).unwrap();
    path.display().to_string()
}

fn run_suite(suite: &str, out: &Path) -> Value {
    let result =
        lookout(&["bench", "--suite", suite, "--variants", "int8:fit", "--no-peers", "--out", out.to_str().unwrap()]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

#[test]
fn a_suite_file_is_scored_item_by_item_and_broken_items_do_not_stop_it() {
    let dir = std::env::temp_dir().join(format!("lookout-suite-{}", std::process::id()));
    let clip = testdata_dir().join("speech/what_do_you_see.wav");
    let items = format!(
        "[[item]]\nid = \"see\"\ntext = \"What do you see?\"\nsplit = \"in-domain\"\nsource = \"prepared\"\naudio = \"{}\"\n\
         [[item]]\nid = \"gone\"\ntext = \"is the door open\"\nsplit = \"in-domain\"\nsource = \"nowhere\"\naudio = \"gone.wav\"\n\
         [[item]]\nid = \"bad\"\ntext = 5\nsplit = \"in-domain\"\nsource = \"x\"\naudio = \"gone.wav\"\n\
         [[item]]\nid = \"spoken\"\ntext = \"is the kitchen light on\"\nsplit = \"held-out\"\nsource = \"espeak-ng en-gb\"\nvoice = \"en-gb\"\nwpm = 140\n",
        clip.display()
    );
    let suite = write_suite(&dir, &items);
    let first = run_suite(&suite, &dir.join("out1"));
    let skipped: Vec<(&str, &str)> = first["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["item"].as_str().unwrap(), s["error"].as_str().unwrap()))
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(skipped[0].0 == "gone" && skipped[0].1.contains("no such file"), "{skipped:?}");
    assert!(skipped[1].0 == "bad" && skipped[1].1.contains("malformed"), "{skipped:?}");
    let variant = &first["variants"][0];
    assert_eq!(variant["variant"], "int8:fit");
    let scored = variant["items"].as_array().unwrap();
    assert_eq!(scored.len(), 2);
    assert_eq!(
        (scored[0]["id"].as_str(), scored[0]["word_errors"].as_u64(), scored[0]["words"].as_u64()),
        (Some("see"), Some(0), Some(4)),
        "{}",
        scored[0]
    );
    let held_out =
        variant["splits"].as_array().unwrap().iter().find(|s| s["split"] == "held-out").expect("a held-out score");
    assert!(held_out["wer"].as_f64().unwrap() <= 0.4, "{held_out}");
    // The variant ran in a process of its own: its cold start includes loading Whisper, its peak holds the weights.
    let (process, figure) = (&variant["process"], |v: &Value| v.as_f64().unwrap());
    assert!(figure(&process["cold_start_ms"]) > figure(&variant["load_ms"]), "{process}");
    assert!(figure(&process["peak_rss_mib"]) > figure(&variant["model_mib"]), "{process}");
    let markdown = std::fs::read_to_string(dir.join("out1/report.md")).unwrap();
    assert!(markdown.contains("## Items not scored") && markdown.contains("- gone:"), "{markdown}");
    assert!(std::fs::read_to_string(dir.join("out1/wer.svg")).unwrap().starts_with("<svg"));

    // Greedy decoding: a second run hears the same words.
    let second = run_suite(&suite, &dir.join("out2"));
    for (a, b) in scored.iter().zip(second["variants"][0]["items"].as_array().unwrap()) {
        assert_eq!(a["hypothesis"], b["hypothesis"]);
    }

    // A suite with nothing runnable is an error, not an empty report.
    let broken = write_suite(
        &dir.join("broken"),
        "[[item]]\nid = \"gone\"\ntext = \"hi\"\nsplit = \"in-domain\"\nsource = \"x\"\naudio = \"gone.wav\"\n",
    );
    let result = lookout(&["bench", "--suite", &broken, "--out", dir.join("out3").to_str().unwrap()]);
    assert!(!result.status.success());
    assert!(
        String::from_utf8_lossy(&result.stderr).contains("none of its 1 items"),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_vision_suite_scores_labels_counts_and_text_per_threshold() {
    let dir = std::env::temp_dir().join(format!("lookout-vision-suite-{}", std::process::id()));
    let vision = testdata_dir().join("vision");
    let items = format!(
        "[[item]]\nid = \"dog\"\nsplit = \"in-domain\"\nsource = \"darknet\"\nimage = \"{}\"\nobjects = {{ dog = 1, bicycle = 1, truck = 1 }}\nalso = [\"car\"]\n\
         [[item]]\nid = \"sign\"\nsplit = \"held-out\"\nsource = \"rendered\"\nimage = \"{}\"\ntext = \"EXIT 42\\nPlatform 9\"\n\
         [[item]]\nid = \"dragon\"\nsplit = \"held-out\"\nsource = \"x\"\nimage = \"{}\"\nobjects = {{ dragon = 1 }}\n\
         [[item]]\nid = \"gone\"\nsplit = \"held-out\"\nsource = \"x\"\nimage = \"gone.jpg\"\nobjects = {{ dog = 1 }}\n",
        vision.join("photos/dog.jpg").display(),
        vision.join("text/sign.png").display(),
        vision.join("photos/dog.jpg").display()
    );
    std::fs::create_dir_all(&dir).unwrap();
    let suite = dir.join("vision.toml");
    std::fs::write(&suite, format!("kind = \"vision\"\n{items}")).unwrap();
    let out = dir.join("out");
    let result = lookout(&[
        "bench",
        "--suite",
        suite.to_str().unwrap(),
        "--variants",
        "0.3,0.9",
        "--text-budget",
        &common::text_budget_arg(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let skipped: Vec<&str> =
        report["skipped"].as_array().unwrap().iter().map(|s| s["error"].as_str().unwrap()).collect();
    assert!(skipped.len() == 2 && skipped[0].contains("`dragon` is not one of the detector's labels"), "{skipped:?}");
    let at = |i: usize| &report["variants"][i];
    let dog = &at(0)["items"][0];
    assert_eq!(dog["id"], "dog");
    assert!(!dog["missed"].as_array().unwrap().iter().any(|l| l == "dog" || l == "bicycle"), "{dog}");
    assert_eq!(at(0)["items"][1]["char_errors"], 0, "{}", at(0)["items"][1]);
    let recall = |i: usize| {
        at(i)["splits"].as_array().unwrap().iter().find(|s| s["split"] == "in-domain").unwrap()["recall"]
            .as_f64()
            .unwrap()
    };
    assert!(recall(0) >= 2.0 / 3.0 && recall(1) < recall(0), "recall at 0.3: {}, at 0.9: {}", recall(0), recall(1));
    assert!(std::fs::read_to_string(out.join("recall.svg")).unwrap().starts_with("<svg"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_end_to_end_suite_scores_captions_and_answers() {
    let dir = std::env::temp_dir().join(format!("lookout-e2e-suite-{}", std::process::id()));
    let data = testdata_dir();
    let items = format!(
        "[[item]]\nid = \"cat\"\nsplit = \"in-domain\"\nsource = \"skimage\"\nimage = \"{}\"\nobjects = {{ cat = 1 }}\nquestion = \"what animal is this?\"\nexpect = [\"cat\"]\n\
         [[item]]\nid = \"people\"\nsplit = \"held-out\"\nsource = \"darknet\"\nimage = \"{}\"\nobjects = {{ kite = 0, person = 0 }}\naudio = \"{}\"\nexpect = [\"8\", \"eight\"]\n\
         [[item]]\nid = \"no_expect\"\nsplit = \"held-out\"\nsource = \"x\"\nimage = \"{}\"\nobjects = {{ cat = 1 }}\nquestion = \"what is it?\"\n\
         [[item]]\nid = \"annotated_otherwise\"\nsplit = \"in-domain\"\nsource = \"x\"\nimage = \"{}\"\nobjects = {{ dog = 1 }}\nquestion = \"is there a dog?\"\nexpect = [\"yes\"]\n\
         [[item]]\nid = \"sign\"\nsplit = \"held-out\"\nsource = \"x\"\nimage = \"{}\"\nobjects = {{}}\ntext = \"EXIT 42\\nPlatform 9\"\nquestion = \"what does the sign say?\"\nexpect = [\"exit 42\"]\n",
        data.join("vision/photos/chelsea.png").display(),
        data.join("vision/photos/kite.jpg").display(),
        data.join("speech/how_many_people.wav").display(),
        data.join("vision/photos/chelsea.png").display(),
        data.join("vision/photos/chelsea.png").display(),
        data.join("vision/text/sign.png").display()
    );
    std::fs::create_dir_all(&dir).unwrap();
    let suite = dir.join("e2e.toml");
    std::fs::write(&suite, format!("kind = \"e2e\"\n{items}")).unwrap();
    let out = dir.join("out");
    let budget = common::text_budget_arg();
    let (suite, out_dir) = (suite.to_str().unwrap(), out.to_str().unwrap());
    let result =
        lookout(&["bench", "--suite", suite, "--variants", "scene", "--text-budget", &budget, "--out", out_dir]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(report["skipped"][0]["error"].as_str().unwrap().contains("needs `expect`"), "{}", report["skipped"]);
    let items = report["variants"][0]["items"].as_array().unwrap();
    assert_eq!(
        (items[0]["named"][0].as_str(), items[0]["answer_right"].as_bool()),
        (Some("cat"), Some(true)),
        "{}",
        items[0]
    );
    assert_eq!(items[1]["question"], "How many people are outside?", "Whisper hears the spoken question");
    assert!(
        items[1]["named"].as_array().unwrap().len() == 2 && items[1]["not_in_photo"].as_array().unwrap().is_empty(),
        "{}",
        items[1]
    );
    // An image annotated otherwise than the detector sees it: what the caption and answer say of it is invented.
    let strings = |v: &Value| v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(items[2]["answer_right"], false, "{}", items[2]);
    assert!(strings(&items[2]["caption_invented"]).contains(&"cat".to_string()), "{}", items[2]);
    assert!(
        strings(&items[2]["answer_invented"]).contains(&"count of dog".to_string()),
        "\"no dogs\" when one is there: {}",
        items[2]
    );
    assert_eq!(items[3]["answer_right"], true, "{}", items[3]);
    assert!(items[3]["answer_invented"].as_array().unwrap().is_empty(), "the text read, quoted: {}", items[3]);
    let in_domain =
        report["variants"][0]["splits"].as_array().unwrap().iter().find(|s| s["split"] == "in-domain").unwrap();
    assert!(in_domain["invented_facts"].as_u64().unwrap() >= 2, "{in_domain}");
    let process = &report["variants"][0]["process"];
    assert!(
        process["cold_start_ms"].as_f64().unwrap() > 0.0 && process["peak_rss_mib"].as_f64().unwrap() > 100.0,
        "the detector, OCR and Whisper are resident: {process}"
    );
    assert!(std::fs::read_to_string(out.join("report.md")).unwrap().contains("cold start ms"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_camera_suite_scores_counted_objects_and_a_sequence_with_and_without_the_tracker() {
    let dir = std::env::temp_dir().join(format!("lookout-camera-suite-{}", std::process::id()));
    let camera = testdata_dir().join("camera/vtest");
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    // Ten consecutive analysed frames (5 s at 2 a second) with three to five people walking.
    for index in (0..50).step_by(5) {
        let name = format!("f{index:04}.jpg");
        std::fs::copy(camera.join(&name), frames.join(&name)).unwrap();
    }
    let suite = dir.join("camera.toml");
    std::fs::write(
        &suite,
        format!(
            "kind = \"vision\"\n[[item]]\nid = \"f0\"\nsplit = \"held-out\"\nsource = \"vtest\"\nimage = \"{}\"\nobjects = {{ person = 3, car = 0 }}\nalso = [\"truck\"]\nvehicles = 2\n\
             [[item]]\nid = \"f25\"\nsplit = \"in-domain\"\nsource = \"vtest\"\nimage = \"{}\"\nobjects = {{ person = \"4-6\", car = 0 }}\nalso = [\"truck\"]\n\
             [[sequence]]\nid = \"walk\"\nsource = \"vtest\"\nframes = \"frames\"\nfps = 2.0\nheld_out_from = 5\n\
             [sequence.counts]\nperson = \"3 3 3-4 4 4-5 5 5 5 5-6 6\"\n",
            camera.join("f0000.jpg").display(),
            frames.join("f0025.jpg").display()
        ),
    )
    .unwrap();
    let out = dir.join("out");
    let result =
        lookout(&["bench", "--suite", suite.to_str().unwrap(), "--variants", "0.3", "--out", out.to_str().unwrap()]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let splits = report["variants"][0]["splits"].as_array().unwrap();
    let split = splits.iter().find(|s| s["split"] == "held-out").unwrap();
    assert_eq!(split["counted"]["person"]["precision"], 1.0, "{split}");
    assert_eq!(split["counted"]["person"]["recall"], 1.0, "{split}");
    assert_eq!(split["false_objects_per_image"], 0.0, "{split}");
    // The van (a truck to CenterNet) and the car at the edge, pooled whatever their labels.
    assert_eq!(split["counted"]["vehicle"]["precision"], 1.0, "{split}");
    assert_eq!(split["counted"]["vehicle"]["recall"], 1.0, "{split}");
    // A frame annotated 4-6: a count in the range is right, and any count is scored against the annotated number
    // nearest it.
    let split = splits.iter().find(|s| s["split"] == "in-domain").unwrap();
    let item = report["variants"][0]["items"].as_array().unwrap().iter().find(|i| i["id"] == "f25").unwrap();
    let found = item["found"]["person"].as_u64().unwrap_or(0);
    let nearest = found.clamp(4, 6);
    assert_eq!(split["count_accuracy"], if found == nearest { 1.0 } else { 0.0 }, "{split}");
    assert_eq!(split["counted"]["person"]["recall"], found.min(nearest) as f64 / nearest as f64, "{split}");
    assert_eq!(
        split["counted"]["person"]["precision"],
        if found > 0 { found.min(nearest) as f64 / found as f64 } else { 0.0 },
        "{split}"
    );
    let walk = &report["sequences"][0];
    assert_eq!(walk["frames"], 10);
    let (raw, tracked) = (&walk["flaps_per_minute"]["person"][0], &walk["flaps_per_minute"]["person"][1]);
    assert!(tracked.as_f64().unwrap() <= raw.as_f64().unwrap(), "{walk}");
    assert!(walk["median_count"]["person"][1].as_f64().unwrap() >= 3.0, "{walk}");
    // The people counted in every frame, from the first frame the tracker is warm (the third), in two parts.
    let parts = walk["annotated"]["person"].as_array().unwrap();
    let frames: Vec<(&str, u64)> =
        parts.iter().map(|p| (p["part"].as_str().unwrap(), p["frames"].as_u64().unwrap())).collect();
    assert_eq!(frames, [("in-domain", 3), ("held-out", 5)], "{walk}");
    for part in parts {
        let (raw, tracked) = (&part["raw"], &part["tracked"]);
        let figure = |series: &Value, name: &str| series[name].as_f64().unwrap();
        assert!(
            figure(tracked, "wrong_way_changes_per_minute") <= figure(raw, "wrong_way_changes_per_minute"),
            "{part}"
        );
        assert!(figure(tracked, "mean_abs_error") <= figure(raw, "mean_abs_error").max(1.0), "{part}");
        assert!((0.0..=1.0).contains(&figure(tracked, "exact")), "{part}");
    }

    // An item whose range starts at 0 (0 alone says present, not counted) is not scored, and says why.
    let text = std::fs::read_to_string(&suite).unwrap();
    std::fs::write(&suite, text.replace("person = 3,", "person = \"0-3\",")).unwrap();
    let result =
        lookout(&["bench", "--suite", suite.to_str().unwrap(), "--variants", "0.3", "--out", out.to_str().unwrap()]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(report["skipped"].to_string().contains("the range of `person` starts at 0"), "{}", report["skipped"]);

    // Counts for another number of frames than the folder holds are refused, naming the sequence.
    let text = text.replace("5-6 6", "5-6");
    std::fs::write(&suite, text).unwrap();
    let result =
        lookout(&["bench", "--suite", suite.to_str().unwrap(), "--variants", "0.3", "--out", out.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        !result.status.success()
            && stderr.contains("sequence walk")
            && stderr.contains("9 annotated counts for 10 frames"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
