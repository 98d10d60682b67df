//! Temporal confirmation of detections in the daemon: each analysed frame's objects are matched to the tracks of
//! the frames before (same label, overlapping or nearby box), an object is reported once its track has been seen in
//! `confirm_frames` of the last `window_frames` frames with a median score at its label's threshold (or, for a
//! label with moving candidates, once it has moved: clutter that scores like a far person stands still), and it stays
//! reported through misses, longer when it has not moved, unless it was last seen going out through the frame's edge.
//! A new track confirmed near where a reported one went missing takes that one's place instead of being counted
//! beside it. So counts change when something enters or leaves, not when the detector flickers or loses someone for
//! a while. The track table has a fixed capacity, allocated once.

use lookout_models::vision::detections::{box_area, iou, Detection, LabelFilter, TrackInfo};

/// Scores kept per track for its median.
const SCORE_HISTORY: usize = 16;
/// A track of a label with moving candidates is confirmed without its median score once its centre has moved this
/// many box heights from where it was first seen.
const MOVED_HEIGHTS: f32 = 0.25;
/// The farthest, in box diagonals, a newly confirmed track may be from where a missing one should be by now to take
/// its place.
const REJOIN_MAX_DIAGONALS: f32 = 5.0;
/// A track whose box has kept at least this overlap with where it was confirmed counts as stationary.
const STATIONARY_IOU: f32 = 0.5;
/// A track last seen this close to the frame's edge (a fraction of the frame's size), moving out, that is then
/// missed has left the frame, and is forgotten at once.
const EDGE_MARGIN: f32 = 0.01;

/// How tracks are made, confirmed and forgotten (`[objects]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerSettings {
    /// Frames, among the last `window_frames`, a new object must be seen in before it is reported.
    pub confirm_frames: u32,
    pub window_frames: u32,
    /// Consecutive missed frames after which a reported object that moved is forgotten (at once where it was last
    /// seen leaving through the frame's edge).
    pub forget_after_frames: u32,
    /// The same for an object that has stayed where it was confirmed (a parked car, a chair).
    pub remember_stationary_frames: u32,
    /// Least overlap of a detection with a track's last box for them to match; failing that, they still match when
    /// their centres are closer than half the larger box's diagonal (a small object moving between frames).
    pub min_iou: f32,
    /// Most tracks held at once; detections beyond it wait for a slot.
    pub max_tracks: usize,
}

impl Default for TrackerSettings {
    fn default() -> TrackerSettings {
        TrackerSettings {
            confirm_frames: 3,
            window_frames: 5,
            forget_after_frames: 10,
            remember_stationary_frames: 30,
            min_iou: 0.3,
            max_tracks: 64,
        }
    }
}

impl TrackerSettings {
    /// Bytes the track table and the matching scratch hold for `max_detections` detections a frame.
    pub fn table_bytes(&self, max_detections: usize) -> usize {
        // Each track also holds its label's name (about 16 bytes), and every frame's reported copy of it.
        2 * self.max_tracks * (std::mem::size_of::<Track>() + 16)
            + self.max_tracks * (max_detections * std::mem::size_of::<Candidate>() + 1)
            + max_detections
    }
}

#[derive(Debug, Clone)]
struct Track {
    id: u32,
    label_id: usize,
    label: String,
    bbox: [f32; 4],
    /// The box when the track was made, to tell an object that moved.
    first_bbox: [f32; 4],
    /// How far the box moved per frame, smoothed: where to look for the object next.
    velocity: [f32; 4],
    /// The box when the track was confirmed, to tell a stationary object.
    confirmed_at: Option<[f32; 4]>,
    /// Bit i: seen i frames ago.
    seen_bits: u32,
    age_frames: u32,
    seen_frames: u32,
    missed_frames: u32,
    scores: [f32; SCORE_HISTORY],
    score_count: usize,
    /// A newly confirmed track took this one's place: it goes at the end of the frame.
    replaced: bool,
}

