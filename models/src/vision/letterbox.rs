//! Resizing an RGB image into a caller-owned f32 model tensor: the aspect-keeping letterbox for detectors,
//! the fixed-height text-line resize for OCR recognition, and a plain stretch.
//!
//! Interpolation is bilinear with half-pixel centres and edge clamping, the convention of OpenCV's
//! `cv2.resize(..., INTER_LINEAR)`: source = (dest + 0.5) · (source_size / dest_size) − 0.5. There is no
//! antialiasing when shrinking, so this differs from PIL's `Image.BILINEAR` on downscales. OpenCV rounds
//! its weights to 11-bit fixed point; this code works in f32, so values can differ from OpenCV's by one
//! 8-bit level.

use super::image::RgbImage;

/// Where channels sit in the output tensor (batch size 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// [1, H, W, 3]
    Nhwc,
    /// [1, 3, H, W]
    Nchw,
}

/// `out = (pixel · scale − mean[c]) / std[c]`, with `c` counted in the model's channel order (after the
/// optional swap to BGR).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub bgr: bool,
}

impl Normalization {
    /// Pixels to 0..=1, RGB (YOLO-style detectors).
    pub const UNIT_RGB: Normalization = Normalization { scale: 1.0 / 255.0, mean: [0.0; 3], std: [1.0; 3], bgr: false };
    /// Pixels to −1..=1, the PaddleOCR recognizer's normalization.
    pub const PADDLE_REC: Normalization =
        Normalization { scale: 1.0 / 255.0, mean: [0.5; 3], std: [0.5; 3], bgr: false };
    /// ImageNet mean and standard deviation on 0..=1 pixels, the PaddleOCR DB detector's normalization.
    pub const IMAGENET: Normalization =
        Normalization { scale: 1.0 / 255.0, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], bgr: false };

    fn apply(&self, rgb: [f32; 3]) -> [f32; 3] {
        let ordered = if self.bgr { [rgb[2], rgb[1], rgb[0]] } else { rgb };
        [0, 1, 2].map(|c| (ordered[c] * self.scale - self.mean[c]) / self.std[c])
    }
}

/// What fills the tensor outside the resized image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Padding {
    /// A pixel value (0..=255, all channels) that goes through the same normalization as the image, e.g. 114
    /// for YOLO.
    Pixel(u8),
    /// A value written as is, already in normalized space (0.0 for PaddleOCR recognition).
    Normalized(f32),
}

impl Padding {
    fn value(&self, normalization: &Normalization) -> [f32; 3] {
        match *self {
            Padding::Pixel(level) => normalization.apply([f32::from(level); 3]),
            Padding::Normalized(value) => [value; 3],
        }
    }
}

/// A rectangle of the source image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelRect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl PixelRect {
    pub fn whole(image: &RgbImage) -> Self {
        PixelRect { x: 0, y: 0, width: image.width, height: image.height }
    }

    /// The pixels covered by a float box `[x1, y1, x2, y2]`, rounded outwards and clipped to the image;
    /// `None` when nothing is left.
    pub fn from_box(bbox: [f32; 4], image: &RgbImage) -> Option<Self> {
        let clip = |v: f32, max: u32| {
            if v.is_nan() {
                0.0
            } else {
                v.clamp(0.0, max as f32)
            }
        };
        let x1 = clip(bbox[0].floor(), image.width) as u32;
        let y1 = clip(bbox[1].floor(), image.height) as u32;
        let x2 = clip(bbox[2].ceil(), image.width) as u32;
        let y2 = clip(bbox[3].ceil(), image.height) as u32;
        (x2 > x1 && y2 > y1).then_some(PixelRect { x: x1, y: y1, width: x2 - x1, height: y2 - y1 })
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResizeError {
    #[error("tensor has {actual} values, expected {expected}")]
    TensorSize { expected: usize, actual: usize },
    #[error("source image or region is empty")]
    EmptySource,
    #[error("region {rect:?} is outside the {width}x{height} image")]
    RegionOutside { rect: PixelRect, width: u32, height: u32 },
    #[error("target size {width}x{height} is empty")]
    EmptyTarget { width: usize, height: usize },
}

/// How a letterboxed tensor relates to its source image: model = source · scale + pad.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    /// Offset of the image inside the tensor: 0 for a whole image, since padding goes to the bottom and right;
    /// minus the region's origin, scaled, for a region of it.
    pub pad_x: f32,
    pub pad_y: f32,
    pub src_w: u32,
    pub src_h: u32,
}

