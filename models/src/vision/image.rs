//! RGB8 images and decoding of JPEG and PNG files into them, with the header checked against size limits
//! before any pixel buffer is allocated.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

/// Largest accepted width or height, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// Largest accepted pixel count (64 Mpixel).
pub const MAX_IMAGE_PIXELS: u64 = 64 * 1024 * 1024;

/// An 8-bit RGB image, row-major, three bytes per pixel, no row padding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// A black image of the given size.
    pub fn new(width: u32, height: u32) -> Self {
        RgbImage { width, height, data: vec![0; rgb_len(width, height)] }
    }

    /// Wraps existing RGB8 bytes; the length must be `width * height * 3`.
    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Result<Self, ImageError> {
        let expected = rgb_len(width, height);
        if data.len() != expected {
            return Err(ImageError::BufferSize { expected, actual: data.len() });
        }
        Ok(RgbImage { width, height, data })
    }

    /// Changes the size, reusing the existing allocation when it is large enough. Pixel contents are
    /// unspecified afterwards.
    pub fn reshape(&mut self, width: u32, height: u32) {
        self.width = width;
        self.height = height;
        self.data.resize(rgb_len(width, height), 0);
    }

    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let at = (y as usize * self.width as usize + x as usize) * 3;
        Some([self.data[at], self.data[at + 1], self.data[at + 2]])
    }

    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }
}

pub(crate) fn rgb_len(width: u32, height: u32) -> usize {
    width as usize * height as usize * 3
}

/// The container formats this module decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Png => "PNG",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image file not found: {}", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read image file {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not a JPEG or PNG image (starts with {head})")]
    NotAnImage { head: String },
    #[error("{format} data ends early (truncated)")]
    Truncated { format: ImageFormat },
    #[error("corrupt {format} data: {detail}")]
    Corrupt { format: ImageFormat, detail: String },
    #[error("{format} image has zero size ({width}x{height})")]
    ZeroSize { format: ImageFormat, width: u32, height: u32 },
    #[error(
        "{format} image declares {width}x{height}, over the limit of {MAX_IMAGE_SIDE} per side and \
         {MAX_IMAGE_PIXELS} pixels"
    )]
    TooLarge { format: ImageFormat, width: u32, height: u32 },
    #[error("unsupported {format} pixel format: {pixel_format}")]
    UnsupportedPixelFormat { format: ImageFormat, pixel_format: String },
    #[error("pixel buffer has {actual} bytes, expected {expected}")]
    BufferSize { expected: usize, actual: usize },
}

const JPEG_MAGIC: [u8; 3] = [0xFF, 0xD8, 0xFF];
const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// The format named by the leading magic bytes, if any.
pub fn detect_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&JPEG_MAGIC) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(&PNG_MAGIC) {
        Some(ImageFormat::Png)
    } else {
        None
    }
}

/// Reads and decodes a JPEG or PNG file.
pub fn load_image(path: &Path) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ImageError::NotFound { path: path.to_path_buf() }
        } else {
            ImageError::Io { path: path.to_path_buf(), source }
        }
    })?;
    decode_image(&bytes)
}

/// Decodes JPEG or PNG bytes (format detected by magic bytes) into a new image.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let mut image = RgbImage::default();
    decode_image_into(bytes, &mut image)?;
    Ok(image)
}

/// Decodes JPEG or PNG bytes into `out`, reusing its allocation when large enough. On error `out` may hold
/// partial data but keeps a consistent size.
pub fn decode_image_into(bytes: &[u8], out: &mut RgbImage) -> Result<(), ImageError> {
    match detect_format(bytes) {
        Some(ImageFormat::Jpeg) => decode_jpeg_into(bytes, out),
        Some(ImageFormat::Png) => decode_png_into(bytes, out),
        None => Err(ImageError::NotAnImage { head: hex_head(bytes) }),
    }
}

fn hex_head(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing: empty input".to_string();
    }
    let shown: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", shown.join(" "))
}

fn check_dimensions(format: ImageFormat, width: u32, height: u32) -> Result<(), ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::ZeroSize { format, width, height });
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE || u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(ImageError::TooLarge { format, width, height });
    }
    Ok(())
}