impl Track {
    fn median_score(&self) -> f32 {
        let n = self.score_count.min(SCORE_HISTORY);
        let mut scores = self.scores;
        let scores = &mut scores[..n];
        scores.sort_by(f32::total_cmp);
        match n {
            0 => 0.0,
            n if n % 2 == 1 => scores[n / 2],
            n => (scores[n / 2 - 1] + scores[n / 2]) / 2.0,
        }
    }

    /// Where the box should be `frames` frames after it was last seen, moving as it did.
    fn predicted_after(&self, frames: u32) -> [f32; 4] {
        std::array::from_fn(|i| self.bbox[i] + self.velocity[i] * frames as f32)
    }

    /// Where the box should be in the frame being matched.
    fn predicted(&self) -> [f32; 4] {
        self.predicted_after(self.missed_frames + 1)
    }

    /// Whether a missed track was last seen at an edge of a `width` x `height` frame, moving out through it.
    fn has_left(&self, width: f32, height: f32) -> bool {
        let (b, v) = (self.bbox, self.velocity);
        let (mx, my) = (EDGE_MARGIN * width, EDGE_MARGIN * height);
        self.missed_frames > 0
            && ((b[0] < mx && v[0] < 0.0)
                || (b[1] < my && v[1] < 0.0)
                || (b[2] > width - mx && v[2] > 0.0)
                || (b[3] > height - my && v[3] > 0.0))
    }

    fn observe(&mut self, detection: &Detection) {
        if self.seen_frames > 0 {
            let frames = (self.missed_frames + 1) as f32;
            for i in 0..4 {
                let moved = (detection.bbox[i] - self.bbox[i]) / frames;
                self.velocity[i] = if self.seen_frames == 1 { moved } else { 0.5 * self.velocity[i] + 0.5 * moved };
            }
        }
        self.bbox = detection.bbox;
        self.seen_bits |= 1;
        self.seen_frames += 1;
        self.missed_frames = 0;
        self.scores[self.score_count % SCORE_HISTORY] = detection.score;
        self.score_count += 1;
    }

    fn is_stationary(&self) -> bool {
        self.confirmed_at.is_some_and(|at| iou(at, self.bbox) >= STATIONARY_IOU)
    }

    /// Whether its centre has moved `MOVED_HEIGHTS` box heights or more since it was first seen.
    fn has_moved(&self) -> bool {
        let height = (self.bbox[3] - self.bbox[1]).max(1.0);
        centre_distance(self.first_bbox, self.bbox) >= MOVED_HEIGHTS * height
    }
}

/// A possible pairing of a track and a detection, better pairs first.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    track: usize,
    detection: usize,
    overlap: f32,
    distance: f32,
}

/// The tracks of one camera stream.
pub struct Tracker {
    settings: TrackerSettings,
    tracks: Vec<Track>,
    candidates: Vec<Candidate>,
    matched_tracks: Vec<bool>,
    matched_detections: Vec<bool>,
    next_id: u32,
    frames: u32,
}

impl Tracker {
    /// A tracker whose table holds `settings.max_tracks` tracks, matching up to `max_detections` detections a frame.
    pub fn new(settings: TrackerSettings, max_detections: usize) -> Tracker {
        let window_frames = settings.window_frames.clamp(1, 32);
        let settings = TrackerSettings {
            window_frames,
            confirm_frames: settings.confirm_frames.clamp(1, window_frames),
            ..settings
        };
        Tracker {
            settings,
            tracks: Vec::with_capacity(settings.max_tracks),
            candidates: Vec::with_capacity(settings.max_tracks * max_detections),
            matched_tracks: Vec::with_capacity(settings.max_tracks),
            matched_detections: Vec::with_capacity(max_detections),
            next_id: 1,
            frames: 0,
        }
    }

    /// Whether enough frames have been analysed for an object in view from the start to be confirmed: until then
    /// an empty report means "not yet known", not "nothing there".
    pub fn is_warm(&self) -> bool {
        self.frames >= self.settings.confirm_frames
    }

