//! Straightening a slightly rotated text line before it is read: the slope of its ink, measured column by column,
//! and a copy of the crop sheared back to level, cut to the line's own height.

use crate::vision::image::RgbImage;
use crate::vision::letterbox::PixelRect;

/// Slopes below this (rows per column, about half a degree) are left alone.
pub const MIN_SLOPE: f32 = 0.008;
/// A slope whose drift across the line is less than this share of the crop's height is left alone too: in a short
/// word the ink centres of tall and short letters make a slope of their own.
pub const MIN_DRIFT: f32 = 0.2;
/// Slopes above this (about 8 degrees) are not a slightly rotated line; they are left alone too.
const MAX_SLOPE: f32 = 0.15;

fn grey(image: &RgbImage, x: u32, y: u32) -> f32 {
    let at = 3 * (y as usize * image.width as usize + x as usize);
    image.data[at..at + 3].iter().map(|v| *v as f32).sum::<f32>() / 3.0
}

/// The crop's background grey (its median) and the least deviation from it that counts as ink.
fn background_and_ink(image: &RgbImage, region: PixelRect) -> Option<(f32, f32)> {
    let mut values: Vec<f32> = (region.y..region.y + region.height)
        .flat_map(|y| (region.x..region.x + region.width).map(move |x| (x, y)))
        .map(|(x, y)| grey(image, x, y))
        .collect();
    if values.is_empty() {
        return None;
    }
    let middle = values.len() / 2;
    let background = *values.select_nth_unstable_by(middle, f32::total_cmp).1;
    let spread = values.iter().map(|v| (v - background).abs()).fold(0.0, f32::max);
    (spread >= 32.0).then_some((background, spread / 2.0))
}

/// The slope of a long line's ink in `region` (positive: falling to the right), by least squares over each
/// column's ink centre weighted by its ink; None for a crop that is not a long line with ink across it.
pub fn slant(image: &RgbImage, region: PixelRect) -> Option<f32> {
    ink_slope(image, region)
        .filter(|s| s.abs() >= MIN_SLOPE && s.abs() * region.width as f32 >= MIN_DRIFT * region.height as f32)
}

/// The least-squares slope of the ink in `region`, however small; see [`slant`].
pub fn ink_slope(image: &RgbImage, region: PixelRect) -> Option<f32> {
    if region.width < 4 * region.height || region.height < 8 {
        return None;
    }
    let (background, ink) = background_and_ink(image, region)?;
    let (mut sw, mut sx, mut sy, mut sxx, mut sxy) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let mut inked_columns = 0;
    for x in 0..region.width {
        let (mut count, mut rows) = (0.0f64, 0.0f64);
        for y in 0..region.height {
            if (grey(image, region.x + x, region.y + y) - background).abs() >= ink {
                count += 1.0;
                rows += y as f64;
            }
        }
        if count > 0.0 {
            inked_columns += 1;
            let (x, y) = (x as f64, rows / count);
            sw += count;
            sx += count * x;
            sy += count * y;
            sxx += count * x * x;
            sxy += count * x * y;
        }
    }
    if inked_columns * 2 < region.width {
        return None;
    }
    let variance = sw * sxx - sx * sx;
    (variance > 0.0).then(|| ((sw * sxy - sx * sy) / variance) as f32).filter(|s| s.abs() <= MAX_SLOPE)
}

