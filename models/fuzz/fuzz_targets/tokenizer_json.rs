//! Whisper's `tokenizer.json`: the byte-level vocabulary it defines, then decoding ids through it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout_models::tokenizer::ByteLevelVocab;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("lookout-fuzz-{}.json", std::process::id()));
    std::fs::write(&path, data).unwrap();
    if let Ok(vocab) = ByteLevelVocab::from_tokenizer_json(&path) {
        let ids: Vec<u32> = (0..64).chain([u32::MAX, vocab.len() as u32]).collect();
        let _ = vocab.decode(&ids);
    }
});