    /// Takes one analysed frame's detections (boxes in pixels of a `frame_size` = (width, height) frame) and returns
    /// the objects to report: confirmed tracks, each with its latest box, its median score and its history.
    /// `filters[label_id]` says what a label's track needs (a label without one is never reported): its median
    /// score at `threshold`, or, where the label has moving candidates, to have moved.
    pub fn update(
        &mut self,
        detections: &[Detection],
        frame_size: (u32, u32),
        filters: &[LabelFilter],
    ) -> Vec<Detection> {
        let (width, height) = (frame_size.0 as f32, frame_size.1 as f32);
        let s = self.settings;
        self.frames = self.frames.saturating_add(1);
        for track in &mut self.tracks {
            track.seen_bits <<= 1;
            track.age_frames += 1;
        }
        self.match_detections(detections);
        for (track, detection) in self.candidates.iter().map(|c| (c.track, c.detection)) {
            self.tracks[track].observe(&detections[detection]);
        }
        for track in &mut self.tracks {
            if track.seen_bits & 1 == 0 {
                track.missed_frames += 1;
            }
        }
        let window_mask = if s.window_frames >= 32 { u32::MAX } else { (1u32 << s.window_frames) - 1 };
        self.tracks.retain(|t| match t.confirmed_at {
            Some(_) if t.is_stationary() => t.missed_frames <= s.remember_stationary_frames,
            Some(_) => t.missed_frames <= s.forget_after_frames && !t.has_left(width, height),
            // Unconfirmed: kept while a window of `window_frames` could still hold `confirm_frames` sightings.
            None => t.missed_frames <= s.window_frames - s.confirm_frames,
        });
        for (index, detection) in detections.iter().enumerate() {
            if self.matched_detections[index] || self.tracks.len() >= s.max_tracks {
                continue;
            }
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1).max(1);
            let mut track = Track {
                id,
                label_id: detection.label_id,
                label: detection.label.clone(),
                bbox: detection.bbox,
                first_bbox: detection.bbox,
                velocity: [0.0; 4],
                confirmed_at: None,
                seen_bits: 0,
                age_frames: 0,
                seen_frames: 0,
                missed_frames: 0,
                scores: [0.0; SCORE_HISTORY],
                score_count: 0,
                replaced: false,
            };
            track.observe(detection);
            self.tracks.push(track);
        }
        for t in 0..self.tracks.len() {
            let track = &self.tracks[t];
            let Some(filter) = filters.get(track.label_id) else { continue };
            if track.confirmed_at.is_none()
                && (track.seen_bits & window_mask).count_ones() >= s.confirm_frames
                && (track.median_score() >= filter.threshold || (filter.has_moving_candidates() && track.has_moved()))
            {
                self.tracks[t].confirmed_at = Some(self.tracks[t].bbox);
                self.rejoin(t);
            }
        }
        self.tracks.retain(|t| !t.replaced);
        let mut reported: Vec<Detection> = self
            .tracks
            .iter()
            .filter(|t| t.confirmed_at.is_some())
            .map(|t| Detection {
                label_id: t.label_id,
                label: t.label.clone(),
                score: t.median_score(),
                bbox: t.bbox,
                track: Some(TrackInfo {
                    id: t.id,
                    age_frames: t.age_frames + 1,
                    seen_frames: t.seen_frames,
                    missed_frames: t.missed_frames,
                }),
            })
            .collect();
        reported.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.track.map(|t| t.id).cmp(&b.track.map(|t| t.id))));
        reported
    }

    /// Where a reported object went missing and the newly confirmed track `t` of its label appears near where it
    /// should be by now (within half a box diagonal, and one more for every frame missed, at most
    /// `REJOIN_MAX_DIAGONALS`), the object was lost and found again, not joined by another: `t` takes the nearest
    /// such track's id and age, and that track goes.
    fn rejoin(&mut self, t: usize) {
        let new = &self.tracks[t];
        let lost = self
            .tracks
            .iter()
            .enumerate()
            .filter(|(i, old)| {
                *i != t
                    && old.label_id == new.label_id
                    && old.confirmed_at.is_some()
                    && old.missed_frames > 0
                    && !old.replaced
            })
            .map(|(i, old)| {
                let expected = old.predicted_after(old.missed_frames);
                let diagonals = (0.5 + old.missed_frames as f32).min(REJOIN_MAX_DIAGONALS);
                let reach = diagonal(expected).max(diagonal(new.bbox)) * diagonals;
                (i, centre_distance(expected, new.bbox), reach)
            })
            .filter(|&(_, distance, reach)| distance < reach)
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((old, _, _)) = lost {
            let (id, age_frames) = (self.tracks[old].id, self.tracks[old].age_frames);
            self.tracks[old].replaced = true;
            let new = &mut self.tracks[t];
            new.id = id;
            new.age_frames = new.age_frames.max(age_frames);
        }
    }

    /// Tracks held now, confirmed or not.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tracks.len()
    }

    /// Pairs tracks and detections of the same label greedily, best overlap first (then nearest centres), leaving
    /// the chosen pairs in `candidates` and marking matched detections.
    fn match_detections(&mut self, detections: &[Detection]) {
        self.candidates.clear();
        for (t, track) in self.tracks.iter().enumerate() {
            for (d, detection) in detections.iter().enumerate() {
                if detection.label_id != track.label_id || self.candidates.len() == self.candidates.capacity() {
                    continue;
                }
                let expected = track.predicted();
                let overlap = iou(expected, detection.bbox);
                let distance = centre_distance(expected, detection.bbox);
                let reach = diagonal(expected).max(diagonal(detection.bbox)) / 2.0;
                if overlap >= self.settings.min_iou || distance < reach {
                    self.candidates.push(Candidate { track: t, detection: d, overlap, distance });
                }
            }
        }
        self.candidates.sort_by(|a, b| b.overlap.total_cmp(&a.overlap).then(a.distance.total_cmp(&b.distance)));
        self.matched_detections.clear();
        self.matched_detections.resize(detections.len(), false);
        self.matched_tracks.clear();
        self.matched_tracks.resize(self.tracks.len(), false);
        let mut kept = 0;
        for i in 0..self.candidates.len() {
            let c = self.candidates[i];
            if !self.matched_tracks[c.track] && !self.matched_detections[c.detection] {
                self.matched_tracks[c.track] = true;
                self.matched_detections[c.detection] = true;
                self.candidates[kept] = c;
                kept += 1;
            }
        }
        self.candidates.truncate(kept);
    }
}

