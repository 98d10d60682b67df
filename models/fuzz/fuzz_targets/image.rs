//! JPEG and PNG bytes to RGB.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout_models::vision::image::decode_image;

fuzz_target!(|data: &[u8]| {
    let _ = decode_image(data);
});
