//! OCR post-processing in the manner of PaddleOCR / RapidOCR: text boxes from a DB probability map, CTC
//! greedy decoding of recognizer output, and reading order of text lines.
//!
//! DB differences from PaddleOCR, which the integrator should know: components are 8-connected (as the
//! contours of `cv2.findContours`), each box is the axis-aligned bounding box of its component (no rotated
//! rectangle), and the box score is the mean probability over that rectangle, which is what PaddleOCR's
//! `box_score_fast` computes for an axis-aligned box, or, when higher, over the component's own pixels: for a
//! slanted line the rectangle holds mostly background, where PaddleOCR's rotated rectangle would follow the line. Box corners are pixel centres, so a component spanning
//! columns a..=b has width b − a, as with `cv2.minAreaRect` on its contour. Unclipping grows each side by
//! area · ratio / perimeter, the rectangle that `pyclipper`'s rounded offset followed by `minAreaRect`
//! gives for an axis-aligned box.

use super::letterbox::Letterbox;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OcrError {
    #[error("probability map has {actual} values, expected {width}x{height} = {expected}")]
    MapSize { width: usize, height: usize, expected: usize, actual: usize },
    #[error("recognizer output has {actual} values, expected {steps}x{classes} = {expected}")]
    OutputSize { steps: usize, classes: usize, expected: usize, actual: usize },
    #[error("recognizer has {classes} classes but the dictionary has {symbols} symbols (blank included)")]
    DictionarySize { classes: usize, symbols: usize },
}

/// DB post-processing settings; the defaults are PaddleOCR's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbParams {
    /// Probability above which a map pixel is text.
    pub threshold: f32,
    /// Boxes whose mean probability is below this are dropped.
    pub box_threshold: f32,
    pub unclip_ratio: f32,
    /// Boxes whose shorter side (in map pixels) is below this before unclipping, or below this + 2 after,
    /// are dropped.
    pub min_size: f32,
    /// At most this many components are examined.
    pub max_candidates: usize,
}

impl Default for DbParams {
    fn default() -> Self {
        DbParams { threshold: 0.3, box_threshold: 0.6, unclip_ratio: 1.5, min_size: 3.0, max_candidates: 1000 }
    }
}

/// How probability-map coordinates map to source-image pixels: source = map · scale, clamped to the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapToSource {
    pub scale_x: f32,
    pub scale_y: f32,
    pub src_w: u32,
    pub src_h: u32,
}

impl MapToSource {
    /// The map covers the whole image, stretched (PaddleOCR's resize to multiples of 32).
    pub fn stretched(map_w: usize, map_h: usize, src_w: u32, src_h: u32) -> Self {
        MapToSource {
            scale_x: src_w as f32 / map_w.max(1) as f32,
            scale_y: src_h as f32 / map_h.max(1) as f32,
            src_w,
            src_h,
        }
    }

    /// The map is the output of a letterboxed input of the same size as the map.
    pub fn from_letterbox(letterbox: &Letterbox) -> Self {
        MapToSource {
            scale_x: 1.0 / letterbox.scale,
            scale_y: 1.0 / letterbox.scale,
            src_w: letterbox.src_w,
            src_h: letterbox.src_h,
        }
    }

    fn apply(&self, bbox: [f32; 4]) -> [f32; 4] {
        let (w, h) = (self.src_w as f32, self.src_h as f32);
        [
            (bbox[0] * self.scale_x).clamp(0.0, w),
            (bbox[1] * self.scale_y).clamp(0.0, h),
            (bbox[2] * self.scale_x).clamp(0.0, w),
            (bbox[3] * self.scale_y).clamp(0.0, h),
        ]
    }
}

/// A detected text region in source-image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextBox {
    pub bbox: [f32; 4],
    pub score: f32,
}

/// DB post-processing with its scratch buffers, sized on first use and reused for later maps of the same
/// size.
#[derive(Debug, Default)]
pub struct DbPostprocessor {
    pub params: DbParams,
    visited: Vec<bool>,
    stack: Vec<u32>,
}

impl DbPostprocessor {
    pub fn new(params: DbParams) -> Self {
        DbPostprocessor { params, visited: Vec::new(), stack: Vec::new() }
    }