/// Decodes one JPEG (also one MJPEG frame, whose missing Huffman tables are filled with the standard ones)
/// straight into `out`'s pixel buffer. Grey, YCbCr, RGB, CMYK and YCCK sources are converted to RGB.
pub fn decode_jpeg_into(bytes: &[u8], out: &mut RgbImage) -> Result<(), ImageError> {
    const FORMAT: ImageFormat = ImageFormat::Jpeg;
    // A JPEG cut short still decodes (grey below the cut), so a missing end-of-image marker is the test.
    let end = bytes.iter().rposition(|b| *b != 0 && !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
    if !bytes[..end].ends_with(&[0xFF, 0xD9]) {
        return Err(ImageError::Truncated { format: FORMAT });
    }
    let (mut decoder, width, height) = jpeg_header(bytes)?;
    check_dimensions(FORMAT, width, height)?;
    let input = decoder.input_colorspace().unwrap_or(ColorSpace::Unknown);
    match input {
        ColorSpace::YCbCr | ColorSpace::RGB | ColorSpace::Luma | ColorSpace::CMYK | ColorSpace::YCCK => {}
        other => return Err(ImageError::UnsupportedPixelFormat { format: FORMAT, pixel_format: format!("{other:?}") }),
    }
    if decoder.output_buffer_size() != Some(rgb_len(width, height)) {
        return Err(ImageError::UnsupportedPixelFormat {
            format: FORMAT,
            pixel_format: format!("{input:?} without an RGB conversion"),
        });
    }
    out.reshape(width, height);
    decoder.decode_into(&mut out.data).map_err(jpeg_error)
}

type JpegDecoder<'a> = zune_jpeg::JpegDecoder<ZCursor<&'a [u8]>>;

/// A JPEG decoder past the headers, with the frame's width and height.
fn jpeg_header(bytes: &[u8]) -> Result<(JpegDecoder<'_>, u32, u32), ImageError> {
    // The decoder's own side limit would report a bare string; the header is checked by the caller instead.
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(jpeg_error)?;
    match decoder.info() {
        Some(info) => Ok((decoder, u32::from(info.width), u32::from(info.height))),
        None => Err(ImageError::Corrupt { format: ImageFormat::Jpeg, detail: "no frame header".into() }),
    }
}

/// The width and height a JPEG or PNG declares, from its headers alone: what decoding it would take is known
/// before anything is allocated for its pixels.
pub fn image_size(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    match detect_format(bytes) {
        Some(ImageFormat::Jpeg) => jpeg_header(bytes).map(|(_, width, height)| (width, height)),
        Some(ImageFormat::Png) => {
            let mut decoder = png::Decoder::new(Cursor::new(bytes));
            let header = decoder.read_header_info().map_err(png_error)?;
            Ok((header.width, header.height))
        }
        None => Err(ImageError::NotAnImage { head: hex_head(bytes) }),
    }
}

fn jpeg_error(error: zune_jpeg::errors::DecodeErrors) -> ImageError {
    use zune_jpeg::errors::DecodeErrors;
    match error {
        DecodeErrors::ExhaustedData => ImageError::Truncated { format: ImageFormat::Jpeg },
        DecodeErrors::ZeroError => ImageError::ZeroSize { format: ImageFormat::Jpeg, width: 0, height: 0 },
        DecodeErrors::Unsupported(scheme) => {
            ImageError::UnsupportedPixelFormat { format: ImageFormat::Jpeg, pixel_format: format!("{scheme:?}") }
        }
        other => {
            let detail = other.to_string();
            if detail.contains("No more bytes") || detail.to_ascii_lowercase().contains("eof") {
                ImageError::Truncated { format: ImageFormat::Jpeg }
            } else {
                ImageError::Corrupt { format: ImageFormat::Jpeg, detail }
            }
        }
    }
}

/// Decodes a PNG into `out`. Palette and sub-byte images are expanded and 16-bit samples reduced to 8 bits;
/// grey, grey+alpha and RGBA are converted to RGB (alpha is dropped, not composited).
pub fn decode_png_into(bytes: &[u8], out: &mut RgbImage) -> Result<(), ImageError> {
    const FORMAT: ImageFormat = ImageFormat::Png;
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let (width, height) = {
        let header = decoder.read_header_info().map_err(png_error)?;
        (header.width, header.height)
    };
    check_dimensions(FORMAT, width, height)?;
    let mut reader = decoder.read_info().map_err(png_error)?;
    let (color, depth) = reader.output_color_type();
    if depth != png::BitDepth::Eight {
        return Err(ImageError::UnsupportedPixelFormat {
            format: FORMAT,
            pixel_format: format!("{color:?} {depth:?}"),
        });
    }
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(ImageError::UnsupportedPixelFormat {
                format: FORMAT,
                pixel_format: "unexpanded palette".into(),
            })
        }
    };
    out.reshape(width, height);
    if channels == 3 {
        reader.next_frame(&mut out.data).map_err(png_error)?;
        return Ok(());
    }
    // Rows are expanded in place: each output row is written from its own source row only.
    let row_bytes = width as usize * channels;
    let mut row_index = 0usize;
    while let Some(row) = reader.next_row().map_err(png_error)? {
        let source = row.data();
        if row_index >= height as usize || source.len() < row_bytes {
            return Err(ImageError::Corrupt { format: FORMAT, detail: "row size mismatch".into() });
        }
        let target = &mut out.data[row_index * width as usize * 3..(row_index + 1) * width as usize * 3];
        for (pixel, rgb) in source[..row_bytes].chunks_exact(channels).zip(target.chunks_exact_mut(3)) {
            match channels {
                1 | 2 => rgb.fill(pixel[0]),
                _ => rgb.copy_from_slice(&pixel[..3]),
            }
        }
        row_index += 1;
    }
    if row_index != height as usize {
        return Err(ImageError::Truncated { format: FORMAT });
    }
    Ok(())
}

