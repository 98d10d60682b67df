//! Daemon configuration text: any input ends in a checked configuration or a configuration error, and a checked
//! one plans its memory without a fault.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use lookout::board::Probe;
use lookout::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let probe = Probe { device_tree_model: Some("Raspberry Pi 4 Model B Rev 1.5".into()), cpuinfo: String::new() };
    let _ = Config::parse(text, Path::new("fuzz.toml"), None, &probe);
});