impl Letterbox {
    /// A model-space box `[x1, y1, x2, y2]` in source-image pixels, clamped to the image.
    pub fn to_source(&self, bbox: [f32; 4]) -> [f32; 4] {
        let (w, h) = (self.src_w as f32, self.src_h as f32);
        [
            ((bbox[0] - self.pad_x) / self.scale).clamp(0.0, w),
            ((bbox[1] - self.pad_y) / self.scale).clamp(0.0, h),
            ((bbox[2] - self.pad_x) / self.scale).clamp(0.0, w),
            ((bbox[3] - self.pad_y) / self.scale).clamp(0.0, h),
        ]
    }

    /// A source-image box in model space.
    pub fn to_model(&self, bbox: [f32; 4]) -> [f32; 4] {
        [
            bbox[0] * self.scale + self.pad_x,
            bbox[1] * self.scale + self.pad_y,
            bbox[2] * self.scale + self.pad_x,
            bbox[3] * self.scale + self.pad_y,
        ]
    }
}

/// Fits `region` of the image (the whole of it, or a tile) into a `size`×`size` tensor keeping its aspect ratio
/// (scale = min(size/w, size/h), resized size rounded to nearest as Ultralytics does), pads bottom and right, and
/// writes `out` (`3·size·size` values); the returned mapping takes the tensor's boxes to the whole image's pixels.
pub fn letterbox_into(
    image: &RgbImage,
    region: PixelRect,
    size: usize,
    padding: Padding,
    normalization: &Normalization,
    layout: Layout,
    out: &mut [f32],
) -> Result<Letterbox, ResizeError> {
    if image.is_empty() || region.width == 0 || region.height == 0 {
        return Err(ResizeError::EmptySource);
    }
    if size == 0 {
        return Err(ResizeError::EmptyTarget { width: size, height: size });
    }
    let scale = (size as f32 / region.width as f32).min(size as f32 / region.height as f32);
    let content_w = ((region.width as f32 * scale).round() as usize).clamp(1, size);
    let content_h = ((region.height as f32 * scale).round() as usize).clamp(1, size);
    let target = Target { width: size, height: size, content_w, content_h };
    write_resized(image, region, target, padding, normalization, layout, out)?;
    Ok(Letterbox {
        scale,
        pad_x: -(region.x as f32) * scale,
        pad_y: -(region.y as f32) * scale,
        src_w: image.width,
        src_h: image.height,
    })
}

/// A tile is a square of this many times the detector's input side, so what it holds reaches the detector at no
/// less than 1/1.25 of its size...
pub const TILE_SIDE: f32 = 1.25;
/// ...and a frame is tiled only when its long side is at least this many tiles' sides: smaller frames already
/// reach the detector at more than half their size.
pub const TILE_MIN_SPAN: f32 = 1.5;
/// Neighbouring tiles overlap by at least this share of their side, so that what one cuts at its inner edge is
/// whole in the next.
pub const TILE_OVERLAP: f32 = 0.25;
/// At most this many tiles: a larger frame gets larger tiles.
pub const MAX_TILES: u32 = 8;

