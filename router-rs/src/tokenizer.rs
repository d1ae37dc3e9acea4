//! The model's text files: tokenizer, chat template, generation defaults and config limits.
//!
//! [`ModelFiles::load`] reads a model directory once at start-up; the [`Tokenizer`] it holds is
//! `Send + Sync` and shared behind an [`Arc`] by every request.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;

/// Why a model directory could not be loaded or a text could not be (de)tokenized.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// `tokenizer.json` is missing or not a tokenizer the `tokenizers` crate understands.
    #[error("cannot load tokenizer {path}: {message}")]
    Load { path: PathBuf, message: String },
    /// Neither `chat_template.jinja` nor a `chat_template` in tokenizer_config.json (a string, or
    /// a list of named templates with one named "default").
    #[error("no chat template in {dir}: expected chat_template.jinja or a \"chat_template\" in tokenizer_config.json")]
    MissingChatTemplate { dir: PathBuf },
    /// A config field has a value of the wrong type (e.g. `eos_token_id: "x"`).
    #[error("{path}: field {field} is invalid: {message}")]
    InvalidField {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    /// No end-of-sequence id in generation_config.json, config.json or tokenizer_config.json.
    #[error("no eos_token_id found in {dir}")]
    MissingEos { dir: PathBuf },
    /// Encoding or decoding failed inside the `tokenizers` crate.
    #[error("tokenizer error: {0}")]
    Codec(String),
}

/// Sampling defaults from generation_config.json; each is `None` when the file does not set it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    /// Default sampling temperature.
    pub temperature: Option<f64>,
    /// Default nucleus probability mass.
    pub top_p: Option<f64>,
    /// Default top-k cut-off.
    pub top_k: Option<i64>,
}

/// The byte a byte-level character stands for (GPT-2's table: printable bytes are themselves,
/// the others U+0100 onward in byte order), or None for a character outside the table.
fn byte_of_char(c: char) -> Option<u8> {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    // The 68 others, in order: 0..=32, 127..=160, 173.
    let byte = match u32::from(c) {
        n @ 0..=255 => return u8::try_from(n).ok().filter(|&b| printable(b)),
        n @ 256..=288 => n - 256,
        n @ 289..=322 => n - 289 + 127,
        323 => 173,
        _ => return None,
    };
    u8::try_from(byte).ok()
}

/// Text up to this many bytes is tokenized in one piece (see `Tokenizer::encode_within`).
const PIECE_BYTES: usize = 1 << 18;
/// Tokens that cutting a text between two pieces may add or remove, counted generously.
const SPLIT_SLACK: usize = 16;

/// What `Tokenizer::encode_within` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Bounded {
    Ids(Vec<u32>),
    /// Surely above the limit: at least this many tokens.
    TooLong(usize),
}

/// Tags the output parsers read in the model's text. Some tokenizer files mark them special; they
/// are never dropped from generated text, whatever `skip_special_tokens` says.
pub const OUTPUT_TAGS: [&str; 8] = [
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
];

/// A tokenizer that adds nothing of its own: the chat template writes `[gMASK]<sop>` itself.
///
/// Special tokens written in the text (`<|user|>`) are recognised and map to their single id.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids of tokens marked special in tokenizer.json's added tokens, sorted.
    special_ids: BTreeSet<u32>,
    /// `special_ids` minus the ids of [`OUTPUT_TAGS`]: what generated text drops with
    /// `skip_special_tokens`.
    output_skip_ids: BTreeSet<u32>,
    /// Ids that end generation, in the order the config lists them.
    eos_token_ids: Vec<u32>,
    /// Number of ids, added tokens included. Counted once: `tokenizers` counts by building the
    /// whole vocabulary map (about 10 MB and tens of milliseconds for this model's vocabulary).
    vocab_size: usize,
    /// Added tokens (special or not): their text is their own, not byte-level characters.
    added_ids: BTreeSet<u32>,
    /// Whether the decoder is byte-level (GPT-2's byte-to-character table).
    byte_level: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_token_ids", &self.eos_token_ids)
            .finish()
    }
}

impl Tokenizer {
    /// Wraps a loaded `tokenizers` tokenizer with the given end-of-sequence ids.
    pub fn new(inner: tokenizers::Tokenizer, eos_token_ids: Vec<u32>) -> Self {
        let special_ids: BTreeSet<u32> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        let tag_ids: BTreeSet<u32> = OUTPUT_TAGS
            .iter()
            .filter_map(|tag| inner.token_to_id(tag))
            .collect();
        let output_skip_ids = special_ids.difference(&tag_ids).copied().collect();
        let vocab_size = inner.get_vocab_size(true);
        let added_ids = inner.get_added_tokens_decoder().into_keys().collect();
        let byte_level =
            serde_json::to_string(&inner.get_decoder()).is_ok_and(|d| d.contains("\"ByteLevel\""));
        Self {
            inner,
            special_ids,
            output_skip_ids,
            eos_token_ids,
            vocab_size,
            added_ids,
            byte_level,
        }
    }

