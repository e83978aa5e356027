//! Tokenizers through the HF `tokenizers` crate: `tokenizer.json` of a Hugging Face folder, or
//! the byte-level BPE tokenizer a GGUF file describes, rebuilt the way `transformers` does
//! (`AutoTokenizer.from_pretrained(folder, gguf_file=name)`), so token ids are identical.
//!
//! Offsets are UTF-8 byte offsets into the text (the Rust crate's native unit; Python's binding
//! reports characters).

use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};
use tokenizers::Tokenizer;

use crate::gguf::{Gguf, Value};
use crate::{Error, Result};

/// Ids of the special tokens a model declares (`None` where it has none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub cls: Option<u32>,
    pub sep: Option<u32>,
}

/// One text tokenized.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// `(start, end)` UTF-8 byte span of each token in the text; `(0, 0)` for inserted tokens.
    pub offsets: Vec<(usize, usize)>,
    /// True for tokens the tokenizer inserted (`[CLS]`, `[SEP]`, a BOS), not read from the text.
    pub special: Vec<bool>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A tokenizer with the special token ids of its model.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: Tokenizer,
    source: PathBuf,
    pub special: SpecialTokens,
    sha256: String,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`; special tokens come from `tokenizer_config.json`,
    /// `special_tokens_map.json` and `config.json` where present.
    pub fn from_hf_folder(dir: &Path) -> Result<TextTokenizer> {
        let path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut inner = Tokenizer::from_str_json(&text, &path)?;
        // `tokenizer(text)` in transformers neither truncates nor pads unless asked.
        inner.with_truncation(None).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        inner.with_padding(None);
        let mut special = SpecialTokens::default();
        let by_name = |name: &str| inner.token_to_id(name);
        for file in [
            "config.json",
            "special_tokens_map.json",
            "tokenizer_config.json",
        ] {
            let Ok(bytes) = std::fs::read(dir.join(file)) else {
                continue;
            };
            let json: Json = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                path: dir.join(file),
                source,
            })?;
            let token = |key: &str| -> Option<u32> {
                match json.get(key)? {
                    Json::String(s) => by_name(s),
                    Json::Object(o) => by_name(o.get("content")?.as_str()?),
                    _ => None,
                }
            };
            let id = |key: &str| json.get(key)?.as_u64().and_then(|v| u32::try_from(v).ok());
            let pick = |slot: &mut Option<u32>, name: &str| {
                if let Some(v) = token(name).or_else(|| id(&format!("{name}_id"))) {
                    *slot = Some(v);
                }
            };
            pick(&mut special.bos, "bos_token");
            pick(&mut special.eos, "eos_token");
            pick(&mut special.unk, "unk_token");
            pick(&mut special.pad, "pad_token");
            pick(&mut special.cls, "cls_token");
            pick(&mut special.sep, "sep_token");
        }
        let sha256 = concord_core::fsutil::sha256_bytes(text.as_bytes());
        Ok(TextTokenizer {
            inner,
            source: path,
            special,
            sha256,
        })
    }

    /// Rebuilds the tokenizer a GGUF file describes, as transformers' GGUF conversion does.
    ///
    /// Only byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`, as in SmolLM2, Llama 3,
    /// Qwen 2) are supported; sentencepiece and unigram vocabularies are an error.
    pub fn from_gguf(gguf: &Gguf) -> Result<TextTokenizer> {
        let path = gguf.path().to_owned();
        let bad = |reason: String| Error::Tokenizer {
            path: path.clone(),
            reason,
        };
        let model = gguf
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing tokenizer.ggml.model".into()))?;
        if model != "gpt2" {
            return Err(bad(format!(
                "unsupported GGUF tokenizer {model:?} (only byte-level BPE, \"gpt2\", is supported)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<&str>> {
            let arr = gguf
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| bad(format!("missing {key}")))?;
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| bad(format!("{key} holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match gguf
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
        {
            Some(a) => a
                .iter()
                .map(|v| v.as_f64().map_or(1, |f| f as i64))
                .collect(),
            None => Vec::new(),
        };
        let alphabet = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet();
        let spelling = bytes_to_unicode();
        let mut vocab = serde_json::Map::new();
        for (i, token) in tokens.iter().enumerate() {
            let key = if token.chars().all(|c| alphabet.contains(&c)) {
                (*token).to_owned()
            } else {
                token.bytes().map(|b| spelling[usize::from(b)]).collect()
            };
            vocab.insert(key, json!(i));
        }
        let merges: Vec<Json> = merges
            .iter()
            .map(|m| {
                let mut parts = m.split(' ');
                let a = parts.next().unwrap_or_default();
                let b = parts.next().unwrap_or_default();
                json!([a, b])
            })
            .collect();
        let id_of = |key: &str| {
            gguf.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        let special = SpecialTokens {
            bos: id_of("tokenizer.ggml.bos_token_id"),
            eos: id_of("tokenizer.ggml.eos_token_id"),
            unk: id_of("tokenizer.ggml.unknown_token_id"),
            pad: id_of("tokenizer.ggml.padding_token_id"),
            cls: id_of("tokenizer.ggml.cls_token_id"),
            sep: id_of("tokenizer.ggml.seperator_token_id"),
        };
        // transformers registers the BOS, EOS, UNK and PAD tokens the file names as special
        // tokens, whatever their type (some converters mark them NORMAL or omit the types).
        let named = [special.bos, special.eos, special.unk, special.pad];
        let mut added = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            let ty = types.get(i).copied().unwrap_or(1);
            let in_alphabet = token.chars().all(|c| alphabet.contains(&c));
            // Type 3 is CONTROL (special), 4 is USER_DEFINED (added, not special).
            let is_control = in_alphabet && (ty == 3 || named.contains(&Some(i as u32)));
            let is_user = ty == 4 && vocab.contains_key(*token);
            if is_control || is_user {
                let id = vocab.get(*token).and_then(Json::as_u64).unwrap_or(i as u64);
                added.push(json!({
                    "id": id, "content": token, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": is_control,
                }));
            }
        }
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let pre = gguf
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("");
        let pre_tokenizer = match split_regex(pre) {
            Some(regex) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]}),
            None => byte_level(true),
        };
        let flag = |key: &str| matches!(gguf.get(key), Some(Value::Bool(true)));
        let name = |id: Option<u32>| {
            id.and_then(|i| tokens.get(i as usize))
                .map(|s| (*s).to_owned())
        };
        let mut single = Vec::new();
        let mut specials = serde_json::Map::new();
        let mut template_token = |id: Option<u32>, single: &mut Vec<Json>| {
            if let (Some(id), Some(tok)) = (id, name(id)) {
                single.push(json!({"SpecialToken": {"id": tok, "type_id": 0}}));
                specials.insert(
                    tok.clone(),
                    json!({"id": tok, "ids": [id], "tokens": [tok]}),
                );
            }
        };
        if flag("tokenizer.ggml.add_bos_token") {
            template_token(special.bos, &mut single);
        }
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        if flag("tokenizer.ggml.add_eos_token") {
            template_token(special.eos, &mut single);
        }
        let mut pair = single.clone();
        pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
        let tokenizer = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair,
                               "special_tokens": specials},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": merges,
            },
        });
        let text = tokenizer.to_string();
        let inner = Tokenizer::from_str_json(&text, &path)?;
        let sha256 = concord_core::fsutil::sha256_bytes(text.as_bytes());
        Ok(TextTokenizer {
            inner,
            source: path,
            special,
            sha256,
        })
    }

    /// Tokenizes like `tokenizer(text)` in transformers: with the special tokens its
    /// post-processor inserts (BERT's `[CLS]` and `[SEP]`), no truncation.
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        self.encode_with(text, true)
    }

    /// Tokenizes the text alone, without inserted special tokens (what packing joins).
    pub fn encode_plain(&self, text: &str) -> Result<Encoded> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, add_special: bool) -> Result<Encoded> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| Error::Tokenizer {
                path: self.source.clone(),
                reason: format!("cannot encode text: {e}"),
            })?;
        let special: Vec<bool> = enc
            .get_special_tokens_mask()
            .iter()
            .map(|&m| m != 0)
            .collect();
        let offsets = enc
            .get_offsets()
            .iter()
            .zip(&special)
            .map(|(&(a, b), &s)| if s { (0, 0) } else { (a, b) })
            .collect();
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            offsets,
            special,
        })
    }

    /// The id of a token string, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The sha256 of the tokenizer's JSON form (the file, or the JSON rebuilt from a GGUF).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The file the tokenizer came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

trait FromJson: Sized {
    fn from_str_json(text: &str, path: &Path) -> Result<Self>;
}

impl FromJson for Tokenizer {
    fn from_str_json(text: &str, path: &Path) -> Result<Self> {
        text.parse::<Tokenizer>().map_err(|e| Error::Tokenizer {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// GPT-2's byte-to-character table: printable bytes map to themselves, the others to 256+.
fn bytes_to_unicode() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                let c = char::from_u32(next).unwrap_or('?');
                next += 1;
                c
            }
        })
        .collect()
}

/// The pre-tokenizer split of llama.cpp's `tokenizer.ggml.pre` names, as transformers maps them;
/// `None` keeps GPT-2's own regex.
fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = concat!(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    );
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => Some(LLAMA3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(
            (t[b' ' as usize], t[b'\n' as usize], t[b'a' as usize]),
            ('\u{120}', '\u{10a}', 'a')
        );
    }
}
