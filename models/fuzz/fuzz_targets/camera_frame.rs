//! Camera frame conversion: the first bytes pick the pixel format and the frame size, the rest is the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout_models::vision::image::RgbImage;
use lookout_models::vision::pixels::{convert_frame, PixelFormat};

fuzz_target!(|data: &[u8]| {
    let [format, w0, w1, h0, h1, frame @ ..] = data else { return };
    let format = match format % 4 {
        0 => PixelFormat::Yuyv,
        1 => PixelFormat::Nv12,
        2 => PixelFormat::Rgb24,
        _ => PixelFormat::Mjpeg,
    };
    let (width, height) = (u32::from(u16::from_le_bytes([*w0, *w1])), u32::from(u16::from_le_bytes([*h0, *h1])));
    let _ = convert_frame(format, frame, width, height, &mut RgbImage::new(640, 480));
});
