//! A question's text, as a user types it or Whisper hears it: understood (kind, labels, counts) and answered from a
//! scene without the decoder, the answer checked for grounding; nothing faults whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout::answer::reply;
use lookout::fusion::Task;
use lookout_models::llm::GenerateOptions;
use lookout_models::vision::detections::Detection;
use lookout_models::vision::scene::TextLine;
use lookout_models::vision::Scene;

const LABELS: [&str; 8] = ["person", "dog", "car", "sports ball", "hot dog", "cell phone", "kite", "horse"];

fn scene() -> Scene {
    let object = |label_id: usize, bbox: [f32; 4]| Detection {
        label_id,
        label: LABELS[label_id].to_string(),
        score: 0.8,
        bbox,
        track: None,
    };
    let objects = vec![
        object(0, [10.0, 10.0, 60.0, 200.0]),
        object(0, [400.0, 20.0, 460.0, 220.0]),
        object(1, [200.0, 300.0, 300.0, 400.0]),
    ];
    let text = vec![TextLine { text: "EXIT 42".into(), score: 0.9, bbox: [0.0, 0.0, 100.0, 20.0] }];
    Scene::new(640, 480, objects, text)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let known: Vec<String> = LABELS.map(String::from).to_vec();
    let _ = reply(
        &scene(),
        &known,
        &Task::Answer(text.to_string()),
        &[],
        None,
        &GenerateOptions::default(),
        &mut |_| {},
        &|| false,
    );
});