fn centre_distance(a: [f32; 4], b: [f32; 4]) -> f32 {
    let dx = (a[0] + a[2] - b[0] - b[2]) / 2.0;
    let dy = (a[1] + a[3] - b[1] - b[3]) / 2.0;
    (dx * dx + dy * dy).sqrt()
}

fn diagonal(bbox: [f32; 4]) -> f32 {
    let (w, h) = ((bbox[2] - bbox[0]).max(0.0), (bbox[3] - bbox[1]).max(0.0));
    (w * w + h * h).sqrt().max(box_area(bbox).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame the test detections are in.
    const FRAME: (u32, u32) = (1000, 1000);

    /// Every label reported once its median score reaches `threshold`, none with moving candidates.
    fn rules(threshold: f32) -> Vec<LabelFilter> {
        let filter = LabelFilter { min_score: 0.0, moving_min_score: 0.0, threshold, min_area: 0.0, max_area: 1.0 };
        vec![filter; 80]
    }

    fn person(x: f32, score: f32) -> Detection {
        Detection { label_id: 0, label: "person".into(), score, bbox: [x, 100.0, x + 40.0, 200.0], track: None }
    }

    fn ball(x: f32) -> Detection {
        Detection {
            label_id: 32,
            label: "sports ball".into(),
            score: 0.4,
            bbox: [x, 300.0, x + 10.0, 310.0],
            track: None,
        }
    }

    fn ids(reported: &[Detection]) -> Vec<u32> {
        let mut ids: Vec<u32> = reported.iter().map(|d| d.track.expect("tracked").id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn an_object_is_reported_once_seen_in_enough_frames_and_a_flicker_never() {
        let mut tracker = Tracker::new(TrackerSettings::default(), 100);
        let frames = [vec![person(10.0, 0.8), ball(500.0)], vec![person(14.0, 0.8)], vec![person(18.0, 0.8)]];
        let mut reported = Vec::new();
        for frame in &frames {
            assert!(!tracker.is_warm());
            reported.push(tracker.update(frame, FRAME, &rules(0.5)).len());
        }
        assert!(tracker.is_warm());
        assert_eq!(reported, [0, 0, 1], "three sightings confirm the person; the one-frame ball is never reported");
        for _ in 0..5 {
            let out = tracker.update(&[person(18.0, 0.8)], FRAME, &rules(0.5));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].label, "person");
        }
        assert_eq!(tracker.len(), 1, "the ball's track was dropped once it could no longer be confirmed");
    }

    #[test]
    fn a_low_median_score_keeps_a_label_unconfirmed() {
        let mut tracker = Tracker::new(TrackerSettings::default(), 100);
        for _ in 0..10 {
            assert!(tracker.update(&[person(10.0, 0.35)], FRAME, &rules(0.5)).is_empty());
        }
        let mut reported = 0;
        for _ in 0..10 {
            reported = tracker.update(&[person(10.0, 0.35)], FRAME, &rules(0.3)).len();
        }
        assert_eq!(reported, 1, "the same evidence passes a lower threshold");
    }

    #[test]
    fn short_misses_keep_the_count_and_the_id_and_a_moving_object_leaves_after_the_allowance() {
        let mut tracker = Tracker::new(TrackerSettings::default(), 100);
        let mut x = 10.0;
        let mut step = |tracker: &mut Tracker, seen: bool| {
            x += 5.0;
            tracker.update(&if seen { vec![person(x, 0.9)] } else { vec![] }, FRAME, &rules(0.5))
        };
        for _ in 0..3 {
            step(&mut tracker, true);
        }
        for _ in 0..3 {
            step(&mut tracker, true);
        }
        let id = ids(&step(&mut tracker, true));
        // Moved away from where it was confirmed, so it is not stationary.
        for _ in 0..TrackerSettings::default().forget_after_frames {
            assert_eq!(ids(&step(&mut tracker, false)), id, "a missed frame does not change the count");
        }
        assert!(step(&mut tracker, false).is_empty(), "gone once the misses exceed the allowance");
    }

    #[test]
    fn an_object_whose_motion_takes_it_out_of_the_frame_is_forgotten_at_once() {
        let mut tracker = Tracker::new(TrackerSettings::default(), 100);
        // Walking right 30 pixels a frame, from the middle to the right edge of a 1000-pixel frame.
        let mut x = 750.0;
        let mut walker = |tracker: &mut Tracker, seen: bool| {
            x += 30.0;
            tracker.update(&if seen { vec![person(x, 0.9)] } else { vec![] }, FRAME, &rules(0.5))
        };
        for _ in 0..7 {
            assert!(!walker(&mut tracker, true).is_empty() || !tracker.is_warm());
        }
        // Last seen at x = 960..1000, going right: gone through the edge.
        assert!(walker(&mut tracker, false).is_empty(), "left by the right edge: not counted");

        // The same walk stopping in the middle of the frame is still counted through its misses.
        let mut tracker = Tracker::new(TrackerSettings::default(), 100);
        for step in 0..5 {
            tracker.update(&[person(300.0 + 30.0 * step as f32, 0.9)], FRAME, &rules(0.5));
        }
        for missed in 1..=TrackerSettings::default().forget_after_frames {
            assert_eq!(tracker.update(&[], FRAME, &rules(0.5)).len(), 1, "still counted after {missed} missed frames");
        }
    }

    #[test]
    fn someone_lost_and_found_again_keeps_the_count_and_the_id() {
        let mut tracker = Tracker::new(TrackerSettings::default(), 100);
        let mut counts = Vec::new();
        let mut first_id = None;
        for step in 0..24 {
            // Walking right 20 pixels a frame, then missed for 6 frames (behind a sign, say) while slowing down, and
            // found again well short of where the track's motion predicts: too far to match, near enough to rejoin.
            let x = if step < 6 { 100.0 + 20.0 * step as f32 } else { 240.0 + 5.0 * (step - 12) as f32 };
            let seen = !(6..12).contains(&step);
            let out = tracker.update(&if seen { vec![person(x, 0.9)] } else { vec![] }, FRAME, &rules(0.5));
            counts.push(out.len());
            if step == 4 {
                first_id = Some(ids(&out));
            }
            if step == 23 {
                assert_eq!(Some(ids(&out)), first_id, "the same person, the same id");
            }
        }
        assert_eq!(&counts[2..], &[1; 22], "counted once throughout, never twice and never zero: {counts:?}");
        assert!(tracker.len() <= 1, "the old track went when the new one took its place");
    }

    #[test]
    fn a_low_scoring_person_is_reported_once_it_moves_and_still_clutter_never() {
        // People need 0.45 on their median, or to have moved when their detections score from 0.30.
        let mut filters = rules(0.45);
        filters[0] = LabelFilter { min_score: 0.4, moving_min_score: 0.3, ..filters[0] };
        let mut tracker = Tracker::new(TrackerSettings::default(), 100);
        let mut reported = Vec::new();
        for step in 0..12 {
            // A far person walking 10 pixels a frame (a quarter of the 100-pixel box height every 2.5 frames), a
            // rock and a ball (no moving candidates for its label) standing still, all scoring 0.35.
            let walker = person(100.0 + 10.0 * step as f32, 0.35);
            let rock = person(600.0, 0.35);
            let rolling =
                Detection { bbox: [300.0 + 10.0 * step as f32, 300.0, 310.0 + 10.0 * step as f32, 310.0], ..ball(0.0) };
            let out = tracker.update(&[walker, rock, Detection { score: 0.35, ..rolling }], FRAME, &filters);
            reported.push(out.iter().map(|d| d.bbox[0] as i32).collect::<Vec<_>>());
        }
        assert!(reported[..2].iter().all(|r| r.is_empty()), "{reported:?}");
        assert!(
            reported[3..].iter().all(|r| r.len() == 1 && r[0] < 300),
            "only the walker, once it moved: {reported:?}"
        );
    }

    #[test]
    fn a_stationary_object_is_remembered_through_long_gaps_and_not_counted_again() {
        let settings = TrackerSettings::default();
        let mut tracker = Tracker::new(settings, 100);
        let car = |score| Detection {
            label_id: 2,
            label: "car".into(),
            score,
            bbox: [300.0, 300.0, 400.0, 360.0],
            track: None,
        };
        let mut first = Vec::new();
        for _ in 0..4 {
            first = ids(&tracker.update(&[car(0.7)], FRAME, &rules(0.5)));
        }
        assert_eq!(first.len(), 1);
        for gap in 0..settings.remember_stationary_frames {
            assert_eq!(
                ids(&tracker.update(&[], FRAME, &rules(0.5))),
                first,
                "still remembered after {gap} missed frames"
            );
        }
        assert_eq!(
            ids(&tracker.update(&[car(0.7)], FRAME, &rules(0.5))),
            first,
            "seen again: the same track, not a new car"
        );
    }

    #[test]
    fn a_car_arriving_far_from_a_missed_parked_one_is_counted_beside_it() {
        let mut tracker = Tracker::new(TrackerSettings::default(), 100);
        let car = |bbox| Detection { label_id: 2, label: "car".into(), score: 0.7, bbox, track: None };
        let parked = car([300.0, 300.0, 400.0, 360.0]);
        for _ in 0..4 {
            tracker.update(std::slice::from_ref(&parked), FRAME, &rules(0.5));
        }
        // The parked car missed for 20 frames (remembered: it stands still), then another car arrives six of its
        // diagonals away: not the parked one found again.
        for _ in 0..20 {
            assert_eq!(tracker.update(&[], FRAME, &rules(0.5)).len(), 1);
        }
        let arriving = car([850.0, 800.0, 950.0, 860.0]);
        let mut reported = Vec::new();
        for _ in 0..3 {
            reported = tracker.update(std::slice::from_ref(&arriving), FRAME, &rules(0.5));
        }
        assert_eq!(reported.len(), 2, "{reported:?}");
    }

    #[test]
    fn two_people_crossing_keep_their_ids() {
        let mut tracker = Tracker::new(TrackerSettings::default(), 100);
        let mut last = Vec::new();
        for step in 0..12 {
            let a = person(100.0 + 12.0 * step as f32, 0.9);
            let b = person(300.0 - 12.0 * step as f32, 0.8);
            last = tracker.update(&[a, b], FRAME, &rules(0.5));
            if step >= 2 {
                assert_eq!(last.len(), 2, "step {step}");
            }
        }
        let left_to_right = last.iter().find(|d| d.score > 0.85).expect("the first person");
        assert!(left_to_right.bbox[0] > 200.0, "the 0.9 track followed the person walking right");
        assert_eq!(tracker.update(&[], FRAME, &rules(0.5)).len(), 2);
    }

    #[test]
    fn the_table_stays_bounded_whatever_the_frames_hold() {
        let settings = TrackerSettings { max_tracks: 16, ..TrackerSettings::default() };
        let mut tracker = Tracker::new(settings, 100);
        for frame in 0..50 {
            let crowd: Vec<Detection> = (0..100).map(|i| person((frame * 100 + i) as f32 * 50.0, 0.9)).collect();
            tracker.update(&crowd, FRAME, &rules(0.5));
            assert!(tracker.len() <= 16);
        }
        let same = vec![person(10.0, 0.9); 100];
        for _ in 0..50 {
            let out = tracker.update(&same, FRAME, &rules(0.5));
            assert!(tracker.len() <= 16 && out.len() <= 16);
        }
    }

    #[test]
    fn counts_of_a_flickering_detector_hold_steady() {
        // Three people walking, each missed in about one frame of three, and a clutter detection now and then.
        let mut tracker = Tracker::new(TrackerSettings::default(), 100);
        let mut flicker_rules = rules(0.5);
        flicker_rules[32].threshold = 0.6;
        let mut state = 0x1234_5678u32;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 1000) as f32 / 1000.0
        };
        let (mut counts, mut raw_counts) = (Vec::new(), Vec::new());
        for frame in 0..200 {
            let mut detections = Vec::new();
            for lane in 0..3 {
                if random() > 0.3 {
                    detections.push(person(100.0 + 150.0 * lane as f32 + frame as f32, 0.6 + 0.3 * random()));
                }
            }
            raw_counts.push(detections.len());
            if random() > 0.8 {
                detections.push(ball(800.0 * random()));
            }
            let out = tracker.update(&detections, FRAME, &flicker_rules);
            counts.push(out.iter().filter(|d| d.label == "person").count());
            assert!(out.iter().all(|d| d.label == "person"), "frame {frame}: {out:?}");
        }
        let flaps = |counts: &[usize]| counts[10..].windows(2).filter(|w| w[0] != w[1]).count();
        // Six misses in a row (0.3^6 a frame) lose a person for a few frames; a raw count changes every other frame.
        assert!(flaps(&raw_counts) > 50, "the detector flickers: {} changes", flaps(&raw_counts));
        assert!(flaps(&counts) <= 4, "tracked counts changed {} times: {counts:?}", flaps(&counts));
        assert_eq!(counts[199], 3);
    }
}
