//! Raw camera frames (YUYV, NV12, RGB24, MJPEG) converted into a caller-owned RGB image, without allocating
//! once the image has reached the frame size; frames shrunk to fit, and encoded as JPEG snapshots of bounded size.
//!
//! YUV is read as BT.601 limited range (Y 16..=235, Cb/Cr 16..=240), which is what V4L2 devices deliver by
//! default, with the usual 8-bit fixed-point coefficients:
//! R = (298·(Y−16) + 409·(V−128) + 128) >> 8,
//! G = (298·(Y−16) − 100·(U−128) − 208·(V−128) + 128) >> 8,
//! B = (298·(Y−16) + 516·(U−128) + 128) >> 8, each clamped to 0..=255.

use super::image::{decode_jpeg_into, rgb_len, ImageError, RgbImage};

/// Pixel layouts a camera may deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Packed 4:2:2, bytes Y0 U Y1 V per pair of pixels; width must be even.
    Yuyv,
    /// Planar 4:2:0: a full Y plane, then one interleaved U V plane at half width and height; width and
    /// height must be even.
    Nv12,
    /// Packed R G B, one byte each.
    Rgb24,
    /// One JPEG per frame.
    Mjpeg,
}

#[derive(Debug, thiserror::Error)]
pub enum PixelError {
    #[error("{format:?} frame of {width}x{height} needs {expected} bytes, got {actual}")]
    BufferLength { format: PixelFormat, width: u32, height: u32, expected: usize, actual: usize },
    #[error("{format:?} needs even dimensions, got {width}x{height}")]
    OddDimensions { format: PixelFormat, width: u32, height: u32 },
    #[error("frame has zero size ({width}x{height})")]
    ZeroSize { width: u32, height: u32 },
    #[error("MJPEG frame is {actual_width}x{actual_height}, the stream is {width}x{height}")]
    FrameSizeMismatch { width: u32, height: u32, actual_width: u32, actual_height: u32 },
    #[error("MJPEG frame: {0}")]
    Jpeg(#[from] ImageError),
}

/// Bytes one frame occupies; `None` for MJPEG, whose frames vary in size.
pub fn frame_len(format: PixelFormat, width: u32, height: u32) -> Option<usize> {
    let pixels = width as usize * height as usize;
    match format {
        PixelFormat::Yuyv => Some(pixels * 2),
        PixelFormat::Nv12 => Some(pixels + pixels / 2),
        PixelFormat::Rgb24 => Some(pixels * 3),
        PixelFormat::Mjpeg => None,
    }
}

/// Converts one frame of `width`×`height` into `out`, resizing `out` only when its size differs.
pub fn convert_frame(
    format: PixelFormat,
    frame: &[u8],
    width: u32,
    height: u32,
    out: &mut RgbImage,
) -> Result<(), PixelError> {
    if width == 0 || height == 0 {
        return Err(PixelError::ZeroSize { width, height });
    }
    let needs_even = match format {
        PixelFormat::Yuyv => !width.is_multiple_of(2),
        PixelFormat::Nv12 => !width.is_multiple_of(2) || !height.is_multiple_of(2),
        PixelFormat::Rgb24 | PixelFormat::Mjpeg => false,
    };
    if needs_even {
        return Err(PixelError::OddDimensions { format, width, height });
    }
    if let Some(expected) = frame_len(format, width, height) {
        if frame.len() != expected {
            return Err(PixelError::BufferLength { format, width, height, expected, actual: frame.len() });
        }
    }
    if format == PixelFormat::Mjpeg {
        decode_jpeg_into(frame, out)?;
        if (out.width, out.height) != (width, height) {
            return Err(PixelError::FrameSizeMismatch {
                width,
                height,
                actual_width: out.width,
                actual_height: out.height,
            });
        }
        return Ok(());
    }
    if out.width != width || out.height != height || out.data.len() != rgb_len(width, height) {
        out.reshape(width, height);
    }
    match format {
        PixelFormat::Yuyv => yuyv_to_rgb(frame, &mut out.data),
        PixelFormat::Nv12 => nv12_to_rgb(frame, width as usize, height as usize, &mut out.data),
        PixelFormat::Rgb24 => out.data.copy_from_slice(frame),
        PixelFormat::Mjpeg => {}
    }
    Ok(())
}

/// One BT.601 limited-range pixel.
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let mut rgb = [0; 3];
    put_rgb(y, chroma_terms(u, v), &mut rgb);
    rgb
}

/// The chroma parts of the formulas (with the rounding), computed once for the pixels sharing a U V pair.
#[inline(always)]
fn chroma_terms(u: u8, v: u8) -> [i32; 3] {
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    [409 * e + 128, -100 * d - 208 * e + 128, 516 * d + 128]
}

