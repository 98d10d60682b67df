//! llama.cpp as the language decoder of Lookout's own pipeline, for the end-to-end suite's `llama.cpp` variant: a
//! `llama_cpp_peer.py --serve` process on the bundle's GGUF generates from the prompt ids Lookout writes, and
//! Lookout's tokenizer turns its tokens back into text, so that only the engine differs from Lookout's variants.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context as _};
use lookout_models::bundle::Bundle;
use lookout_models::llm::bpe::TextStream;
use lookout_models::llm::chat::ChatText;
use lookout_models::llm::gguf::Gguf;
use lookout_models::llm::{Finish, GenerateOptions, Generation};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::answer::Decoder;

const SCRIPT: &str = "runtime/bench/llama_cpp_peer.py";

pub(super) struct LlamaCppDecoder {
    chat: ChatText,
    capacity: usize,
    variant: String,
    /// The token ids that end an answer: end of sequence and every control token.
    stop: Vec<u32>,
    process: RefCell<PeerProcess>,
}

struct PeerProcess {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

#[derive(Deserialize)]
struct PeerGeneration {
    tokens: Vec<u32>,
    finish: String,
    prefill_ms: f64,
    decode_ms: f64,
    first_token_ms: f64,
    decode_steps: usize,
}

impl LlamaCppDecoder {
    /// Starts llama.cpp on the bundle's GGUF (one thread, the context of Lookout's decoder) and waits until it
    /// has loaded.
    pub fn start(python: &Path, bundle: &Bundle) -> anyhow::Result<LlamaCppDecoder> {
        let gguf_path = bundle.checked_path(bundle.component("llm-gguf", None)?)?;
        let chat = ChatText::from_gguf(&Gguf::open(&gguf_path)?)?;
        let capacity = bundle.component("llm-decoder", None)?.param_usize("context")?;
        let tokenizer = &chat.tokenizer;
        let stop =
            (0..tokenizer.vocab_size() as u32).filter(|&id| id == tokenizer.eos || tokenizer.is_control(id)).collect();
        let quantization = gguf_path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit('.').next())
            .unwrap_or("gguf")
            .to_string();
        let mut child = Command::new(python)
            .arg(SCRIPT)
            .arg("--serve")
            .arg("--gguf")
            .arg(&gguf_path)
            .args(["--threads", "1", "--context", &capacity.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("{} could not be started", python.display()))?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("llama.cpp's pipes were not opened")
        };
        let mut process = PeerProcess { child, input, output: BufReader::new(output) };
        process.read::<serde_json::Value>().context("llama.cpp did not load")?;
        Ok(LlamaCppDecoder {
            chat,
            capacity,
            variant: format!("llama.cpp {quantization}"),
            stop,
            process: RefCell::new(process),
        })
    }

    /// The llama.cpp process's peak resident size so far.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        #[derive(Deserialize)]
        struct Stats {
            peak_rss_mib: f64,
        }
        let mut process = self.process.borrow_mut();
        process.send(&json!({ "stats": true }))?;
        Ok(process.read::<Stats>()?.peak_rss_mib)
    }
}

impl PeerProcess {
    fn send(&mut self, request: &serde_json::Value) -> anyhow::Result<()> {
        writeln!(self.input, "{request}").and_then(|()| self.input.flush()).context("llama.cpp stopped taking requests")
    }

    fn read<T: DeserializeOwned>(&mut self) -> anyhow::Result<T> {
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            bail!("llama.cpp ended ({})", self.child.wait().map_or("no exit status".into(), |s| s.to_string()));
        }
        serde_json::from_str(&line).with_context(|| format!("llama.cpp's reply {:?}", line.trim()))
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Decoder for LlamaCppDecoder {
    fn chat(&self) -> &ChatText {
        &self.chat
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn variant(&self) -> &str {
        &self.variant
    }

    /// Greedy only (as the suites decode); the whole answer arrives at once, and `cancel` is not asked.
    fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
        _cancel: &dyn Fn() -> bool,
    ) -> anyhow::Result<Generation> {
        if prompt.len() + 1 > self.capacity {
            bail!("a prompt of {} tokens leaves no room in {}", prompt.len(), self.capacity);
        }
        let max_tokens = options.max_tokens.min(self.capacity - prompt.len());
        let reply: PeerGeneration = {
            let mut process = self.process.borrow_mut();
            process.send(&json!({ "prompt": prompt, "max_tokens": max_tokens, "stop": self.stop }))?;
            process.read()?
        };
        let (mut text, mut stream) = (String::new(), TextStream::default());
        for &id in &reply.tokens {
            stream.push_into(&self.chat.tokenizer, id, &mut text);
        }
        text.push_str(&stream.finish());
        on_text(&text);
        let finish = match reply.finish.as_str() {
            "stop" => Finish::Stop,
            _ if max_tokens < options.max_tokens => Finish::ContextFull,
            _ => Finish::Length,
        };
        let rate = |n: usize, ms: f64| n as f64 / (ms / 1e3).max(1e-9);
        Ok(Generation {
            text,
            prompt_tokens: prompt.len(),
            finish,
            prefill_ms: reply.prefill_ms,
            decode_ms: reply.decode_ms,
            first_token_ms: reply.first_token_ms,
            prefill_tokens_per_s: rate(prompt.len(), reply.prefill_ms),
            decode_tokens_per_s: rate(reply.decode_steps, reply.decode_ms),
            tokens: reply.tokens,
        })
    }
}
