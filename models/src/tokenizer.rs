//! Byte-level BPE vocabularies (GPT-2 style, as in Whisper's `tokenizer.json`): token ids to text, special tokens.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// GPT-2's reversible map from bytes to printable characters: the character each byte is written as.
pub(crate) fn byte_to_unicode() -> [char; 256] {
    let mut table = [' '; 256];
    for (c, b) in unicode_to_byte() {
        table[b as usize] = c;
    }
    table
}

/// GPT-2's reversible map from bytes to printable characters, inverted: character → byte.
pub(crate) fn unicode_to_byte() -> HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars = printable.clone();
    let mut extra = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    printable.into_iter().zip(chars).filter_map(|(b, c)| char::from_u32(c).map(|c| (c, b as u8))).collect()
}

#[derive(Deserialize)]
struct TokenizerFile {
    model: BpeModel,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
}

#[derive(Deserialize)]
struct BpeModel {
    vocab: HashMap<String, u32>,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
}

/// A vocabulary that turns token ids back into text.
pub struct ByteLevelVocab {
    /// The bytes each ordinary token stands for, by id.
    token_bytes: Vec<Option<Vec<u8>>>,
    /// Special tokens (`<|en|>`, `<|endoftext|>`, ...) by content.
    specials: HashMap<String, u32>,
}

impl ByteLevelVocab {
    /// Reads a Hugging Face `tokenizer.json` with a byte-level BPE model.
    pub fn from_tokenizer_json(path: &Path) -> Result<ByteLevelVocab> {
        let bad = |reason: String| ModelError::BadTokenizer { path: path.to_path_buf(), reason };
        let text =
            std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        let file: TokenizerFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let byte_of = unicode_to_byte();
        let size = file
            .model
            .vocab
            .values()
            .chain(file.added_tokens.iter().map(|t| &t.id))
            .max()
            .map_or(0, |m| *m as usize + 1);
        let entries = file.model.vocab.len() + file.added_tokens.len();
        // Ids are dense in a real vocabulary: a few entries naming a huge id would size a table for nothing.
        if size == 0 || size > 1 << 20 || size > 2 * entries {
            return Err(bad(format!("implausible vocabulary size {size} for {entries} entries")));
        }
        let mut token_bytes = vec![None; size];
        for (token, id) in &file.model.vocab {
            let bytes: Option<Vec<u8>> = token.chars().map(|c| byte_of.get(&c).copied()).collect();
            token_bytes[*id as usize] = Some(bytes.ok_or_else(|| bad(format!("token {token:?} is not byte-level")))?);
        }
        let mut specials = HashMap::new();
        for added in file.added_tokens {
            token_bytes[added.id as usize] = None;
            specials.insert(added.content, added.id);
        }
        Ok(ByteLevelVocab { token_bytes, specials })
    }

    pub fn len(&self) -> usize {
        self.token_bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.token_bytes.is_empty()
    }

    /// The id of a special token such as `<|en|>`.
    pub fn special(&self, content: &str) -> Option<u32> {
        self.specials.get(content).copied()
    }

    /// Appends the bytes of ordinary tokens to `out`; special and unknown ids contribute nothing.
    pub fn decode_into(&self, ids: &[u32], out: &mut Vec<u8>) {
        for id in ids {
            if let Some(Some(bytes)) = self.token_bytes.get(*id as usize) {
                out.extend_from_slice(bytes);
            }
        }
    }

    /// The text of a token sequence (invalid UTF-8 from a cut multi-byte character is replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        self.decode_into(ids, &mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_covers_every_byte_once() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        let mut bytes: Vec<u8> = map.values().copied().collect();
        bytes.sort();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }

    #[test]
    fn a_vocabulary_is_sized_by_its_entries_not_by_an_id_it_names() {
        let dir = std::env::temp_dir().join(format!("lookout-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, json: &str| {
            let path = dir.join(name);
            std::fs::write(&path, json).unwrap();
            path
        };
        let small = write(
            "small.json",
            r#"{"model": {"vocab": {"a": 0, "Ġb": 1}}, "added_tokens": [{"id": 2, "content": "<|en|>"}]}"#,
        );
        let vocab = ByteLevelVocab::from_tokenizer_json(&small).unwrap();
        assert_eq!((vocab.len(), vocab.decode(&[0, 1, 2]), vocab.special("<|en|>")), (3, "a b".to_string(), Some(2)));
        let sparse = write("sparse.json", r#"{"model": {"vocab": {"a": 1000000}}, "added_tokens": []}"#);
        let error = ByteLevelVocab::from_tokenizer_json(&sparse).err().unwrap().to_string();
        assert!(error.contains("implausible vocabulary size 1000001 for 1 entries"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
