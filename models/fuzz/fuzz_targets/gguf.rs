//! A GGUF file: the header and tensor directory, the decoder's hyperparameters, and the tokenizer and chat template
//! built from its metadata, which then tokenize a prompt.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookout_models::llm::chat::{ChatText, Message};
use lookout_models::llm::gguf::{Gguf, LlamaConfig};

fuzz_target!(|data: &[u8]| {
    // The reader takes a path: the input goes to a file in memory-backed /dev/shm.
    let path = std::env::temp_dir().join(format!("lookout-fuzz-{}.gguf", std::process::id()));
    std::fs::write(&path, data).unwrap();
    if let Ok(gguf) = Gguf::open(&path) {
        let _ = LlamaConfig::from_gguf(&gguf);
        if let Ok(chat) = ChatText::from_gguf(&gguf) {
            let _ = chat.prompt_ids(&[Message::new("user", "How many people are outside?")]);
        }
    }
});