    /// Finds text boxes in a `map_w`×`map_h` probability map (row-major, e.g. the [1, 1, H, W] output of the
    /// detector) and appends them to `boxes` (cleared first), in scan order of their top-left pixel.
    pub fn boxes(
        &mut self,
        probabilities: &[f32],
        map_w: usize,
        map_h: usize,
        to_source: &MapToSource,
        boxes: &mut Vec<TextBox>,
    ) -> Result<(), OcrError> {
        boxes.clear();
        let expected = map_w * map_h;
        if probabilities.len() != expected {
            return Err(OcrError::MapSize { width: map_w, height: map_h, expected, actual: probabilities.len() });
        }
        let params = self.params;
        self.visited.clear();
        self.visited.resize(expected, false);
        let mut candidates = 0;
        for start in 0..expected {
            if self.visited[start]
                || probabilities[start].partial_cmp(&params.threshold) != Some(std::cmp::Ordering::Greater)
            {
                continue;
            }
            if candidates >= params.max_candidates {
                break;
            }
            candidates += 1;
            let ([x_min, y_min, x_max, y_max], component_mean) =
                self.flood_component(probabilities, map_w, map_h, start);
            let (width, height) = ((x_max - x_min) as f32, (y_max - y_min) as f32);
            if width.min(height) < params.min_size {
                continue;
            }
            let score = mean_over(probabilities, map_w, [x_min, y_min, x_max, y_max]).max(component_mean);
            if score < params.box_threshold {
                continue;
            }
            let perimeter = 2.0 * (width + height);
            let distance = if perimeter > 0.0 { width * height * params.unclip_ratio / perimeter } else { 0.0 };
            if width.min(height) + 2.0 * distance < params.min_size + 2.0 {
                continue;
            }
            let grown =
                [x_min as f32 - distance, y_min as f32 - distance, x_max as f32 + distance, y_max as f32 + distance];
            boxes.push(TextBox { bbox: to_source.apply(grown), score });
        }
        Ok(())
    }

    /// Marks the 8-connected component containing `start` and returns its inclusive pixel bounds and its pixels'
    /// mean probability.
    fn flood_component(
        &mut self,
        probabilities: &[f32],
        map_w: usize,
        map_h: usize,
        start: usize,
    ) -> ([usize; 4], f32) {
        let threshold = self.params.threshold;
        let mut bounds = [start % map_w, start / map_w, start % map_w, start / map_w];
        let (mut sum, mut count) = (0.0f64, 0usize);
        self.stack.clear();
        self.stack.push(start as u32);
        self.visited[start] = true;
        while let Some(index) = self.stack.pop() {
            sum += f64::from(probabilities[index as usize]);
            count += 1;
            let (x, y) = (index as usize % map_w, index as usize / map_w);
            bounds = [bounds[0].min(x), bounds[1].min(y), bounds[2].max(x), bounds[3].max(y)];
            for ny in y.saturating_sub(1)..=(y + 1).min(map_h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(map_w - 1) {
                    let neighbour = ny * map_w + nx;
                    if !self.visited[neighbour] && probabilities[neighbour] > threshold {
                        self.visited[neighbour] = true;
                        self.stack.push(neighbour as u32);
                    }
                }
            }
        }
        (bounds, (sum / count as f64) as f32)
    }
}

fn mean_over(probabilities: &[f32], map_w: usize, bounds: [usize; 4]) -> f32 {
    let mut sum = 0.0f64;
    for y in bounds[1]..=bounds[3] {
        sum += probabilities[y * map_w + bounds[0]..=y * map_w + bounds[2]].iter().map(|&p| f64::from(p)).sum::<f64>();
    }
    let count = (bounds[2] - bounds[0] + 1) * (bounds[3] - bounds[1] + 1);
    (sum / count as f64) as f32
}

/// The recognizer's symbols; index 0 is the CTC blank.
#[derive(Debug, Clone, PartialEq)]
pub struct CtcDictionary {
    symbols: Vec<String>,
}

impl CtcDictionary {
    /// PaddleOCR's layout: blank, then one symbol per line of the dictionary file, then a space when
    /// `append_space` (the `use_space_char` option).
    pub fn from_lines(text: &str, append_space: bool) -> Self {
        let mut symbols = vec![String::new()];
        symbols.extend(text.lines().map(|line| line.trim_end_matches('\r').to_string()));
        if append_space {
            symbols.push(" ".to_string());
        }
        CtcDictionary { symbols }
    }

    /// Symbols including the blank at index 0.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.len() <= 1
    }
}

