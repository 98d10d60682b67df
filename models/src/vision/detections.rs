//! Object detections after the model: score threshold, per-class non-maximum suppression, ordering, counts per
//! label, and coarse position words for speaking about a box.

use std::collections::BTreeMap;

use serde::Serialize;

/// One detected object; `bbox` is `[x1, y1, x2, y2]` in source-image pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub label_id: usize,
    pub label: String,
    pub score: f32,
    pub bbox: [f32; 4],
    /// Set when the object was followed over several frames (the daemon's tracker); `None` for a single image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track: Option<TrackInfo>,
}

/// An object's history over the analysed frames: its track's id (unique while the daemon runs), the frames since it
/// was first seen, in how many of them it was detected, and how many have passed since it was last detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TrackInfo {
    pub id: u32,
    pub age_frames: u32,
    pub seen_frames: u32,
    pub missed_frames: u32,
}

/// Settings for `filter_detections`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectionFilter {
    /// Detections scoring below this are dropped.
    pub score_threshold: f32,
    /// A box overlapping a higher-scoring box by more than this IoU is dropped...
    pub iou_threshold: f32,
    /// ...whatever its class (as the detector's own pipeline does), or only when the classes match.
    pub class_agnostic: bool,
    pub max_detections: usize,
}

impl Default for DetectionFilter {
    fn default() -> Self {
        DetectionFilter { score_threshold: 0.25, iou_threshold: 0.45, class_agnostic: true, max_detections: 100 }
    }
}

/// The evidence one label's detections need, as camera users set it per label (Frigate's object filters): a
/// single frame's score (on top of the detector's own threshold), the median score over the frames a followed
/// object was seen in before the daemon reports it, and the box's area as a fraction of the frame's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LabelFilter {
    pub min_score: f32,
    /// A detection below `min_score` but at least this is a candidate for the daemon's tracker only, which reports
    /// it once it has been seen moving: far people and people seen from above score low, and the clutter that
    /// scores like them (a rock, a signpost, a cone) stands still. At `min_score` or above: no such candidates.
    pub moving_min_score: f32,
    pub threshold: f32,
    pub min_area: f32,
    pub max_area: f32,
}

/// Labels that small clutter in wide camera scenes is mistaken for (traffic cones and litter as sports balls,
/// kerbs and shadows as skis): one of them needs far more evidence than a person or a vehicle.
pub const CLUTTER_LABELS: [&str; 8] =
    ["sports ball", "frisbee", "skis", "snowboard", "skateboard", "baseball bat", "baseball glove", "tennis racket"];

/// Labels whose objects stand still for hours (parked vehicles): a followed one is confirmed on a lower median.
pub const VEHICLE_LABELS: [&str; 6] = ["car", "truck", "bus", "motorcycle", "bicycle", "train"];

/// The groups of labels whose default filters differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelGroup {
    Person,
    Vehicle,
    Clutter,
    Other,
}

impl LabelGroup {
    pub fn of(label: &str) -> LabelGroup {
        if label == "person" {
            LabelGroup::Person
        } else if VEHICLE_LABELS.contains(&label) {
            LabelGroup::Vehicle
        } else if CLUTTER_LABELS.contains(&label) {
            LabelGroup::Clutter
        } else {
            LabelGroup::Other
        }
    }

    /// Whether a large frame's tiles look for this group's objects: far people and vehicles are what tiles are for;
    /// seen at a tile's zoom, floor markings and parts of people pass for kites and dogs.
    pub fn is_tiled(self) -> bool {
        matches!(self, LabelGroup::Person | LabelGroup::Vehicle)
    }

    /// The detector component's manifest parameter that replaces the group's `[min_score, threshold]`.
    pub fn param(self) -> &'static str {
        match self {
            LabelGroup::Person => "filter_person",
            LabelGroup::Vehicle => "filter_vehicle",
            LabelGroup::Clutter => "filter_clutter",
            LabelGroup::Other => "filter_other",
        }
    }
}

impl LabelFilter {
    /// Lookout's defaults for `label`, on top of the detector's own threshold (0.3 for the bundle's), calibrated on
    /// the in-domain frames of the camera suite (`runtime/bench/suites/camera.toml`). There, at 0.3, the detector
    /// took traffic cones and litter for sports balls (up to 0.70), a rock, a signpost and a cone for people (up to
    /// 0.42, medians about 0.37), and a sign for a bird (0.30-0.34), while people walking scored 0.45-0.80 and the
    /// parked van and car 0.30-0.46. A person needs 0.40 (person precision 80% → 98%, recall 100% → 90%), any
    /// label but people and vehicles 0.35, and the small labels clutter turns into 0.75. A person from 0.30 is a
    /// moving candidate: on an indoor camera seen from above, people walking in plain view score 0.30-0.40.
    /// A detector whose scores run differently recalibrates a group through its manifest (`LabelGroup::param`).
    pub fn default_for(label: &str) -> LabelFilter {
        let any =
            LabelFilter { min_score: 0.35, moving_min_score: 0.35, threshold: 0.45, min_area: 0.0, max_area: 1.0 };
        match LabelGroup::of(label) {
            LabelGroup::Clutter => LabelFilter { min_score: 0.75, moving_min_score: 0.75, threshold: 0.8, ..any },
            LabelGroup::Vehicle => LabelFilter { min_score: 0.0, moving_min_score: 0.0, threshold: 0.35, ..any },
            LabelGroup::Person => LabelFilter { min_score: 0.4, moving_min_score: 0.3, ..any },
            LabelGroup::Other => any,
        }
    }