/// Writes into `out` the crop of `region` sheared by `slope` so that its ink runs level, as tall as the crop less
/// the drift of the slope across it (the line's own band), sampled linearly between rows and padded with the
/// background grey where the shear reaches past the crop.
pub fn level_crop(image: &RgbImage, region: PixelRect, slope: f32, out: &mut RgbImage) {
    let Some((background, _)) = background_and_ink(image, region) else {
        return;
    };
    let drift = slope.abs() * region.width as f32;
    let height = ((region.height as f32 - drift).round() as u32).max(region.height / 3).max(1);
    out.reshape(region.width, height);
    let centre_x = region.width as f32 / 2.0;
    let top = (region.height as f32 - height as f32) / 2.0;
    let fill = background.round() as u8;
    for x in 0..region.width {
        let shift = top + slope * (x as f32 - centre_x);
        for y in 0..height {
            let source = y as f32 + shift;
            let pixel = 3 * (y as usize * region.width as usize + x as usize);
            if source < 0.0 || source > (region.height - 1) as f32 {
                out.data[pixel..pixel + 3].fill(fill);
                continue;
            }
            let (row, weight) = (source.floor() as u32, source.fract());
            let below = (row + 1).min(region.height - 1);
            for c in 0..3 {
                let at = |r: u32| {
                    image.data[3 * ((region.y + r) as usize * image.width as usize + (region.x + x) as usize) + c]
                        as f32
                };
                out.data[pixel + c] = (at(row) * (1.0 - weight) + at(below) * weight).round() as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A light image with a dark band 4 rows thick whose centre falls `slope` rows per column from row `start`.
    fn slanted_line(width: u32, height: u32, start: f32, slope: f32) -> RgbImage {
        let mut image = RgbImage::new(width, height);
        for y in 0..height {
            for x in 0..width {
                let centre = start + slope * x as f32;
                let value = if (y as f32 - centre).abs() < 2.0 && x % 7 != 0 { 20 } else { 240 };
                let at = 3 * (y * width + x) as usize;
                image.data[at..at + 3].fill(value);
            }
        }
        image
    }

    #[test]
    fn the_slope_of_a_slanted_line_is_measured_and_levelled() {
        let image = slanted_line(200, 30, 8.0, 0.07);
        let region = PixelRect::whole(&image);
        let slope = ink_slope(&image, region).unwrap();
        assert!((slope - 0.07).abs() < 0.01, "slope {slope}");
        let mut level = RgbImage::new(1, 1);
        level_crop(&image, region, slope, &mut level);
        assert_eq!((level.width, level.height), (200, 16));
        let dark_rows = |x: u32| {
            (0..level.height).filter(|&y| level.data[3 * (y * level.width + x) as usize] < 128).collect::<Vec<_>>()
        };
        let (left, right) = (dark_rows(10), dark_rows(190));
        let centre = |rows: &[u32]| rows.iter().sum::<u32>() as f32 / rows.len().max(1) as f32;
        assert!(
            !left.is_empty() && (centre(&left) - centre(&right)).abs() <= 1.0,
            "the band is level: {left:?} vs {right:?}"
        );
        let before = slanted_line(200, 30, 8.0, 0.07);
        let (first, last) = (
            centre(&(0..30).filter(|&y| before.data[3 * (y * 200 + 10) as usize] < 128).collect::<Vec<_>>()),
            centre(&(0..30).filter(|&y| before.data[3 * (y * 200 + 190) as usize] < 128).collect::<Vec<_>>()),
        );
        assert!(last - first > 10.0, "the line fell {} rows across the crop before", last - first);
    }

    #[test]
    fn level_lines_short_crops_and_blank_crops_have_no_slope() {
        let level = slanted_line(200, 30, 15.0, 0.0);
        assert!(ink_slope(&level, PixelRect::whole(&level)).unwrap().abs() < 0.002);
        let short = slanted_line(60, 30, 15.0, 0.1);
        assert_eq!(ink_slope(&short, PixelRect::whole(&short)), None);
        let blank = RgbImage::new(200, 30);
        assert_eq!(ink_slope(&blank, PixelRect::whole(&blank)), None);
        let gentle = slanted_line(200, 40, 20.0, 0.02);
        assert!(slant(&gentle, PixelRect::whole(&gentle)).is_none(), "4 rows of drift in a 40-row crop is left alone");
        let slanted = slanted_line(200, 30, 8.0, 0.07);
        assert!(slant(&slanted, PixelRect::whole(&slanted)).is_some());
    }
}
