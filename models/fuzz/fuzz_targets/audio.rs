//! WAV and FLAC bytes to 16 kHz mono within a 30 s limit: any input ends in samples or an error, within the memory
//! the limit allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout_models::audio::{decode_bytes, to_mono_16k, AudioLimit};

fuzz_target!(|data: &[u8]| {
    if let Ok(audio) = decode_bytes(data, AudioLimit::seconds(30)) {
        let _ = to_mono_16k(audio);
    }
});