#[inline(always)]
fn put_rgb(y: u8, chroma: [i32; 3], out: &mut [u8]) {
    let c = 298 * (i32::from(y) - 16);
    out[0] = clamp_u8((c + chroma[0]) >> 8);
    out[1] = clamp_u8((c + chroma[1]) >> 8);
    out[2] = clamp_u8((c + chroma[2]) >> 8);
}

#[inline(always)]
fn clamp_u8(value: i32) -> u8 {
    value.clamp(0, 255) as u8
}

fn yuyv_to_rgb(frame: &[u8], rgb: &mut [u8]) {
    for (pair, out) in frame.chunks_exact(4).zip(rgb.chunks_exact_mut(6)) {
        let chroma = chroma_terms(pair[1], pair[3]);
        put_rgb(pair[0], chroma, &mut out[..3]);
        put_rgb(pair[2], chroma, &mut out[3..]);
    }
}

fn nv12_to_rgb(frame: &[u8], width: usize, height: usize, rgb: &mut [u8]) {
    let (luma, chroma) = frame.split_at(width * height);
    for row in 0..height {
        let luma_row = &luma[row * width..(row + 1) * width];
        let chroma_row = &chroma[(row / 2) * width..(row / 2 + 1) * width];
        let out_row = &mut rgb[row * width * 3..(row + 1) * width * 3];
        for ((luma_pair, uv), out) in
            luma_row.chunks_exact(2).zip(chroma_row.chunks_exact(2)).zip(out_row.chunks_exact_mut(6))
        {
            let chroma = chroma_terms(uv[0], uv[1]);
            put_rgb(luma_pair[0], chroma, &mut out[..3]);
            put_rgb(luma_pair[1], chroma, &mut out[3..]);
        }
    }
}

/// A JPEG of `image` (quality 85) of at most `max_bytes`: when the full size is larger, the image is halved and
/// encoded again, down to 80 pixels on its longer side. Returns the JPEG and its width and height, or none when
/// even the smallest is over `max_bytes`.
pub fn jpeg_within(image: &RgbImage, max_bytes: usize) -> Option<(Vec<u8>, u32, u32)> {
    const QUALITY: u8 = 85;
    const MIN_SIDE: u32 = 80;
    let mut scaled = RgbImage::default();
    let (mut width, mut height) = (image.width, image.height);
    loop {
        let source = match (width, height) == (image.width, image.height) {
            true => image,
            false => {
                fit_into(image, width, height, &mut scaled);
                &scaled
            }
        };
        let (w, h) = (u16::try_from(source.width).ok()?, u16::try_from(source.height).ok()?);
        let mut jpeg = Vec::with_capacity(max_bytes.min(source.data.len() / 4));
        jpeg_encoder::Encoder::new(&mut jpeg, QUALITY).encode(&source.data, w, h, jpeg_encoder::ColorType::Rgb).ok()?;
        if jpeg.len() <= max_bytes {
            return Some((jpeg, source.width, source.height));
        }
        if width.max(height) / 2 < MIN_SIDE {
            return None;
        }
        (width, height) = ((width / 2).max(1), (height / 2).max(1));
    }
}