/// Greedy CTC decoding of a [1, steps, classes] probability output (softmax already applied, as in
/// PaddleOCR's exported recognizers): arg-max per step, repeats merged, blanks dropped. Writes the text into
/// `text` (cleared first) and returns the confidence, the mean of the kept steps' maximum probabilities
/// (0 when nothing is kept).
pub fn ctc_greedy_decode(
    output: &[f32],
    steps: usize,
    classes: usize,
    dictionary: &CtcDictionary,
    text: &mut String,
) -> Result<f32, OcrError> {
    ctc_greedy_decode_with_steps(output, steps, classes, dictionary, text, &mut Vec::new())
}

/// [`ctc_greedy_decode`], also recording in `char_steps` the step at which each symbol of `text` was emitted.
pub fn ctc_greedy_decode_with_steps(
    output: &[f32],
    steps: usize,
    classes: usize,
    dictionary: &CtcDictionary,
    text: &mut String,
    char_steps: &mut Vec<usize>,
) -> Result<f32, OcrError> {
    text.clear();
    char_steps.clear();
    let expected = steps * classes;
    if output.len() != expected {
        return Err(OcrError::OutputSize { steps, classes, expected, actual: output.len() });
    }
    if classes != dictionary.len() {
        return Err(OcrError::DictionarySize { classes, symbols: dictionary.len() });
    }
    let mut previous = usize::MAX;
    let mut confidence_sum = 0.0f64;
    let mut kept = 0usize;
    for (step_index, step) in output.chunks_exact(classes).enumerate() {
        let (best, probability) =
            step.iter().enumerate().fold(
                (0, f32::NEG_INFINITY),
                |(bi, bp), (i, &p)| {
                    if p > bp {
                        (i, p)
                    } else {
                        (bi, bp)
                    }
                },
            );
        if best != 0 && best != previous {
            text.push_str(&dictionary.symbols[best]);
            char_steps.push(step_index);
            confidence_sum += f64::from(probability);
            kept += 1;
        }
        previous = best;
    }
    Ok(if kept == 0 { 0.0 } else { (confidence_sum / kept as f64) as f32 })
}

/// A word space is a run of blank columns at least this many ink heights wide...
pub const WORD_GAP_FLOOR_HEIGHTS: f32 = 0.15;
/// ...and at least this many times the line's median blank run (its letter spacing).
pub const WORD_GAP_LETTER_GAPS: f32 = 2.2;

/// Runs of ink-free columns in a normalized text-line tensor (channel-planar, `height` × `width` per
/// channel, content in the first `content_width` columns) that are wide enough to separate words, as
/// (first column, width); runs touching either end are margins, not gaps. `squeeze` is the line's horizontal
/// scale over its vertical one (below 1 when a long line was narrowed to fit the width).
pub fn word_gaps(
    line: &[f32],
    height: usize,
    width: usize,
    content_width: usize,
    squeeze: f32,
    gaps: &mut Vec<(usize, usize)>,
) {
    gaps.clear();
    let content_width = content_width.min(width);
    if height == 0 || content_width < 3 || line.len() < 3 * height * width {
        return;
    }
    let grey = |y: usize, x: usize| (0..3).map(|c| line[(c * height + y) * width + x]).sum::<f32>() / 3.0;
    let mut column_values: Vec<f32> =
        (0..height).flat_map(|y| (0..content_width).map(move |x| (y, x))).map(|(y, x)| grey(y, x)).collect();
    column_values.sort_by(f32::total_cmp);
    let background = column_values[column_values.len() / 2];
    let deviation: Vec<f32> =
        (0..content_width).map(|x| (0..height).map(|y| (grey(y, x) - background).abs()).fold(0.0, f32::max)).collect();
    // In a tight crop of bold type the median lies between paper and ink, and even blank columns stray from it;
    // they stray least, so ink is measured from the quietest three columns in a row up (a lone mid-grey column
    // on a letter's edge does not count).
    let strongest = deviation.iter().copied().fold(0.0, f32::max);
    let quietest = deviation.windows(3).map(|w| w.iter().copied().fold(0.0, f32::max)).fold(f32::INFINITY, f32::min);
    if strongest - quietest <= 1e-3 {
        return;
    }
    let ink_level = quietest + 0.25 * (strongest - quietest);
    let ink_rows: Vec<usize> =
        (0..height).filter(|&y| (0..content_width).any(|x| (grey(y, x) - background).abs() >= ink_level)).collect();
    let ink_height = match (ink_rows.first(), ink_rows.last()) {
        (Some(top), Some(bottom)) => bottom - top + 1,
        _ => return,
    };
    let floor = ((WORD_GAP_FLOOR_HEIGHTS * ink_height.max(height * 2 / 3) as f32 * squeeze).ceil() as usize).max(2);
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    for (x, d) in deviation.iter().enumerate() {
        let blank = *d < ink_level;
        match (blank, start) {
            (true, None) => start = Some(x),
            (false, Some(s)) => {
                if s > 0 {
                    runs.push((s, x - s));
                }
                start = None;
            }
            _ => {}
        }
    }
    // Word spaces stand out against the line's own letter spacing, which varies with the font.
    let mut widths: Vec<usize> = runs.iter().map(|r| r.1).collect();
    widths.sort_unstable();
    let letter_gap = widths.get(widths.len() / 2).copied().unwrap_or(0) as f32;
    let min_gap = floor.max((WORD_GAP_LETTER_GAPS * letter_gap).ceil() as usize);
    gaps.extend(runs.into_iter().filter(|r| r.1 >= min_gap));
}

