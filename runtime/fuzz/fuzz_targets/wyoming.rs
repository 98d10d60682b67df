//! What a Wyoming client sends (the daemon's speech-to-text server): the input is the whole stream, read message by
//! message as a session takes them, audio included within a 30 s limit; any input ends in a count or a refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout::daemon::wyoming::take_client_bytes;
use lookout_models::audio::AudioLimit;

fuzz_target!(|data: &[u8]| {
    let _ = take_client_bytes(data, AudioLimit::seconds(30));
});