    /// A word-level tokenizer of `size` tokens named `t0`, `t1`, … (id i is `t{i}`, id 0 the
    /// unknown token and the end of sequence), for tests.
    #[cfg(test)]
    pub fn word_level(size: u32) -> Self {
        let vocab = (0..size).map(|i| (format!("t{i}"), i)).collect();
        let model = tokenizers::models::wordlevel::WordLevel::builder()
            .vocab(vocab)
            .unk_token("t0".into())
            .build()
            .expect("vocab builds");
        Self::new(tokenizers::Tokenizer::new(model), vec![0])
    }

    /// Encodes `text` without adding BOS or any other token; special tokens in the text are kept
    /// as their ids. Fails only if the underlying tokenizer reports an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        // `encode_fast`: the same ids without the byte offsets, which nothing here reads.
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `encode(text)` when the text may fit `limit` tokens. Text longer than `PIECE_BYTES` is
    /// first counted piece by piece, so that a prompt which cannot fit is refused without holding
    /// the tokenizer's working memory (a few hundred bytes per byte of text) for all of it at once.
    pub fn encode_within(&self, text: &str, limit: usize) -> Result<Bounded, TokenizerError> {
        if let Some(at_least) = self.surely_over(text, limit)? {
            return Ok(Bounded::TooLong(at_least));
        }
        self.encode(text).map(Bounded::Ids)
    }

    /// A lower bound on the tokens of `text` when it is surely above `limit`: the pieces'
    /// counts, less `SPLIT_SLACK` for each piece (what cutting the text there may change).
    fn surely_over(&self, text: &str, limit: usize) -> Result<Option<usize>, TokenizerError> {
        // A token covers at least a byte of the text: a text of at most `limit` bytes fits.
        if text.len() <= PIECE_BYTES || text.len() <= limit {
            return Ok(None);
        }
        let (mut count, mut pieces, mut rest) = (0usize, 0usize, text);
        while !rest.is_empty() {
            let mut cut = PIECE_BYTES.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            count += self
                .inner
                .encode_fast(&rest[..cut], false)
                .map_err(|e| TokenizerError::Codec(e.to_string()))?
                .len();
            pieces += 1;
            rest = &rest[cut..];
            let at_least = count.saturating_sub(pieces * SPLIT_SLACK);
            if at_least > limit {
                return Ok(Some(at_least));
            }
        }
        Ok(None)
    }

    /// The bytes token `id` stands for: a byte-level token's own bytes (a part of a UTF-8
    /// character included, where `decode` gives U+FFFD), an added token's text.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        if self.byte_level && !self.added_ids.contains(&id) {
            let raw = self.inner.id_to_token(id);
            if let Some(bytes) = raw.and_then(|t| t.chars().map(byte_of_char).collect()) {
                return bytes;
            }
        }
        self.decode(&[id], false).unwrap_or_default().into_bytes()
    }

    /// The bytes of every id, None for added tokens (special or not): what a grammar may allow
    /// (`grammar::Vocab`).
    pub fn grammar_bytes(&self) -> Vec<Option<Vec<u8>>> {
        (0..self.vocab_size as u32)
            .map(|id| (!self.added_ids.contains(&id)).then(|| self.token_bytes(id)))
            .collect()
    }

    /// `grammar_bytes`, with the added tokens among `tags` as their text (the tool-call tags).
    pub fn grammar_bytes_with(&self, tags: &[&str]) -> Vec<Option<Vec<u8>>> {
        let mut bytes = self.grammar_bytes();
        for (id, tag) in tags.iter().filter_map(|t| Some((self.token_to_id(t)?, t))) {
            bytes[id as usize] = Some(tag.as_bytes().to_vec());
        }
        bytes
    }

    /// Decodes `ids` to text, dropping special tokens when `skip_special_tokens` is set. Bytes
    /// that do not form complete UTF-8 characters come out as U+FFFD. Unknown ids are an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    /// Ids that end generation (generation_config.json, else config.json, else the eos token).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// Number of ids the tokenizer knows, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Ids of all special tokens.
    pub fn special_token_ids(&self) -> &BTreeSet<u32> {
        &self.special_ids
    }

    /// Ids that generated text drops with `skip_special_tokens`: the special tokens except the
    /// [`OUTPUT_TAGS`] the parsers need (so `<|user|>`, `[gMASK]` and eos go, `<think>` stays).
    pub fn output_skip_ids(&self) -> &BTreeSet<u32> {
        &self.output_skip_ids
    }

    /// Whether `id` is a special token (`<|user|>`, `<think>`, …).
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The id of a token given by its exact text, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Everything the router reads from a model directory.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The directory's name, served as the model id in `/v1/models`.
    pub name: String,
    /// The directory that was loaded.
    pub dir: PathBuf,
    /// The shared tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// Source of the Jinja chat template.
    pub chat_template: String,
    /// Sampling defaults from generation_config.json.
    pub generation: GenerationDefaults,
    /// `max_position_embeddings` from config.json, when present.
    pub max_position_embeddings: Option<u64>,
}