    /// Whether one frame's detection with this score, covering this fraction of the frame, passes.
    pub fn admits(&self, score: f32, area_fraction: f32) -> bool {
        score >= self.min_score && (self.min_area..=self.max_area).contains(&area_fraction)
    }

    /// Whether it passes at least as a moving candidate (`moving_min_score`).
    pub fn admits_moving(&self, score: f32, area_fraction: f32) -> bool {
        self.admits(score, area_fraction)
            || (score >= self.moving_min_score && (self.min_area..=self.max_area).contains(&area_fraction))
    }

    /// Whether some detections below `min_score` are moving candidates.
    pub fn has_moving_candidates(&self) -> bool {
        self.moving_min_score < self.min_score
    }
}

pub fn box_area(bbox: [f32; 4]) -> f32 {
    (bbox[2] - bbox[0]).max(0.0) * (bbox[3] - bbox[1]).max(0.0)
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes; 0 when either is empty.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let intersection = box_area([a[0].max(b[0]), a[1].max(b[1]), a[2].min(b[2]), a[3].min(b[3])]);
    let union = box_area(a) + box_area(b) - intersection;
    if union > 0.0 {
        intersection / union
    } else {
        0.0
    }
}

/// Drops low scores and NaNs, sorts by score (highest first; ties by label id, then box), suppresses overlaps
/// greedily (of any class, or of the same class), and keeps at most `max_detections`. Works in place, without
/// allocating.
pub fn filter_detections(detections: &mut Vec<Detection>, filter: &DetectionFilter) {
    detections
        .retain(|d| d.score >= filter.score_threshold && d.score.is_finite() && d.bbox.iter().all(|v| v.is_finite()));
    detections.sort_by(|a, b| {
        b.score.total_cmp(&a.score).then(a.label_id.cmp(&b.label_id)).then_with(|| {
            a.bbox.iter().zip(b.bbox.iter()).fold(std::cmp::Ordering::Equal, |o, (x, y)| o.then(x.total_cmp(y)))
        })
    });
    let mut kept = 0;
    for candidate in 0..detections.len() {
        if kept >= filter.max_detections {
            break;
        }
        let suppressed = detections[..kept].iter().any(|winner| {
            (filter.class_agnostic || winner.label_id == detections[candidate].label_id)
                && iou(winner.bbox, detections[candidate].bbox) > filter.iou_threshold
        });
        if !suppressed {
            detections.swap(kept, candidate);
            kept += 1;
        }
    }
    detections.truncate(kept);
}

/// How many detections carry each label.
pub fn count_by_label(detections: &[Detection]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for detection in detections {
        *counts.entry(detection.label.clone()).or_insert(0) += 1;
    }
    counts
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Horizontal {
    Left,
    Center,
    Right,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Vertical {
    Top,
    Middle,
    Bottom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    Near,
    Far,
}

impl Horizontal {
    pub fn as_str(self) -> &'static str {
        match self {
            Horizontal::Left => "left",
            Horizontal::Center => "center",
            Horizontal::Right => "right",
        }
    }
}

impl Distance {
    pub fn as_str(self) -> &'static str {
        match self {
            Distance::Near => "near",
            Distance::Far => "far",
        }
    }
}

/// A box covering more than this fraction of the frame is "near".
pub const NEAR_AREA_FRACTION: f32 = 0.15;
/// A box covering less than this fraction of the frame is "far".
pub const FAR_AREA_FRACTION: f32 = 0.02;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Position {
    pub horizontal: Horizontal,
    pub vertical: Vertical,
    /// `None` between the far and near thresholds.
    pub distance: Option<Distance>,
}