/// Puts a space into `text` wherever a word gap lies between two consecutive symbols (symbol `i` was emitted at
/// `char_steps[i]`, one step covering `step_width` columns), unless the recognizer already put one there.
pub fn insert_word_spaces(text: &mut String, char_steps: &[usize], step_width: f32, gaps: &[(usize, usize)]) {
    if gaps.is_empty() {
        return;
    }
    let chars: Vec<char> = text.chars().collect();
    if chars.len() != char_steps.len() {
        return;
    }
    let centre = |i: usize| (char_steps[i] as f32 + 0.5) * step_width;
    let mut spaced = String::with_capacity(text.len() + gaps.len());
    for (i, c) in chars.iter().enumerate() {
        if i > 0 && *c != ' ' && chars[i - 1] != ' ' {
            let (left, right) = (centre(i - 1), centre(i));
            if gaps.iter().any(|(s, w)| {
                let middle = *s as f32 + *w as f32 / 2.0;
                left < middle && middle < right
            }) {
                spaced.push(' ');
            }
        }
        spaced.push(*c);
    }
    *text = spaced;
}

/// Sorts items into reading order: by vertical centre, then items whose centre lies within half the first
/// box's height of the first item of a line form that line and are ordered left to right.
pub fn sort_reading_order<T>(items: &mut [T], bbox: impl Fn(&T) -> [f32; 4]) {
    let centre_y = |b: [f32; 4]| (b[1] + b[3]) / 2.0;
    items.sort_by(|a, b| {
        let (ba, bb) = (bbox(a), bbox(b));
        centre_y(ba).total_cmp(&centre_y(bb)).then(ba[0].total_cmp(&bb[0]))
    });
    let mut line_start = 0;
    while line_start < items.len() {
        let first = bbox(&items[line_start]);
        let (reference, half_height) = (centre_y(first), (first[3] - first[1]).abs() / 2.0);
        let mut line_end = line_start + 1;
        while line_end < items.len() && centre_y(bbox(&items[line_end])) - reference <= half_height {
            line_end += 1;
        }
        items[line_start..line_end].sort_by(|a, b| bbox(a)[0].total_cmp(&bbox(b)[0]));
        line_start = line_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_with(width: usize, height: usize, rects: &[([usize; 4], f32)]) -> Vec<f32> {
        let mut map = vec![0.0; width * height];
        for &([x1, y1, x2, y2], p) in rects {
            for y in y1..=y2 {
                for x in x1..=x2 {
                    map[y * width + x] = p;
                }
            }
        }
        map
    }

    #[test]
    fn db_finds_one_box_per_component_and_unclips_it() {
        let map = map_with(40, 20, &[([4, 4, 14, 8], 0.9), ([20, 10, 35, 16], 0.8)]);
        let mut db = DbPostprocessor::new(DbParams::default());
        let mut boxes = Vec::new();
        db.boxes(&map, 40, 20, &MapToSource::stretched(40, 20, 80, 40), &mut boxes).expect("boxes");
        assert_eq!(boxes.len(), 2);
        // 10x4 box: distance = 40 * 1.5 / 28.
        let d = 40.0 * 1.5 / 28.0;
        let expected = [(4.0 - d) * 2.0, (4.0 - d) * 2.0, (14.0 + d) * 2.0, (8.0 + d) * 2.0];
        for (actual, wanted) in boxes[0].bbox.iter().zip(expected) {
            assert!((actual - wanted).abs() < 1e-4, "{:?} vs {expected:?}", boxes[0].bbox);
        }
        assert!((boxes[0].score - 0.9).abs() < 1e-6);
        assert!((boxes[1].score - 0.8).abs() < 1e-6);
    }

    #[test]
    fn db_drops_weak_tiny_and_subthreshold_regions() {
        let map = map_with(30, 30, &[([1, 1, 10, 5], 0.5), ([15, 15, 16, 16], 0.95), ([1, 20, 20, 25], 0.29)]);
        let mut db = DbPostprocessor::default();
        let mut boxes = vec![TextBox { bbox: [0.0; 4], score: 1.0 }];
        db.boxes(&map, 30, 30, &MapToSource::stretched(30, 30, 30, 30), &mut boxes).expect("boxes");
        assert!(boxes.is_empty(), "{boxes:?}");
    }

    #[test]
    fn db_joins_diagonal_neighbours() {
        let mut map = map_with(20, 20, &[([2, 2, 6, 6], 0.9), ([7, 7, 11, 11], 0.9)]);
        map[7 * 20 + 6] = 0.0;
        let mut db = DbPostprocessor::new(DbParams { box_threshold: 0.1, ..DbParams::default() });
        let mut boxes = Vec::new();
        db.boxes(&map, 20, 20, &MapToSource::stretched(20, 20, 20, 20), &mut boxes).expect("boxes");
        assert_eq!(boxes.len(), 1);
    }

    #[test]
    fn db_rejects_a_wrong_map_size() {
        let mut db = DbPostprocessor::default();
        let error = db.boxes(&[0.0; 5], 2, 2, &MapToSource::stretched(2, 2, 2, 2), &mut Vec::new());
        assert!(matches!(error, Err(OcrError::MapSize { expected: 4, actual: 5, .. })));
    }

    fn one_hot_steps(indices: &[(usize, f32)], classes: usize) -> Vec<f32> {
        let mut output = vec![0.0; indices.len() * classes];
        for (step, &(index, probability)) in indices.iter().enumerate() {
            output[step * classes + index] = probability;
        }
        output
    }

    #[test]
    fn ctc_merges_repeats_and_drops_blanks() {
        let dictionary = CtcDictionary::from_lines("a\nb\nc", true);
        assert_eq!(dictionary.len(), 5);
        let output =
            one_hot_steps(&[(1, 0.9), (1, 0.8), (0, 0.99), (1, 0.7), (2, 0.6), (4, 0.5), (3, 1.0), (0, 0.9)], 5);
        let mut text = String::new();
        let confidence = ctc_greedy_decode(&output, 8, 5, &dictionary, &mut text).expect("decode");
        assert_eq!(text, "aab c");
        assert!((confidence - (0.9 + 0.7 + 0.6 + 0.5 + 1.0) / 5.0).abs() < 1e-6);
    }

    #[test]
    fn ctc_all_blank_is_empty_with_zero_confidence() {
        let dictionary = CtcDictionary::from_lines("a", false);
        let mut text = String::from("stale");
        let confidence =
            ctc_greedy_decode(&one_hot_steps(&[(0, 1.0); 4], 2), 4, 2, &dictionary, &mut text).expect("decode");
        assert_eq!((text.as_str(), confidence), ("", 0.0));
    }

    #[test]
    fn ctc_rejects_mismatched_shapes() {
        let dictionary = CtcDictionary::from_lines("a\nb", false);
        let mut text = String::new();
        assert!(matches!(ctc_greedy_decode(&[0.0; 7], 2, 3, &dictionary, &mut text), Err(OcrError::OutputSize { .. })));
        assert_eq!(
            ctc_greedy_decode(&[0.0; 8], 2, 4, &dictionary, &mut text),
            Err(OcrError::DictionarySize { classes: 4, symbols: 3 })
        );
    }

    #[test]
    fn reading_order_is_lines_then_left_to_right() {
        let mut boxes = vec![
            ("second line", [0.0, 40.0, 50.0, 60.0]),
            ("right", [60.0, 2.0, 100.0, 22.0]),
            ("left", [0.0, 0.0, 50.0, 20.0]),
            ("middle", [52.0, 4.0, 58.0, 24.0]),
        ];
        sort_reading_order(&mut boxes, |b| b.1);
        let order: Vec<&str> = boxes.iter().map(|b| b.0).collect();
        assert_eq!(order, vec!["left", "middle", "right", "second line"]);
    }
}