fn png_error(error: png::DecodingError) -> ImageError {
    match error {
        png::DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Truncated { format: ImageFormat::Png }
        }
        png::DecodingError::LimitsExceeded => ImageError::TooLarge { format: ImageFormat::Png, width: 0, height: 0 },
        other => ImageError::Corrupt { format: ImageFormat::Png, detail: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn encode_png(
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
    ) -> Vec<u8> {
        let mut bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut bytes, width, height);
            encoder.set_color(color);
            encoder.set_depth(depth);
            let mut writer = encoder.write_header().expect("png header");
            writer.write_image_data(data).expect("png data");
        }
        bytes
    }

    pub(crate) fn encode_jpeg(width: u16, height: u16, color: jpeg_encoder::ColorType, data: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let encoder = jpeg_encoder::Encoder::new(&mut bytes, 100);
        encoder.encode(data, width, height, color).expect("jpeg encode");
        bytes
    }

    fn solid(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
        rgb.iter().copied().cycle().take(rgb_len(width, height)).collect()
    }

    fn assert_close(actual: [u8; 3], expected: [u8; 3], tolerance: i32) {
        for c in 0..3 {
            assert!((i32::from(actual[c]) - i32::from(expected[c])).abs() <= tolerance, "{actual:?} vs {expected:?}");
        }
    }

    #[test]
    fn png_rgb_round_trips_exactly() {
        let data: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
        let bytes = encode_png(4, 3, png::ColorType::Rgb, png::BitDepth::Eight, &data);
        let image = decode_image(&bytes).expect("decode");
        assert_eq!((image.width, image.height), (4, 3));
        assert_eq!(image.data, data);
    }

    #[test]
    fn png_grey_grey_alpha_rgba_and_16_bit_become_rgb() {
        let grey = encode_png(2, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[10, 200]);
        assert_eq!(decode_image(&grey).expect("grey").data, vec![10, 10, 10, 200, 200, 200]);
        let grey_alpha = encode_png(1, 1, png::ColorType::GrayscaleAlpha, png::BitDepth::Eight, &[77, 0]);
        assert_eq!(decode_image(&grey_alpha).expect("grey alpha").data, vec![77, 77, 77]);
        let rgba = encode_png(1, 1, png::ColorType::Rgba, png::BitDepth::Eight, &[1, 2, 3, 4]);
        assert_eq!(decode_image(&rgba).expect("rgba").data, vec![1, 2, 3]);
        let rgb16 = encode_png(1, 1, png::ColorType::Rgb, png::BitDepth::Sixteen, &[0xAB, 0, 0x12, 0xFF, 0, 0]);
        assert_eq!(decode_image(&rgb16).expect("16-bit").data, vec![0xAB, 0x12, 0]);
    }

    #[test]
    fn jpeg_solid_colours_decode_close_to_source() {
        for rgb in [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [128, 128, 128]] {
            let bytes = encode_jpeg(16, 8, jpeg_encoder::ColorType::Rgb, &solid(16, 8, rgb));
            assert_eq!(detect_format(&bytes), Some(ImageFormat::Jpeg));
            let image = decode_image(&bytes).expect("decode");
            assert_eq!((image.width, image.height), (16, 8));
            assert_close(image.pixel(5, 3).expect("inside"), rgb, 3);
        }
    }

    #[test]
    fn jpeg_grey_and_cmyk_become_rgb() {
        let grey = encode_jpeg(8, 8, jpeg_encoder::ColorType::Luma, &[90; 64]);
        let image = decode_image(&grey).expect("grey");
        assert_close(image.pixel(1, 1).expect("inside"), [90, 90, 90], 2);
        // CMYK (0,0,0,0) is white in the convention the decoder follows (Adobe inverted or not, both give a
        // uniform result); only a successful RGB decode of the right size is asserted.
        let cmyk = encode_jpeg(8, 8, jpeg_encoder::ColorType::Cmyk, &[0; 256]);
        let image = decode_image(&cmyk).expect("cmyk");
        assert_eq!(image.data.len(), 8 * 8 * 3);
    }

    #[test]
    fn decode_into_reuses_the_buffer() {
        let bytes = encode_jpeg(16, 16, jpeg_encoder::ColorType::Rgb, &solid(16, 16, [10, 20, 30]));
        let mut image = RgbImage::new(32, 32);
        let before = image.data.as_ptr();
        decode_image_into(&bytes, &mut image).expect("decode");
        assert_eq!(image.data.as_ptr(), before);
        assert_eq!((image.width, image.height, image.data.len()), (16, 16, 16 * 16 * 3));
    }

    #[test]
    fn missing_file_names_the_path() {
        let path = Path::new("/nonexistent/lookout/frame.jpg");
        let error = load_image(path).expect_err("missing");
        assert!(matches!(error, ImageError::NotFound { .. }));
        assert!(error.to_string().contains("/nonexistent/lookout/frame.jpg"));
    }

    #[test]
    fn garbage_is_not_an_image() {
        assert!(matches!(decode_image(b"hello world"), Err(ImageError::NotAnImage { .. })));
        assert!(matches!(decode_image(&[]), Err(ImageError::NotAnImage { .. })));
    }

    #[test]
    fn truncated_png_and_jpeg_are_errors() {
        let png_bytes = encode_png(8, 8, png::ColorType::Rgb, png::BitDepth::Eight, &[50; 192]);
        let cut = &png_bytes[..png_bytes.len() - 20];
        assert!(decode_image(cut).is_err());
        let jpeg_bytes = encode_jpeg(64, 64, jpeg_encoder::ColorType::Rgb, &solid(64, 64, [9, 99, 199]));
        assert!(decode_image(&jpeg_bytes[..40]).is_err());
    }

    fn png_with_header(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = encode_png(1, 1, png::ColorType::Rgb, png::BitDepth::Eight, &[0, 0, 0]);
        // IHDR data starts at 16: width, height, then its CRC at 29..33 which is recomputed.
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn huge_png_header_is_refused_before_decoding() {
        let error = decode_image(&png_with_header(1_000_000, 1_000_000)).expect_err("huge");
        assert!(matches!(error, ImageError::TooLarge { width: 1_000_000, .. }), "{error}");
        let error = decode_image(&png_with_header(16_000, 16_000)).expect_err("too many pixels");
        assert!(matches!(error, ImageError::TooLarge { .. }), "{error}");
    }

    #[test]
    fn huge_jpeg_header_is_refused_before_decoding() {
        let mut bytes = encode_jpeg(8, 8, jpeg_encoder::ColorType::Rgb, &solid(8, 8, [1, 2, 3]));
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline SOF0");
        // SOF0: marker, length(2), precision(1), height(2), width(2).
        bytes[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
        let error = decode_image(&bytes).expect_err("huge");
        assert!(matches!(error, ImageError::TooLarge { width: 60_000, height: 60_000, .. }), "{error}");
    }

    #[test]
    fn zero_size_png_is_refused() {
        let error = decode_image(&png_with_header(0, 5)).expect_err("zero");
        assert!(matches!(error, ImageError::ZeroSize { .. } | ImageError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn truncated_and_mutated_inputs_never_panic() {
        let jpeg_bytes = encode_jpeg(24, 16, jpeg_encoder::ColorType::Rgb, &solid(24, 16, [200, 30, 60]));
        let png_bytes = encode_png(6, 5, png::ColorType::Rgba, png::BitDepth::Eight, &[77; 120]);
        let mut image = RgbImage::default();
        let mut state = 0x2545_F491u32;
        for source in [&jpeg_bytes, &png_bytes] {
            for cut in 0..source.len() {
                let _ = decode_image_into(&source[..cut], &mut image);
            }
            for _ in 0..400 {
                let mut mutated = source.clone();
                for _ in 0..4 {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let at = state as usize % mutated.len();
                    mutated[at] = (state >> 24) as u8;
                }
                let _ = decode_image_into(&mutated, &mut image);
                assert_eq!(image.data.len(), rgb_len(image.width, image.height));
            }
        }
        for length in 0..64 {
            let mut garbage = vec![0u8; length];
            for byte in garbage.iter_mut() {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                *byte = state as u8;
            }
            let _ = decode_image(&garbage);
            let mut with_jpeg_magic = JPEG_MAGIC.to_vec();
            with_jpeg_magic.extend_from_slice(&garbage);
            let _ = decode_image(&with_jpeg_magic);
            let mut with_png_magic = PNG_MAGIC.to_vec();
            with_png_magic.extend_from_slice(&garbage);
            let _ = decode_image(&with_png_magic);
        }
    }
}