/// The tiles a detector with a `size`×`size` input also looks at, besides the whole frame: a grid of squares of
/// [`TILE_SIDE`] times `size` (no larger than the frame's short side), first and last at the frame's edges and
/// overlapping evenly by at least [`TILE_OVERLAP`], grown as needed to stay within [`MAX_TILES`]. None for a
/// frame whose long side is under [`TILE_MIN_SPAN`] tiles, or whose short side is under `size` (a tile would
/// enlarge it).
pub fn grid_tiles(width: u32, height: u32, size: usize) -> impl Iterator<Item = PixelRect> {
    let (long, short) = (width.max(height), width.min(height));
    let mut side = (size as f32 * TILE_SIDE).round().min(u32::MAX as f32) as u32;
    let tiled = side > 0 && short as usize >= size && long as f32 >= TILE_MIN_SPAN * side as f32;
    // Tiles along an axis of `len` pixels, overlapping by at least TILE_OVERLAP.
    let along = |len: u32, side: u32| -> u64 {
        let step = u64::from(side) - (f64::from(side) * f64::from(TILE_OVERLAP)).ceil() as u64;
        if len <= side {
            1
        } else {
            1 + (u64::from(len - side)).div_ceil(step.max(1))
        }
    };
    let (mut columns, mut rows) = (0, 0);
    if tiled {
        loop {
            side = side.min(short);
            (columns, rows) = (along(width, side), along(height, side));
            if columns * rows <= u64::from(MAX_TILES) || side == short {
                break;
            }
            side = side.saturating_add((side / 4).max(1));
        }
        if columns * rows > u64::from(MAX_TILES) {
            (columns, rows) = (0, 0);
        }
    }
    let start = move |i: u64, count: u64, len: u32| (u64::from(len - side) * i / (count - 1).max(1)) as u32;
    (0..rows).flat_map(move |r| {
        (0..columns).map(move |c| PixelRect {
            x: start(c, columns, width),
            y: start(r, rows, height),
            width: side,
            height: side,
        })
    })
}

/// Stretches `region` of the image to exactly `width`×`height`, ignoring aspect ratio.
pub fn resize_into(
    image: &RgbImage,
    region: PixelRect,
    width: usize,
    height: usize,
    normalization: &Normalization,
    layout: Layout,
    out: &mut [f32],
) -> Result<(), ResizeError> {
    let target = Target { width, height, content_w: width, content_h: height };
    write_resized(image, region, target, Padding::Normalized(0.0), normalization, layout, out)
}

/// Height and maximum width of PaddleOCR's recognizer input.
pub const TEXT_LINE_HEIGHT: usize = 48;
pub const TEXT_LINE_MAX_WIDTH: usize = 320;

/// Resizes a text-line `region` to `height` keeping aspect (width = ceil(height · w / h), capped at
/// `max_width`), pads the right with 0 in normalized space, and writes a `height`×`max_width` tensor.
/// Returns the width the text occupies.
pub fn text_line_into(
    image: &RgbImage,
    region: PixelRect,
    height: usize,
    max_width: usize,
    normalization: &Normalization,
    layout: Layout,
    out: &mut [f32],
) -> Result<usize, ResizeError> {
    if region.width == 0 || region.height == 0 {
        return Err(ResizeError::EmptySource);
    }
    let aspect = region.width as f32 / region.height as f32;
    let content_w = ((height as f32 * aspect).ceil() as usize).clamp(1, max_width.max(1));
    let target = Target { width: max_width, height, content_w, content_h: height };
    write_resized(image, region, target, Padding::Normalized(0.0), normalization, layout, out)?;
    Ok(content_w)
}

#[derive(Debug, Clone, Copy)]
struct Target {
    width: usize,
    height: usize,
    content_w: usize,
    content_h: usize,
}

