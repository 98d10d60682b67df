//! What one look at an image found: objects, their counts, text lines, scene labels and stage timings, serializable, and a
//! deterministic short English description of it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::detections::{count_by_label, position, Detection, Distance, Horizontal};

/// One recognized line of text; `bbox` is `[x1, y1, x2, y2]` in source-image pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextLine {
    pub text: String,
    pub score: f32,
    pub bbox: [f32; 4],
}

/// One ImageNet class the scene classifier sees in the whole frame ("seashore", "espresso").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SceneLabel {
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scene {
    pub objects: Vec<Detection>,
    pub counts: BTreeMap<String, usize>,
    /// In reading order.
    pub text: Vec<TextLine>,
    /// Whether reading stopped before the last line, for the time budget.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub text_cut: bool,
    /// The scene classifier's most likely classes for the whole frame, most likely first; empty when it is not
    /// loaded.
    pub scene_labels: Vec<SceneLabel>,
    pub width: u32,
    pub height: u32,
    /// Milliseconds per stage, keyed by stage name ("decode", "detect", "ocr", ...).
    pub timings_ms: BTreeMap<String, f64>,
}

impl Scene {
    /// A scene of the given objects, with `counts` filled from them.
    pub fn new(width: u32, height: u32, objects: Vec<Detection>, text: Vec<TextLine>) -> Self {
        let counts = count_by_label(&objects);
        Scene {
            objects,
            counts,
            text,
            text_cut: false,
            scene_labels: Vec::new(),
            width,
            height,
            timings_ms: BTreeMap::new(),
        }
    }

    /// Short phrases describing the scene, in a fixed order: one per label (alphabetical) with its count and,
    /// for a single object, where it is ("1 person on the left, near"); then the text, quoted, in reading
    /// order.
    pub fn summary(&self) -> Vec<String> {
        let mut phrases = Vec::new();
        for (label, &count) in &self.counts {
            if count == 1 {
                let mut phrase = format!("1 {label}");
                if let Some(object) = self.objects.iter().find(|d| &d.label == label) {
                    let place = position(object.bbox, self.width, self.height);
                    phrase.push_str(match place.horizontal {
                        Horizontal::Left => " on the left",
                        Horizontal::Center => " in the center",
                        Horizontal::Right => " on the right",
                    });
                    if let Some(distance) = place.distance {
                        phrase.push_str(match distance {
                            Distance::Near => ", near",
                            Distance::Far => ", far",
                        });
                    }
                }
                phrases.push(phrase);
            } else {
                phrases.push(format!("{count} {}", plural(label)));
            }
        }
        for line in &self.text {
            if !line.text.trim().is_empty() {
                phrases.push(format!("text \"{}\"", line.text.trim()));
            }
        }
        phrases
    }
}

/// The English plural of a COCO label ("person" → "people", "bus" → "buses", "skis" stays).
pub fn plural(label: &str) -> String {
    let (head, last) = match label.rsplit_once(' ') {
        Some((head, last)) => (format!("{head} "), last),
        None => (String::new(), label),
    };
    let word = match last {
        "person" => "people".to_string(),
        "mouse" => "mice".to_string(),
        "knife" => "knives".to_string(),
        "sheep" | "skis" | "scissors" => last.to_string(),
        w if w.ends_with('s') || w.ends_with("sh") || w.ends_with("ch") || w.ends_with('x') => format!("{w}es"),
        w => format!("{w}s"),
    };
    format!("{head}{word}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(label: &str, bbox: [f32; 4]) -> Detection {
        Detection { label_id: 0, label: label.to_string(), score: 0.9, bbox, track: None }
    }

    #[test]
    fn scene_counts_and_serializes() {
        let scene = Scene::new(
            300,
            100,
            vec![
                detection("person", [0.0, 0.0, 200.0, 100.0]),
                detection("cup", [280.0, 0.0, 290.0, 10.0]),
                detection("cup", [0.0; 4]),
            ],
            vec![TextLine { text: "EXIT".into(), score: 0.95, bbox: [0.0, 0.0, 10.0, 5.0] }],
        );
        assert_eq!(scene.counts.get("cup"), Some(&2));
        let json = serde_json::to_value(&scene).expect("json");
        assert_eq!(json["counts"]["person"], 1);
        assert_eq!(json["text"][0]["text"], "EXIT");
        assert_eq!(json["width"], 300);
        assert!(json["timings_ms"].is_object());
    }

    #[test]
    fn summary_is_deterministic_phrases() {
        let scene = Scene::new(
            300,
            100,
            vec![
                detection("person", [0.0, 0.0, 150.0, 100.0]),
                detection("cup", [280.0, 0.0, 290.0, 10.0]),
                detection("cup", [0.0; 4]),
                detection("dog", [140.0, 0.0, 160.0, 100.0]),
            ],
            vec![TextLine { text: " EXIT ".into(), score: 0.95, bbox: [0.0; 4] }],
        );
        assert_eq!(
            scene.summary(),
            vec!["2 cups", "1 dog in the center", "1 person on the left, near", "text \"EXIT\""]
        );
    }
}
