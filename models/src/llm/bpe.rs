//! Byte-level BPE tokenizer read from GGUF metadata (`tokenizer.ggml.model = gpt2`): special-token splitting,
//! the GPT-2 pre-tokenizer (with digits split one by one for the `smollm` family), merges by rank, and streaming
//! decode that never cuts a UTF-8 character.

use std::collections::HashMap;

use super::gguf::{Gguf, GgufError, Result};
use crate::tokenizer::{byte_to_unicode, unicode_to_byte};

/// GGUF token type of control tokens (`<|im_start|>`, `<|im_end|>`, ...).
const CONTROL: i64 = 3;

pub struct BpeTokenizer {
    /// Token text in GPT-2's byte-to-character form, by id.
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    /// Merge rank of each adjacent pair of ids, and the id it merges into.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Control tokens, longest first, matched literally in the input.
    specials: Vec<(String, u32)>,
    control: Vec<bool>,
    split_digits: bool,
    /// The token of each single byte; bytes the vocabulary lacks (some control characters) are dropped, as
    /// Hugging Face's BPE without an unknown token does.
    byte_ids: [Option<u32>; 256],
    char_byte: HashMap<char, u8>,
    pub bos: Option<u32>,
    pub eos: u32,
}

impl BpeTokenizer {
    pub fn from_gguf(gguf: &Gguf) -> Result<BpeTokenizer> {
        let bad = |reason: String| GgufError::Malformed { path: gguf.path.clone(), reason };
        let model = gguf.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(GgufError::Unsupported {
                path: gguf.path.clone(),
                reason: format!("tokenizer model `{model}` (only byte-level BPE, `gpt2`, is supported)"),
            });
        }
        let pre = gguf.str("tokenizer.ggml.pre").unwrap_or("default");
        let split_digits = match pre {
            "smollm" | "starcoder" | "refact" | "codeshell" => true,
            "default" | "gpt-2" | "gpt2" => false,
            other => {
                return Err(GgufError::Unsupported {
                    path: gguf.path.clone(),
                    reason: format!("pre-tokenizer `{other}` (supported: smollm, starcoder, gpt-2)"),
                })
            }
        };
        let tokens: Vec<String> = gguf.strings("tokenizer.ggml.tokens")?.into_iter().map(String::from).collect();
        let types = gguf.ints("tokenizer.ggml.token_type").unwrap_or_else(|_| vec![1; tokens.len()]);
        if types.len() != tokens.len() {
            return Err(bad(format!("{} token types for {} tokens", types.len(), tokens.len())));
        }
        let ids: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut merges = HashMap::new();
        for (rank, merge) in gguf.strings("tokenizer.ggml.merges")?.into_iter().enumerate() {
            let (left, right) =
                merge.split_once(' ').ok_or_else(|| bad(format!("merge `{merge}` is not two tokens")))?;
            let id =
                |t: &str| ids.get(t).copied().ok_or_else(|| bad(format!("merge `{merge}` names unknown token `{t}`")));
            let merged = id(&format!("{left}{right}"))?;
            merges.insert((id(left)?, id(right)?), (rank as u32, merged));
        }
        let control: Vec<bool> = types.iter().map(|t| *t == CONTROL).collect();
        let mut specials: Vec<(String, u32)> =
            tokens.iter().enumerate().filter(|(i, _)| control[*i]).map(|(i, t)| (t.clone(), i as u32)).collect();
        specials.sort_by_key(|(text, _)| std::cmp::Reverse(text.len()));
        let byte_char = byte_to_unicode();
        let byte_ids = byte_char.map(|c| ids.get(&c.to_string()).copied());
        let id_of = |key: &str| gguf.uint(key).ok().map(|n| n as u32).filter(|n| (*n as usize) < tokens.len());
        let eos = id_of("tokenizer.ggml.eos_token_id").ok_or_else(|| bad("no valid eos_token_id".into()))?;
        let add_bos = matches!(gguf.metadata.get("tokenizer.ggml.add_bos_token"), Some(super::gguf::Value::Bool(true)));
        Ok(BpeTokenizer {
            bos: if add_bos { id_of("tokenizer.ggml.bos_token_id") } else { None },
            tokens,
            ids,
            merges,
            specials,
            control,
            split_digits,
            byte_ids,
            char_byte: unicode_to_byte(),
            eos,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a token given in its written form, such as `<|im_end|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// Token ids of `text` taken as plain text: control tokens written in it (`<|im_start|>`) are spelled out in
    /// ordinary tokens, as any other characters are.
    pub fn encode_plain(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        for piece in pre_tokenize(text, self.split_digits) {
            self.encode_piece(piece, &mut ids);
        }
        ids
    }

    /// Token ids of `text`; control tokens written in the text (`<|im_start|>`) become their ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let next_special = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by_key(|(at, len, _)| (*at, usize::MAX - len));
            let (plain, special) = match next_special {
                Some((at, len, id)) => (&rest[..at], Some((id, at + len))),
                None => (rest, None),
            };
            ids.extend(self.encode_plain(plain));
            match special {
                Some((id, end)) => {
                    ids.push(id);
                    rest = &rest[end..];
                }
                None => break,
            }
        }
        ids
    }

    fn encode_piece(&self, piece: &str, out: &mut Vec<u32>) {
        let mut word: Vec<u32> = piece.bytes().filter_map(|b| self.byte_ids[b as usize]).collect();
        loop {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, pair)| self.merges.get(&(pair[0], pair[1])).map(|(rank, id)| (*rank, i, *id)))
                .min();
            let Some((_, i, merged)) = best else { break };
            word[i] = merged;
            word.remove(i + 1);
        }
        out.extend(word);
    }

    /// Appends the bytes `id` stands for; control tokens contribute their written form only when `specials`.
    pub fn token_bytes(&self, id: u32, specials: bool, out: &mut Vec<u8>) {
        let Some(token) = self.tokens.get(id as usize) else { return };
        if self.is_control(id) {
            if specials {
                out.extend_from_slice(token.as_bytes());
            }
            return;
        }
        for c in token.chars() {
            match self.char_byte.get(&c) {
                Some(b) => out.push(*b),
                None => out.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes()),
            }
        }
    }

    /// The written form of one token, control tokens included (`<|im_end|>`).
    pub fn decode_special(&self, id: u32) -> String {
        let mut bytes = Vec::new();
        self.token_bytes(id, true, &mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The text of `ids` without control tokens (a cut multi-byte character is replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for id in ids {
            self.token_bytes(*id, false, &mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Room kept for bytes waiting to complete a character.
const PENDING_BYTES: usize = 1024;

/// Turns a stream of token ids into text pieces, holding back bytes until they complete a UTF-8 character.
#[derive(Default)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    /// Appends the new complete text after `id` (possibly none) to `out`; allocates nothing once `out` and the
    /// pending bytes have reached their working size.
    pub fn push_into(&mut self, tokenizer: &BpeTokenizer, id: u32, out: &mut String) {
        // Longer than any token, so the buffer is allocated once.
        self.pending.reserve(PENDING_BYTES.saturating_sub(self.pending.len()));
        tokenizer.token_bytes(id, false, &mut self.pending);
        let mut rest = &self.pending[..];
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                    break;
                }
                // An incomplete character at the end waits for the next token.
                Err(e) if e.error_len().is_none() => {
                    out.push_str(std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or_default());
                    rest = &rest[e.valid_up_to()..];
                    break;
                }
                Err(e) => {
                    out.push_str(std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or_default());
                    out.push(char::REPLACEMENT_CHARACTER);
                    rest = &rest[e.valid_up_to() + e.error_len().unwrap_or(1)..];
                }
            }
        }
        let kept = rest.len();
        let consumed = self.pending.len() - kept;
        self.pending.drain(..consumed);
    }

    /// Whatever is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_whitespace() {
        Class::Space
    } else if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Number
    } else {
        Class::Other
    }
}

/// Splits text as Hugging Face's byte-level pre-tokenizer does: optionally every digit alone first, then GPT-2's
/// pattern `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` within each piece.
pub fn pre_tokenize(text: &str, split_digits: bool) -> Vec<&str> {
    let mut pieces = Vec::new();
    if !split_digits {
        gpt2_split(text, &mut pieces);
        return pieces;
    }
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c.is_numeric() {
            gpt2_split(&text[start..i], &mut pieces);
            pieces.push(&text[i..i + c.len_utf8()]);
            start = i + c.len_utf8();
        }
    }
    gpt2_split(&text[start..], &mut pieces);
    pieces
}

fn gpt2_split<'t>(text: &'t str, out: &mut Vec<&'t str>) {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|(_, c)| *c);
    let offset = |i: usize| chars.get(i).map_or(text.len(), |(o, _)| *o);
    let run = |mut i: usize, kind: Class| {
        while at(i).is_some_and(|c| class(c) == kind) {
            i += 1;
        }
        i
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        let end = if c == '\'' && contraction(&chars[i + 1..]) > 0 {
            i + 1 + contraction(&chars[i + 1..])
        } else if c == ' ' && at(i + 1).is_some_and(|n| class(n) != Class::Space) {
            run(i + 1, class(at(i + 1).unwrap_or(' ')))
        } else if class(c) == Class::Space {
            let stop = run(i, Class::Space);
            if stop < chars.len() && stop - i > 1 {
                stop - 1
            } else {
                stop
            }
        } else {
            run(i, class(c))
        };
        out.push(&text[offset(i)..offset(end)]);
        i = end;
    }
}

/// Length of a GPT-2 contraction suffix (`s`, `t`, `re`, `ve`, `m`, `ll`, `d`) at the start of `rest`, or 0.
fn contraction(rest: &[(usize, char)]) -> usize {
    let a = rest.first().map(|(_, c)| *c);
    let b = rest.get(1).map(|(_, c)| *c);
    match (a, b) {
        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => 2,
        (Some('s' | 't' | 'm' | 'd'), _) => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::pre_tokenize;

    #[test]
    fn gpt2_pattern_pieces() {
        assert_eq!(pre_tokenize("Hello world", false), ["Hello", " world"]);
        assert_eq!(pre_tokenize("it's  two\n\nlines ", false), ["it", "'s", " ", " two", "\n", "\n", "lines", " "]);
        assert_eq!(pre_tokenize("a  b", false), ["a", " ", " b"]);
        assert_eq!(pre_tokenize("(x) -> y!", false), ["(", "x", ")", " ->", " y", "!"]);
        assert_eq!(pre_tokenize("Room 101", false), ["Room", " 101"]);
    }

    #[test]
    fn digits_stand_alone_and_leave_their_space() {
        assert_eq!(pre_tokenize("Room 101", true), ["Room", " ", "1", "0", "1"]);
        assert_eq!(pre_tokenize("3 people", true), ["3", " people"]);
    }
}
