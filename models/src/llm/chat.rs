//! The text side of a GGUF decoder: its tokenizer and its chat template (the Jinja template stored in
//! `tokenizer.chat_template`, rendered with minijinja), usable without loading the graph.

use minijinja::{context, Environment};
use serde::Serialize;

use super::bpe::BpeTokenizer;
use super::gguf::Gguf;
use crate::error::{ModelError, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message { role: role.to_string(), content: content.into() }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are the written forms of those tokens, visible to the template.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, String> {
        let mut env = Environment::new();
        env.add_template_owned("chat", source.to_string()).map_err(|e| format!("chat template: {e}"))?;
        Ok(ChatTemplate { env, bos: bos.to_string(), eos: eos.to_string() })
    }

    /// The prompt text for `messages`, ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message]) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos,
                eos_token => self.eos,
            })
            .map_err(|e| format!("chat template: {e}"))
    }
}

/// A GGUF's tokenizer and chat template together: messages in, prompt text or token ids out.
pub struct ChatText {
    pub tokenizer: BpeTokenizer,
    template: ChatTemplate,
}

impl ChatText {
    pub fn from_gguf(gguf: &Gguf) -> Result<ChatText> {
        let tokenizer = BpeTokenizer::from_gguf(gguf)?;
        let source = gguf.str("tokenizer.chat_template")?;
        let written = |id: Option<u32>| id.map(|i| tokenizer.decode_special(i)).unwrap_or_default();
        let bos = written(gguf.uint("tokenizer.ggml.bos_token_id").ok().map(|n| n as u32));
        let template = ChatTemplate::new(source, &bos, &written(Some(tokenizer.eos))).map_err(ModelError::BadGguf)?;
        Ok(ChatText { tokenizer, template })
    }

    /// The chat-formatted prompt text for `messages`.
    pub fn prompt(&self, messages: &[Message]) -> Result<String> {
        self.template.render(messages).map_err(ModelError::BadGguf)
    }

    /// The token ids of the chat-formatted prompt for `messages`. What the template writes is tokenized with its
    /// control tokens; each message's content as plain text, so that `<|im_start|>` typed in a question stays
    /// text and cannot open a turn of its own.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        // Rendered with a marker in place of each content, then cut at the markers.
        let marker = |i: usize| format!("\u{E000}{i}\u{E001}");
        let marked: Vec<Message> = messages.iter().enumerate().map(|(i, m)| Message::new(&m.role, marker(i))).collect();
        let rendered = self.prompt(&marked)?;
        let mut ids = Vec::new();
        let mut rest = rendered.as_str();
        for (i, message) in messages.iter().enumerate() {
            let mark = marker(i);
            let at = rest.find(&mark).ok_or_else(|| {
                ModelError::BadGguf(format!("the chat template does not write message {i}'s content as given"))
            })?;
            ids.extend(self.tokenizer.encode(&rest[..at]));
            ids.extend(self.tokenizer.encode_plain(&message.content));
            rest = &rest[at + mark.len()..];
        }
        ids.extend(self.tokenizer.encode(rest));
        Ok(ids)
    }
}