/// Left / center / right and top / middle / bottom by the box centre in thirds of the width and height (a centre
/// exactly on a boundary goes to the middle third), and near / far by box area against the frame area.
pub fn position(bbox: [f32; 4], width: u32, height: u32) -> Position {
    let (frame_w, frame_h) = (width.max(1) as f32, height.max(1) as f32);
    let frame_area = frame_w * frame_h;
    // 0, 1 or 2: the third of `size` that `at` falls in.
    let third = |at: f32, size: f32| {
        if at < size / 3.0 {
            0
        } else if at > size * 2.0 / 3.0 {
            2
        } else {
            1
        }
    };
    let horizontal =
        [Horizontal::Left, Horizontal::Center, Horizontal::Right][third((bbox[0] + bbox[2]) / 2.0, frame_w)];
    let vertical = [Vertical::Top, Vertical::Middle, Vertical::Bottom][third((bbox[1] + bbox[3]) / 2.0, frame_h)];
    let fraction = box_area(bbox) / frame_area;
    let distance = if fraction > NEAR_AREA_FRACTION {
        Some(Distance::Near)
    } else if fraction < FAR_AREA_FRACTION {
        Some(Distance::Far)
    } else {
        None
    };
    Position { horizontal, vertical, distance }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(label_id: usize, score: f32, bbox: [f32; 4]) -> Detection {
        Detection { label_id, label: format!("class{label_id}"), score, bbox, track: None }
    }

    #[test]
    fn iou_of_known_boxes() {
        assert_eq!(iou([0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]), 1.0);
        assert_eq!(iou([0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]), 2.0 / 6.0);
        assert_eq!(iou([0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0]), 0.0);
        assert_eq!(iou([0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]), 0.0);
    }

    #[test]
    fn nms_is_sorted_by_score_across_classes_or_per_class() {
        let kept = |class_agnostic: bool| {
            let mut detections = vec![
                detection(0, 0.6, [0.0, 0.0, 10.0, 10.0]),
                detection(0, 0.9, [1.0, 1.0, 11.0, 11.0]),
                detection(1, 0.8, [0.0, 0.0, 10.0, 10.0]),
                detection(0, 0.7, [50.0, 50.0, 60.0, 60.0]),
                detection(2, 0.1, [0.0, 0.0, 5.0, 5.0]),
                detection(2, f32::NAN, [0.0, 0.0, 5.0, 5.0]),
            ];
            let filter =
                DetectionFilter { score_threshold: 0.25, iou_threshold: 0.45, class_agnostic, max_detections: 10 };
            filter_detections(&mut detections, &filter);
            detections.iter().map(|d| (d.label_id, d.score)).collect::<Vec<_>>()
        };
        assert_eq!(kept(false), vec![(0, 0.9), (1, 0.8), (0, 0.7)]);
        assert_eq!(kept(true), vec![(0, 0.9), (0, 0.7)]);
    }

    #[test]
    fn max_detections_keeps_the_best() {
        let mut detections: Vec<Detection> = (0..10)
            .map(|i| detection(0, 0.3 + i as f32 * 0.05, [i as f32 * 20.0, 0.0, i as f32 * 20.0 + 10.0, 10.0]))
            .collect();
        filter_detections(&mut detections, &DetectionFilter { max_detections: 3, ..DetectionFilter::default() });
        assert_eq!(detections.len(), 3);
        assert!(detections[0].score > detections[1].score && detections[1].score > detections[2].score);
        assert_eq!(detections[0].bbox[0], 180.0);
    }

    #[test]
    fn counts_group_by_label() {
        let detections = vec![detection(0, 0.9, [0.0; 4]), detection(1, 0.9, [0.0; 4]), detection(0, 0.9, [0.0; 4])];
        let counts = count_by_label(&detections);
        assert_eq!(counts.get("class0"), Some(&2));
        assert_eq!(counts.get("class1"), Some(&1));
    }

    #[test]
    fn position_words_follow_thirds_and_area() {
        let (w, h) = (300, 100);
        assert_eq!(position([0.0, 0.0, 50.0, 10.0], w, h).horizontal, Horizontal::Left);
        assert_eq!(position([140.0, 0.0, 160.0, 10.0], w, h).horizontal, Horizontal::Center);
        assert_eq!(position([250.0, 0.0, 300.0, 10.0], w, h).horizontal, Horizontal::Right);
        assert_eq!(position([0.0, 0.0, 200.0, 100.0], w, h).distance, Some(Distance::Near));
        assert_eq!(position([0.0, 0.0, 10.0, 10.0], w, h).distance, Some(Distance::Far));
        assert_eq!(position([0.0, 0.0, 30.0, 100.0], w, h).distance, None);
        assert_eq!(position([0.0, 0.0, 10.0, 10.0], w, h).vertical, Vertical::Top);
        assert_eq!(position([0.0, 40.0, 10.0, 60.0], w, h).vertical, Vertical::Middle);
        assert_eq!(position([0.0, 80.0, 10.0, 100.0], w, h).vertical, Vertical::Bottom);
        assert_eq!(Horizontal::Center.as_str(), "center");
        assert_eq!(Distance::Near.as_str(), "near");
    }
}
