//! `multipart/form-data` uploads (`/v1/audio/transcriptions`): the first line of the input is the Content-Type
//! header, the rest the body; any input ends in its parts or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout::daemon::http::multipart::{boundary, parse};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(content_type) = std::str::from_utf8(&data[..split]) else { return };
    let body = data.get(split + 1..).unwrap_or_default();
    if let Ok(boundary) = boundary(content_type) {
        let _ = parse(body, &boundary);
    }
});
