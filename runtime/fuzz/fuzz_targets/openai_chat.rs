//! `POST /v1/chat/completions` bodies: any input ends in a question with its options or a 400 naming the problem,
//! within the image size limit (data-URL images are decoded to their headers only).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout::daemon::http::openai::read_chat;

/// The Pi Zero 2 W profile's limit, the smallest shipped.
const MAX_IMAGE_PIXELS: u32 = 3_145_728;

fuzz_target!(|data: &[u8]| {
    let _ = read_chat(data, MAX_IMAGE_PIXELS);
});
