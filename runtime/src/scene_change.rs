//! Scene-change gating: whether a camera frame differs enough from the last analysed one to run the encoders on it.
//! Both frames are reduced to a grid of block luma means; a block changed when its luma moved by more than a margin
//! after the whole frame's mean change is taken out (so sensor noise, which averages out over a block, and slow or
//! global light changes, which move every block alike, do not count); the frame changed when enough blocks did, or
//! when the whole frame's light moved far (lights switched on or off, the lens covered).

use std::time::Duration;

use lookout_models::vision::image::RgbImage;

/// Columns and rows of the luma grid; 1280x720 gives blocks of 40x30 pixels, 640x480 of 20x20.
pub const GRID_COLUMNS: usize = 32;
pub const GRID_ROWS: usize = 24;
const BLOCKS: usize = GRID_COLUMNS * GRID_ROWS;
/// Every `SAMPLE_STEP`-th pixel of every `SAMPLE_STEP`-th row is summed: a 1280x720 frame costs 230k reads.
const SAMPLE_STEP: usize = 2;

/// The settings of `[scene_change]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateSettings {
    pub enabled: bool,
    /// A block changed when its luma (0-255) moved by more than this beyond the frame's mean change.
    pub block_luma: f32,
    /// The frame changed when at least this many blocks did.
    pub changed_blocks: usize,
    /// ...or when its mean luma moved by more than this since the last analysed frame.
    pub mean_luma: f32,
    /// A full analysis still runs when the last one is this old, whatever the frames look like.
    pub max_interval: Duration,
}

impl Default for GateSettings {
    fn default() -> GateSettings {
        GateSettings {
            enabled: true,
            block_luma: 6.0,
            changed_blocks: 2,
            mean_luma: 24.0,
            max_interval: Duration::from_secs(10),
        }
    }
}

/// Block luma means of one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct LumaGrid {
    width: u32,
    height: u32,
    blocks: [f32; BLOCKS],
}

impl LumaGrid {
    /// The frame's grid (BT.601 luma from RGB). A frame smaller than the grid gives blocks of at most one pixel.
    pub fn of(image: &RgbImage) -> LumaGrid {
        let (width, height) = (image.width as usize, image.height as usize);
        let mut sums = [0.0f32; BLOCKS];
        let mut counts = [0u32; BLOCKS];
        if width > 0 && height > 0 && image.data.len() >= width * height * 3 {
            for y in (0..height).step_by(SAMPLE_STEP) {
                let row = (y * GRID_ROWS / height) * GRID_COLUMNS;
                let pixels = &image.data[y * width * 3..(y + 1) * width * 3];
                for x in (0..width).step_by(SAMPLE_STEP) {
                    let p = &pixels[x * 3..x * 3 + 3];
                    let luma = 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
                    let block = row + x * GRID_COLUMNS / width;
                    sums[block] += luma;
                    counts[block] += 1;
                }
            }
        }
        let mut blocks = [0.0f32; BLOCKS];
        for ((mean, sum), count) in blocks.iter_mut().zip(sums).zip(counts) {
            *mean = if count > 0 { sum / count as f32 } else { 0.0 };
        }
        LumaGrid { width: image.width, height: image.height, blocks }
    }

    /// How this frame differs from `other`: its mean luma change, and how many blocks differ by more than
    /// `margin` once that is taken out. Frames of different sizes (a camera that renegotiated) differ everywhere.
    pub fn difference(&self, other: &LumaGrid, margin: f32) -> Difference {
        if (self.width, self.height) != (other.width, other.height) {
            return Difference { mean_shift: f32::INFINITY, changed_blocks: BLOCKS };
        }
        let shift = self.blocks.iter().zip(&other.blocks).map(|(a, b)| a - b).sum::<f32>() / BLOCKS as f32;
        let changed_blocks =
            self.blocks.iter().zip(&other.blocks).filter(|(a, b)| (*a - *b - shift).abs() > margin).count();
        Difference { mean_shift: shift, changed_blocks }
    }
}

/// How two frames' grids differ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Difference {
    /// The mean luma change (0-255 levels).
    pub mean_shift: f32,
    pub changed_blocks: usize,
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Run the encoders on it: it changed, the last analysis is too old, or there was none.
    Analyse,
    /// The last analysed scene still holds for it.
    Unchanged,
}

/// The gate between the camera and the encoders; it keeps the grid of the last analysed frame only.
#[derive(Debug)]
pub struct ChangeGate {
    settings: GateSettings,
    last: Option<(LumaGrid, Duration)>,
}

impl ChangeGate {
    pub fn new(settings: GateSettings) -> ChangeGate {
        ChangeGate { settings, last: None }
    }

    /// Judges a frame taken at `now` (any monotonic clock); a frame judged `Analyse` becomes the reference the
    /// next ones are compared with.
    pub fn judge(&mut self, image: &RgbImage, now: Duration) -> Verdict {
        if !self.settings.enabled {
            return Verdict::Analyse;
        }
        let grid = LumaGrid::of(image);
        let settings = &self.settings;
        let unchanged = self.last.as_ref().is_some_and(|(last, at)| {
            let difference = grid.difference(last, settings.block_luma);
            now.saturating_sub(*at) < settings.max_interval
                && difference.changed_blocks < settings.changed_blocks
                && difference.mean_shift.abs() <= settings.mean_luma
        });
        if unchanged {
            return Verdict::Unchanged;
        }
        self.last = Some((grid, now));
        Verdict::Analyse
    }