fn write_resized(
    image: &RgbImage,
    region: PixelRect,
    target: Target,
    padding: Padding,
    normalization: &Normalization,
    layout: Layout,
    out: &mut [f32],
) -> Result<(), ResizeError> {
    if target.width == 0 || target.height == 0 {
        return Err(ResizeError::EmptyTarget { width: target.width, height: target.height });
    }
    let expected = 3 * target.width * target.height;
    if out.len() != expected {
        return Err(ResizeError::TensorSize { expected, actual: out.len() });
    }
    if region.width == 0 || region.height == 0 || image.is_empty() {
        return Err(ResizeError::EmptySource);
    }
    let inside = u64::from(region.x) + u64::from(region.width) <= u64::from(image.width)
        && u64::from(region.y) + u64::from(region.height) <= u64::from(image.height)
        && image.data.len() == super::image::rgb_len(image.width, image.height);
    if !inside {
        return Err(ResizeError::RegionOutside { rect: region, width: image.width, height: image.height });
    }
    let pad = padding.value(normalization);
    let plane = target.width * target.height;
    let x_ratio = region.width as f32 / target.content_w as f32;
    let y_ratio = region.height as f32 / target.content_h as f32;
    let stride = image.width as usize * 3;
    for ty in 0..target.height {
        let source_row = (ty < target.content_h).then(|| source_coordinate(ty, y_ratio, region.height));
        for tx in 0..target.width {
            let value = match source_row {
                Some((y0, y1, fy)) if tx < target.content_w => {
                    let (x0, x1, fx) = source_coordinate(tx, x_ratio, region.width);
                    let at = |x: usize, y: usize| (region.y as usize + y) * stride + (region.x as usize + x) * 3;
                    let (a, b, c, d) = (at(x0, y0), at(x1, y0), at(x0, y1), at(x1, y1));
                    let rgb = [0, 1, 2].map(|ch| {
                        let top = f32::from(image.data[a + ch]) * (1.0 - fx) + f32::from(image.data[b + ch]) * fx;
                        let bottom = f32::from(image.data[c + ch]) * (1.0 - fx) + f32::from(image.data[d + ch]) * fx;
                        top * (1.0 - fy) + bottom * fy
                    });
                    normalization.apply(rgb)
                }
                _ => pad,
            };
            match layout {
                Layout::Nhwc => out[(ty * target.width + tx) * 3..][..3].copy_from_slice(&value),
                Layout::Nchw => {
                    for (ch, v) in value.iter().enumerate() {
                        out[ch * plane + ty * target.width + tx] = *v;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The two source indices and the weight of the second for destination index `dest`, half-pixel centres,
/// clamped at the edges.
fn source_coordinate(dest: usize, ratio: f32, source_len: u32) -> (usize, usize, f32) {
    let last = source_len.saturating_sub(1) as usize;
    let position = ((dest as f32 + 0.5) * ratio - 0.5).max(0.0);
    let first = (position.floor() as usize).min(last);
    let second = (first + 1).min(last);
    let weight = if first == last { 0.0 } else { position - first as f32 };
    (first, second, weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> RgbImage {
        let mut image = RgbImage::new(width, height);
        for y in 0..height {
            for x in 0..width {
                let at = ((y * width + x) * 3) as usize;
                image.data[at] = (x * 10) as u8;
                image.data[at + 1] = (y * 10) as u8;
                image.data[at + 2] = 200;
            }
        }
        image
    }

    const RAW: Normalization = Normalization { scale: 1.0, mean: [0.0; 3], std: [1.0; 3], bgr: false };

    #[test]
    fn large_frames_get_a_grid_of_overlapping_squares_and_small_ones_none() {
        let tiles = |w, h, size| grid_tiles(w, h, size).map(|t| (t.x, t.y, t.width, t.height)).collect::<Vec<_>>();
        let full_hd = tiles(1920, 1080, 512);
        assert_eq!(full_hd.len(), 8);
        assert_eq!(full_hd[..4], [(0, 0, 640, 640), (426, 0, 640, 640), (853, 0, 640, 640), (1280, 0, 640, 640)]);
        assert_eq!(full_hd[7], (1280, 440, 640, 640));
        assert_eq!(tiles(1280, 720, 512).len(), 6);
        assert_eq!(tiles(1080, 1920, 512)[1], (440, 0, 640, 640));
        // 4K: larger squares, within MAX_TILES, covering the frame.
        let uhd = tiles(3840, 2160, 512);
        assert!(uhd.len() <= MAX_TILES as usize && uhd[0].2 > 640, "{uhd:?}");
        assert_eq!(uhd.iter().map(|t| t.0 + t.2).max(), Some(3840));
        assert_eq!(uhd.iter().map(|t| t.1 + t.3).max(), Some(2160));
        // A strip: squares of its short side, as many as fit the limit, or none.
        assert_eq!(tiles(4000, 700, 512).len(), 8);
        // Frames the whole letterbox already sees at more than half their size, odd ones, nothing.
        for (w, h) in [(768, 576), (959, 959), (640, 360), (4000, 500), (40000, 600), (u32::MAX, 600), (0, 0)] {
            assert_eq!(tiles(w, h, 512), [], "{w}x{h}");
        }
        assert_eq!(tiles(1920, 1080, 0), []);
        // A detector of a few pixels (a broken manifest) still ends, within the limit.
        assert!(tiles(1920, 1080, 1).len() <= MAX_TILES as usize);
    }

    #[test]
    fn a_tiles_letterbox_maps_its_boxes_into_the_whole_frame() {
        let image = gradient(20, 10);
        let tile = PixelRect { x: 10, y: 0, width: 10, height: 10 };
        let mut out = vec![0.0; 5 * 5 * 3];
        let letterbox = letterbox_into(&image, tile, 5, Padding::Pixel(0), &RAW, Layout::Nhwc, &mut out).unwrap();
        assert_eq!(letterbox.to_source([0.0, 0.0, 5.0, 5.0]), [10.0, 0.0, 20.0, 10.0]);
        assert_eq!(letterbox.to_model([12.0, 2.0, 14.0, 4.0]), [1.0, 1.0, 2.0, 2.0]);
        // The tensor holds the tile's pixels: its first is the image's pixel (10.5, 0.5) after halving, red 105.
        assert_eq!(&out[..3], &[105.0, 5.0, 200.0]);
        let outside = PixelRect { x: 15, y: 0, width: 10, height: 10 };
        assert!(letterbox_into(&image, outside, 5, Padding::Pixel(0), &RAW, Layout::Nhwc, &mut out).is_err());
    }

    #[test]
    fn identity_resize_copies_pixels() {
        let image = gradient(4, 3);
        let mut out = vec![0.0; 4 * 3 * 3];
        resize_into(&image, PixelRect::whole(&image), 4, 3, &RAW, Layout::Nhwc, &mut out).expect("resize");
        let expected: Vec<f32> = image.data.iter().map(|&v| f32::from(v)).collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn downscale_by_two_averages_2x2_blocks() {
        // Half-pixel centres: destination pixel 0 samples source 0.5, the mean of pixels 0 and 1.
        let image = gradient(4, 4);
        let mut out = vec![0.0; 2 * 2 * 3];
        resize_into(&image, PixelRect::whole(&image), 2, 2, &RAW, Layout::Nhwc, &mut out).expect("resize");
        assert_eq!(&out[..3], &[5.0, 5.0, 200.0]);
        assert_eq!(&out[9..12], &[25.0, 25.0, 200.0]);
    }

    #[test]
    fn upscale_matches_opencv_half_pixel_weights() {
        // cv2.resize([[0, 100]], (4, 1), INTER_LINEAR) = [0, 25, 75, 100].
        let image = RgbImage::from_raw(2, 1, vec![0, 0, 0, 100, 100, 100]).expect("image");
        let mut out = vec![0.0; 4 * 3];
        resize_into(&image, PixelRect::whole(&image), 4, 1, &RAW, Layout::Nchw, &mut out).expect("resize");
        assert_eq!(&out[..4], &[0.0, 25.0, 75.0, 100.0]);
    }

    #[test]
    fn letterbox_pads_bottom_right_and_maps_boxes_back() {
        let image = RgbImage::from_raw(8, 4, vec![255; 8 * 4 * 3]).expect("image");
        let mut out = vec![-1.0; 3 * 4 * 4];
        let letterbox = letterbox_into(
            &image,
            PixelRect::whole(&image),
            4,
            Padding::Pixel(0),
            &Normalization::UNIT_RGB,
            Layout::Nchw,
            &mut out,
        )
        .expect("letterbox");
        assert_eq!(letterbox, Letterbox { scale: 0.5, pad_x: 0.0, pad_y: 0.0, src_w: 8, src_h: 4 });
        for channel in 0..3 {
            let plane = &out[channel * 16..(channel + 1) * 16];
            assert!(plane[..8].iter().all(|&v| v == 1.0), "top half is the image");
            assert!(plane[8..].iter().all(|&v| v == 0.0), "bottom half is padding");
        }
        assert_eq!(letterbox.to_source([1.0, 0.5, 3.0, 2.0]), [2.0, 1.0, 6.0, 4.0]);
        assert_eq!(letterbox.to_source([-5.0, -1.0, 100.0, 100.0]), [0.0, 0.0, 8.0, 4.0]);
        assert_eq!(letterbox.to_model([2.0, 1.0, 6.0, 4.0]), [1.0, 0.5, 3.0, 2.0]);
    }

    #[test]
    fn letterbox_normalizes_padding_and_swaps_to_bgr() {
        let image = RgbImage::from_raw(2, 1, vec![10, 20, 30, 10, 20, 30]).expect("image");
        let normalization = Normalization { scale: 1.0, mean: [1.0, 2.0, 3.0], std: [1.0, 2.0, 4.0], bgr: true };
        let mut out = vec![0.0; 3 * 2 * 2];
        letterbox_into(
            &image,
            PixelRect::whole(&image),
            2,
            Padding::Pixel(114),
            &normalization,
            Layout::Nhwc,
            &mut out,
        )
        .expect("letterbox");
        assert_eq!(&out[..3], &[29.0, 9.0, 1.75]);
        assert_eq!(&out[6..9], &[113.0, 56.0, 27.75]);
    }

    #[test]
    fn text_line_keeps_aspect_and_pads_right_with_zero() {
        let image = RgbImage::from_raw(20, 10, vec![255; 20 * 10 * 3]).expect("image");
        let mut out = vec![9.0; 3 * 48 * 320];
        let width = text_line_into(
            &image,
            PixelRect::whole(&image),
            TEXT_LINE_HEIGHT,
            TEXT_LINE_MAX_WIDTH,
            &Normalization::PADDLE_REC,
            Layout::Nchw,
            &mut out,
        )
        .expect("text line");
        assert_eq!(width, 96);
        assert_eq!(out[0], 1.0);
        assert_eq!(out[95], 1.0);
        assert_eq!(out[96], 0.0);
        assert_eq!(out[3 * 48 * 320 - 1], 0.0);
    }

    #[test]
    fn long_text_line_is_capped_at_max_width() {
        let image = RgbImage::new(1000, 10);
        let mut out = vec![0.0; 3 * 48 * 320];
        let width =
            text_line_into(&image, PixelRect::whole(&image), 48, 320, &RAW, Layout::Nhwc, &mut out).expect("text line");
        assert_eq!(width, 320);
    }

    #[test]
    fn crop_region_reads_only_that_region() {
        let image = gradient(10, 10);
        let region = PixelRect::from_box([2.2, 3.0, 4.0, 5.9], &image).expect("region");
        assert_eq!(region, PixelRect { x: 2, y: 3, width: 2, height: 3 });
        let mut out = vec![0.0; 2 * 3 * 3];
        resize_into(&image, region, 2, 3, &RAW, Layout::Nhwc, &mut out).expect("crop");
        assert_eq!(&out[..3], &[20.0, 30.0, 200.0]);
        assert_eq!(PixelRect::from_box([50.0, 50.0, 60.0, 60.0], &image), None);
    }

    #[test]
    fn bad_sizes_are_errors() {
        let image = gradient(4, 4);
        let mut out = vec![0.0; 10];
        assert_eq!(
            letterbox_into(&image, PixelRect::whole(&image), 4, Padding::Pixel(0), &RAW, Layout::Nhwc, &mut out),
            Err(ResizeError::TensorSize { expected: 48, actual: 10 })
        );
        let mut out = vec![0.0; 12];
        let outside = PixelRect { x: 3, y: 0, width: 2, height: 1 };
        assert!(matches!(
            resize_into(&image, outside, 2, 2, &RAW, Layout::Nhwc, &mut out),
            Err(ResizeError::RegionOutside { .. })
        ));
        assert_eq!(
            letterbox_into(
                &RgbImage::default(),
                PixelRect::whole(&RgbImage::default()),
                2,
                Padding::Pixel(0),
                &RAW,
                Layout::Nhwc,
                &mut out
            ),
            Err(ResizeError::EmptySource)
        );
    }
}