impl ModelFiles {
    /// Loads `dir`: tokenizer.json (required), the chat template (chat_template.jinja or the
    /// `chat_template` field of tokenizer_config.json, required), and the optional
    /// generation_config.json and config.json. A malformed file or field is an error; a missing
    /// optional file is not. At least one eos id must be found.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        Self::load_with_template(dir, None)
    }

    /// [`ModelFiles::load`] with `template` (`--chat-template`) in place of the directory's,
    /// which then need not have one.
    pub fn load_with_template(
        dir: impl AsRef<Path>,
        template: Option<String>,
    ) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref().to_path_buf();
        let tokenizer_path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| {
            TokenizerError::Load {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            }
        })?;
        let tokenizer_config = read_json_if_exists(&dir.join("tokenizer_config.json"))?;
        let generation_config = read_json_if_exists(&dir.join("generation_config.json"))?;
        let config = read_json_if_exists(&dir.join("config.json"))?;
        let chat_template = match template {
            Some(source) => source,
            None => crate::template::read_from_dir(&dir, tokenizer_config.as_ref())?,
        };
        let eos = find_eos_ids(&dir, &inner, &generation_config, &config, &tokenizer_config)?;
        let generation = match &generation_config {
            Some((path, json)) => parse_generation(path, json)?,
            None => GenerationDefaults::default(),
        };
        let max_position_embeddings = match &config {
            Some((path, json)) => optional_u64(path, json, "max_position_embeddings")?,
            None => None,
        };
        let name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.clone())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_string());
        Ok(Self {
            name,
            dir,
            tokenizer: Arc::new(Tokenizer::new(inner, eos)),
            chat_template,
            generation,
            max_position_embeddings,
        })
    }
}

type JsonFile = Option<(PathBuf, Json)>;

fn read_json_if_exists(path: &Path) -> Result<JsonFile, TokenizerError> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let json = serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Some((path.to_path_buf(), json)))
}

/// Reads an eos id field that may be an integer or a list of integers.
fn eos_field(path: &Path, json: &Json) -> Result<Option<Vec<u32>>, TokenizerError> {
    let invalid = |message: &str| TokenizerError::InvalidField {
        path: path.to_path_buf(),
        field: "eos_token_id",
        message: message.to_string(),
    };
    let as_id = |v: &Json| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| invalid("expected a token id"))
    };
    match json.get("eos_token_id") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Array(items)) => items.iter().map(as_id).collect::<Result<_, _>>().map(Some),
        Some(v) => Ok(Some(vec![as_id(v)?])),
    }
}

fn find_eos_ids(
    dir: &Path,
    tokenizer: &tokenizers::Tokenizer,
    generation_config: &JsonFile,
    config: &JsonFile,
    tokenizer_config: &JsonFile,
) -> Result<Vec<u32>, TokenizerError> {
    for (path, json) in [generation_config, config].into_iter().flatten() {
        if let Some(ids) = eos_field(path, json)? {
            if !ids.is_empty() {
                return Ok(ids);
            }
        }
    }
    let eos_text = tokenizer_config
        .as_ref()
        .and_then(|(_, json)| match json.get("eos_token") {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(str::to_string),
            _ => None,
        });
    eos_text
        .and_then(|text| tokenizer.token_to_id(&text))
        .map(|id| vec![id])
        .ok_or_else(|| TokenizerError::MissingEos {
            dir: dir.to_path_buf(),
        })
}

fn optional_f64(
    path: &Path,
    json: &Json,
    field: &'static str,
) -> Result<Option<f64>, TokenizerError> {
    match json.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| TokenizerError::InvalidField {
                path: path.to_path_buf(),
                field,
                message: format!("expected a number, got {v}"),
            }),
    }
}

fn optional_u64(
    path: &Path,
    json: &Json,
    field: &'static str,
) -> Result<Option<u64>, TokenizerError> {
    match json.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| TokenizerError::InvalidField {
                path: path.to_path_buf(),
                field,
                message: format!("expected a non-negative integer, got {v}"),
            }),
    }
}

fn parse_generation(path: &Path, json: &Json) -> Result<GenerationDefaults, TokenizerError> {
    let top_k = match json.get("top_k") {
        None | Some(Json::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| TokenizerError::InvalidField {
            path: path.to_path_buf(),
            field: "top_k",
            message: format!("expected an integer, got {v}"),
        })?),
    };
    Ok(GenerationDefaults {
        temperature: optional_f64(path, json, "temperature")?,
        top_p: optional_f64(path, json, "top_p")?,
        top_k,
    })
}

#[cfg(test)]
#[path = "tokenizer_tests.rs"]
pub(crate) mod tests;