    /// Forgets the reference, so that the next frame is analysed (after a failed analysis).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// A copy of `image` with uniform noise of up to `amplitude` levels on every channel (a fixed generator seeded with
/// `seed`, so runs repeat) and `offset` added: a camera's sensor noise and light, for the tests and the benchmark.
#[cfg(any(test, feature = "bench"))]
pub fn with_noise(image: &RgbImage, amplitude: i32, offset: i32, seed: u64) -> RgbImage {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    let mut out = image.clone();
    for v in out.data.iter_mut() {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let noise = ((state >> 33) % (2 * amplitude.unsigned_abs() as u64 + 1)) as i32 - amplitude.abs();
        *v = (i32::from(*v) + noise + offset).clamp(0, 255) as u8;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic test card: gradients and blocks, so that moves and changes show.
    fn card(width: u32, height: u32) -> RgbImage {
        let mut image = RgbImage::new(width, height);
        for y in 0..height as usize {
            for x in 0..width as usize {
                let i = (y * width as usize + x) * 3;
                let v = ((x * 7 + y * 3) % 200 + if (x / 40 + y / 30) % 2 == 0 { 40 } else { 0 }) as u8;
                image.data[i..i + 3].copy_from_slice(&[v, v / 2 + 20, 255 - v]);
            }
        }
        image
    }

    /// Paints a `w`x`h` dark rectangle (a person-sized object) at `x`, `y`.
    fn with_object(image: &RgbImage, x: usize, y: usize, w: usize, h: usize) -> RgbImage {
        let mut out = image.clone();
        for row in y..y + h {
            for column in x..x + w {
                let i = (row * image.width as usize + column) * 3;
                out.data[i..i + 3].copy_from_slice(&[30, 30, 40]);
            }
        }
        out
    }

    fn s(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[test]
    fn sensor_noise_and_slow_light_changes_do_not_count_as_change() {
        let base = card(640, 480);
        let mut gate = ChangeGate::new(GateSettings { max_interval: s(3600), ..GateSettings::default() });
        assert_eq!(gate.judge(&with_noise(&base, 8, 0, 0), s(0)), Verdict::Analyse, "the first frame is analysed");
        let analysed = (1..200u64)
            .filter(|&i| {
                // ±8 levels of noise on every channel, and the light rising by 20 levels over the sequence.
                gate.judge(&with_noise(&base, 8, (i / 10) as i32, i), s(i)) == Verdict::Analyse
            })
            .count();
        assert_eq!(analysed, 0);
        // Light that has moved far since the last analysis is a new scene: lights switched on.
        assert_eq!(gate.judge(&with_noise(&base, 8, 60, 200), s(200)), Verdict::Analyse);
    }

    #[test]
    fn an_object_entering_is_analysed_in_the_frame_it_appears() {
        let base = card(640, 480);
        let mut gate = ChangeGate::new(GateSettings::default());
        gate.judge(&with_noise(&base, 8, 0, 0), s(0));
        assert_eq!(gate.judge(&with_noise(&base, 8, 0, 1), s(1)), Verdict::Unchanged);
        // A far figure: 12x30 pixels of a 640x480 frame.
        let entered = with_object(&base, 300, 200, 12, 30);
        assert_eq!(gate.judge(&with_noise(&entered, 8, 0, 2), s(2)), Verdict::Analyse);
        assert_eq!(gate.judge(&with_noise(&entered, 8, 0, 3), s(3)), Verdict::Unchanged, "then it holds");
        assert_eq!(gate.judge(&with_noise(&base, 8, 0, 4), s(4)), Verdict::Analyse, "and its leaving counts too");
    }

    #[test]
    fn a_still_scene_is_analysed_again_at_the_maximum_interval() {
        let base = card(320, 240);
        let mut gate = ChangeGate::new(GateSettings { max_interval: s(10), ..GateSettings::default() });
        let verdicts: Vec<Verdict> = (0..25).map(|i| gate.judge(&base, s(i))).collect();
        let analysed: Vec<usize> = (0..25).filter(|&i| verdicts[i] == Verdict::Analyse).collect();
        assert_eq!(analysed, [0, 10, 20]);
    }

    #[test]
    fn a_renegotiated_size_a_flat_frame_and_a_disabled_gate_are_analysed() {
        let mut gate = ChangeGate::new(GateSettings::default());
        gate.judge(&card(640, 480), s(0));
        assert_eq!(gate.judge(&card(320, 240), s(1)), Verdict::Analyse, "another size");
        let mut flat = RgbImage::new(320, 240);
        assert_eq!(gate.judge(&flat, s(2)), Verdict::Analyse, "the card went black");
        assert_eq!(gate.judge(&flat, s(3)), Verdict::Unchanged, "and stayed black");
        flat.data.fill(255);
        assert_eq!(gate.judge(&flat, s(4)), Verdict::Analyse, "then white");
        let mut off = ChangeGate::new(GateSettings { enabled: false, ..GateSettings::default() });
        assert!((0..3).all(|i| off.judge(&card(64, 48), s(i)) == Verdict::Analyse));
        gate.reset();
        assert_eq!(gate.judge(&flat, s(5)), Verdict::Analyse, "a reset gate analyses the next frame");
    }

    #[test]
    fn tiny_and_truncated_frames_give_a_grid_without_panicking() {
        let tiny = card(3, 2);
        let grid = LumaGrid::of(&tiny);
        assert_eq!(grid.difference(&grid, 1.0).changed_blocks, 0);
        let truncated = RgbImage { width: 640, height: 480, data: vec![0; 10] };
        assert_eq!(LumaGrid::of(&truncated).difference(&LumaGrid::of(&truncated), 1.0).changed_blocks, 0);
    }
}