/// Copies `image` into `out`, shrunk by averaging boxes of source pixels when it is larger than
/// `max_width`×`max_height` (aspect kept). Photos of any size then fit a frame pool sized for the configured
/// camera; `out` is reused without allocating once it has reached that size.
pub fn fit_into(image: &RgbImage, max_width: u32, max_height: u32, out: &mut RgbImage) {
    let scale = (f64::from(max_width) / f64::from(image.width.max(1)))
        .min(f64::from(max_height) / f64::from(image.height.max(1)))
        .min(1.0);
    let width = ((f64::from(image.width) * scale).round() as u32).clamp(1, image.width.max(1));
    let height = ((f64::from(image.height) * scale).round() as u32).clamp(1, image.height.max(1));
    if (out.width, out.height) != (width, height) || out.data.len() != rgb_len(width, height) {
        out.reshape(width, height);
    }
    if (width, height) == (image.width, image.height) {
        out.data.copy_from_slice(&image.data);
        return;
    }
    let (src_w, src_h, w, h) = (image.width as usize, image.height as usize, width as usize, height as usize);
    for y in 0..h {
        let (y0, y1) = (y * src_h / h, ((y + 1) * src_h / h).max(y * src_h / h + 1));
        for x in 0..w {
            let (x0, x1) = (x * src_w / w, ((x + 1) * src_w / w).max(x * src_w / w + 1));
            let mut sum = [0u32; 3];
            for row in y0..y1 {
                for px in image.data[(row * src_w + x0) * 3..(row * src_w + x1) * 3].chunks_exact(3) {
                    for c in 0..3 {
                        sum[c] += u32::from(px[c]);
                    }
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as u32;
            let at = (y * w + x) * 3;
            for (value, total) in out.data[at..at + 3].iter_mut().zip(sum) {
                *value = ((total + n / 2) / n) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_a_decodable_jpeg_halved_until_it_fits() {
        let mut image = RgbImage::new(640, 480);
        for (i, px) in image.data.chunks_exact_mut(3).enumerate() {
            let (x, y) = ((i % 640) as u32, (i / 640) as u32);
            px.copy_from_slice(&[((x * 7) ^ (y * 3)) as u8, (x * y / 7) as u8, ((x + y) * 5) as u8]);
        }
        let (full, width, height) = jpeg_within(&image, 1 << 20).expect("fits at full size");
        assert_eq!((width, height), (640, 480));
        let mut decoded = RgbImage::default();
        decode_jpeg_into(&full, &mut decoded).unwrap();
        assert_eq!((decoded.width, decoded.height), (640, 480));
        let (small, width, height) = jpeg_within(&image, full.len() / 3).expect("fits when smaller");
        assert!(small.len() <= full.len() / 3 && width < 640 && width * 3 == height * 4, "{width}x{height}");
        decode_jpeg_into(&small, &mut decoded).unwrap();
        assert_eq!((decoded.width, decoded.height), (width, height));
        assert_eq!(jpeg_within(&image, 200), None, "not even the smallest fits");
    }

    // (name, limited-range Y U V, RGB computed by hand from the formulas in the module header)
    const SOLID_COLOURS: [([u8; 3], [u8; 3]); 6] = [
        ([81, 90, 240], [255, 0, 0]),
        ([145, 54, 34], [0, 255, 1]),
        ([41, 240, 110], [0, 0, 255]),
        ([235, 128, 128], [255, 255, 255]),
        ([16, 128, 128], [0, 0, 0]),
        ([126, 128, 128], [128, 128, 128]),
    ];

    fn rgb_to_yuv(rgb: [u8; 3]) -> [u8; 3] {
        let (r, g, b) = (i32::from(rgb[0]), i32::from(rgb[1]), i32::from(rgb[2]));
        let y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16;
        let u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
        let v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
        [y as u8, u as u8, v as u8]
    }

    fn yuyv_frame(width: usize, height: usize, yuv: [u8; 3]) -> Vec<u8> {
        [yuv[0], yuv[1], yuv[0], yuv[2]].iter().copied().cycle().take(width * height * 2).collect()
    }

    fn nv12_frame(width: usize, height: usize, yuv: [u8; 3]) -> Vec<u8> {
        let mut frame = vec![yuv[0]; width * height];
        frame.extend([yuv[1], yuv[2]].iter().copied().cycle().take(width * height / 2));
        frame
    }

    #[test]
    fn yuv_to_rgb_matches_hand_computed_colours() {
        for (yuv, rgb) in SOLID_COLOURS {
            assert_eq!(yuv_to_rgb(yuv[0], yuv[1], yuv[2]), rgb, "yuv {yuv:?}");
        }
    }

    #[test]
    fn yuyv_solid_colours() {
        let mut out = RgbImage::default();
        for (yuv, rgb) in SOLID_COLOURS {
            convert_frame(PixelFormat::Yuyv, &yuyv_frame(4, 2, yuv), 4, 2, &mut out).expect("convert");
            assert_eq!((out.width, out.height), (4, 2));
            assert!(out.data.chunks_exact(3).all(|p| p == rgb), "yuv {yuv:?} gave {:?}", &out.data[..3]);
        }
    }

    #[test]
    fn nv12_solid_colours() {
        let mut out = RgbImage::default();
        for (yuv, rgb) in SOLID_COLOURS {
            convert_frame(PixelFormat::Nv12, &nv12_frame(4, 4, yuv), 4, 4, &mut out).expect("convert");
            assert!(out.data.chunks_exact(3).all(|p| p == rgb), "yuv {yuv:?}");
        }
    }

    #[test]
    fn nv12_chroma_is_shared_by_2x2_blocks() {
        // 4x2 frame: left 2x2 block red chroma, right block blue chroma, all luma from the same colours.
        let red = [81u8, 90, 240];
        let blue = [41u8, 240, 110];
        let luma = [red[0], red[0], blue[0], blue[0], red[0], red[0], blue[0], blue[0]];
        let mut frame = luma.to_vec();
        frame.extend_from_slice(&[red[1], red[2], blue[1], blue[2]]);
        let mut out = RgbImage::default();
        convert_frame(PixelFormat::Nv12, &frame, 4, 2, &mut out).expect("convert");
        for y in 0..2 {
            assert_eq!(out.pixel(1, y), Some([255, 0, 0]));
            assert_eq!(out.pixel(2, y), Some([0, 0, 255]));
        }
    }

    #[test]
    fn rgb24_is_copied() {
        let frame: Vec<u8> = (0..2 * 2 * 3).map(|i| i as u8).collect();
        let mut out = RgbImage::default();
        convert_frame(PixelFormat::Rgb24, &frame, 2, 2, &mut out).expect("convert");
        assert_eq!(out.data, frame);
    }

    #[test]
    fn yuv_round_trip_stays_within_two_levels() {
        let mut out = RgbImage::default();
        for r in (0..=255).step_by(51) {
            for g in (0..=255).step_by(51) {
                for b in (0..=255).step_by(51) {
                    let rgb = [r as u8, g as u8, b as u8];
                    let yuv = rgb_to_yuv(rgb);
                    convert_frame(PixelFormat::Yuyv, &yuyv_frame(2, 1, yuv), 2, 1, &mut out).expect("yuyv");
                    let back = out.pixel(0, 0).expect("pixel");
                    for c in 0..3 {
                        assert!((i32::from(back[c]) - i32::from(rgb[c])).abs() <= 2, "{rgb:?} -> {back:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_lengths_and_odd_sizes_are_errors() {
        let mut out = RgbImage::default();
        let error = convert_frame(PixelFormat::Yuyv, &[0; 15], 4, 2, &mut out).expect_err("short");
        assert!(matches!(error, PixelError::BufferLength { expected: 16, actual: 15, .. }));
        assert!(matches!(
            convert_frame(PixelFormat::Nv12, &[0; 25], 4, 4, &mut out),
            Err(PixelError::BufferLength { expected: 24, .. })
        ));
        assert!(matches!(
            convert_frame(PixelFormat::Rgb24, &[0; 13], 2, 2, &mut out),
            Err(PixelError::BufferLength { expected: 12, .. })
        ));
        assert!(matches!(
            convert_frame(PixelFormat::Yuyv, &[0; 6], 3, 1, &mut out),
            Err(PixelError::OddDimensions { .. })
        ));
        assert!(matches!(convert_frame(PixelFormat::Nv12, &[], 0, 2, &mut out), Err(PixelError::ZeroSize { .. })));
        assert!(matches!(convert_frame(PixelFormat::Mjpeg, b"nope", 2, 2, &mut out), Err(PixelError::Jpeg(_))));
    }

    #[test]
    fn steady_state_conversion_keeps_the_same_buffer() {
        let mut out = RgbImage::default();
        let frame = yuyv_frame(64, 48, [126, 128, 128]);
        convert_frame(PixelFormat::Yuyv, &frame, 64, 48, &mut out).expect("first");
        let buffer = out.data.as_ptr();
        for _ in 0..3 {
            convert_frame(PixelFormat::Yuyv, &frame, 64, 48, &mut out).expect("again");
            convert_frame(PixelFormat::Nv12, &nv12_frame(64, 48, [81, 90, 240]), 64, 48, &mut out).expect("nv12");
        }
        assert_eq!(out.data.as_ptr(), buffer);
    }

    #[test]
    fn mjpeg_frame_decodes_into_the_existing_buffer() {
        let rgb: Vec<u8> = [0u8, 0, 255].iter().copied().cycle().take(16 * 16 * 3).collect();
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 95).encode(&rgb, 16, 16, jpeg_encoder::ColorType::Rgb).expect("encode");
        let mut out = RgbImage::new(16, 16);
        let buffer = out.data.as_ptr();
        convert_frame(PixelFormat::Mjpeg, &jpeg, 16, 16, &mut out).expect("mjpeg");
        assert_eq!(out.data.as_ptr(), buffer);
        let pixel = out.pixel(8, 8).expect("inside");
        assert!(pixel[0] < 4 && pixel[1] < 4 && pixel[2] > 250, "{pixel:?}");
        assert!(matches!(
            convert_frame(PixelFormat::Mjpeg, &jpeg, 32, 16, &mut out),
            Err(PixelError::FrameSizeMismatch { .. })
        ));
    }

    #[test]
    fn fit_into_shrinks_large_images_by_box_averages_and_copies_small_ones() {
        let mut big = RgbImage::new(4, 2);
        big.data = vec![0, 0, 0, 100, 100, 100, 200, 0, 0, 200, 0, 0, 0, 0, 0, 100, 100, 100, 0, 0, 200, 0, 0, 200];
        let mut out = RgbImage::default();
        fit_into(&big, 2, 2, &mut out);
        assert_eq!((out.width, out.height), (2, 1));
        assert_eq!(out.data, vec![50, 50, 50, 100, 0, 100]);
        fit_into(&big, 8, 8, &mut out);
        assert_eq!(out, big);
    }
}
