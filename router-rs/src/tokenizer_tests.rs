//! Tests of the tokenizer bundle, and a tiny byte-level BPE tokenizer other tests reuse.

use super::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Special tokens of the tiny tokenizer, with their ids.
pub(crate) const SPECIALS: [(&str, u32); 7] = [
    ("<|endoftext|>", 261),
    ("[gMASK]", 262),
    ("<sop>", 263),
    ("<|user|>", 264),
    ("<|assistant|>", 265),
    ("<think>", 266),
    ("</think>", 267),
];

/// GPT-2's byte-to-character table: printable bytes map to themselves, the rest to U+0100 onward.
fn byte_char(byte: u8) -> char {
    let printable = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable(byte) {
        return char::from(byte);
    }
    let rank = (0..byte).filter(|b| !printable(*b)).count() as u32;
    char::from_u32(256 + rank).expect("valid code point")
}

fn piece(bytes: &[u8]) -> String {
    bytes.iter().map(|b| byte_char(*b)).collect()
}

/// tokenizer.json of a byte-level BPE: ids 0..256 are the bytes, then a few merges, among them
/// "你" split as its first two bytes + its last byte and "😀" as two halves, then special tokens.
pub(crate) fn tiny_tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(piece(&[b]), json!(b));
    }
    let merges_bytes: [(&[u8], &[u8]); 5] = [
        (b"h", b"e"),
        (b"he", b"l"),
        ("你".as_bytes().split_at(1).0, &"你".as_bytes()[1..2]),
        (&"😀".as_bytes()[0..1], &"😀".as_bytes()[1..2]),
        (&"😀".as_bytes()[2..3], &"😀".as_bytes()[3..4]),
    ];
    let mut merges = Vec::new();
    for (i, (a, b)) in merges_bytes.iter().enumerate() {
        merges.push(format!("{} {}", piece(a), piece(b)));
        vocab.insert(format!("{}{}", piece(a), piece(b)), json!(256 + i));
    }
    let added: Vec<_> = SPECIALS
        .iter()
        .map(|(content, id)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                            "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
}

/// The tiny tokenizer with eos id 261.
pub(crate) fn tiny_tokenizer() -> Tokenizer {
    let text = tiny_tokenizer_json().to_string();
    let inner: tokenizers::Tokenizer = text.parse().expect("tiny tokenizer parses");
    Tokenizer::new(inner, vec![261])
}

/// A fresh empty directory under the system temp dir.
pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("glm47-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write test file");
}

fn model_dir(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    write(&dir, "tokenizer.json", &tiny_tokenizer_json().to_string());
    dir
}

#[test]
fn encode_adds_no_tokens_and_round_trips() {
    let tok = tiny_tokenizer();
    let text = "hello 你好 😀!";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids[0], 257, "first id is the 'hel' merge, nothing in front");
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    assert!(tok.encode("").unwrap().is_empty());
}

#[test]
fn a_text_that_cannot_fit_is_refused_from_its_pieces_counts() {
    let tok = tiny_tokenizer();
    let text = "hello 你好 😀! <|user|>".repeat(12_000); // 300 KB, 2 pieces
    let exact = tok.encode(&text).unwrap().len();
    match tok.encode_within(&text, exact / 2).unwrap() {
        Bounded::TooLong(at_least) => assert!(exact / 2 < at_least && at_least <= exact),
        Bounded::Ids(_) => panic!("{exact} tokens fit {}", exact / 2),
    }
    // at the limit, or a little under it, the whole text is tokenized as one
    for limit in [exact, exact - 20] {
        assert_eq!(
            tok.encode_within(&text, limit).unwrap(),
            Bounded::Ids(tok.encode(&text).unwrap()),
            "limit {limit}"
        );
    }
    let short = "hello".repeat(100);
    assert!(matches!(
        tok.encode_within(&short, 3).unwrap(),
        Bounded::Ids(_)
    ));
}

#[test]
fn a_tokens_bytes_are_its_own_even_inside_a_character() {
    let tok = tiny_tokenizer();
    let ids = tok.encode("a你😀<|user|>").unwrap();
    let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id)).collect();
    assert_eq!(
        bytes,
        "a你😀<|user|>".as_bytes(),
        "the tokens' bytes spell the text"
    );
    let split = ids
        .iter()
        .find(|&&id| tok.decode(&[id], false).unwrap() == "\u{fffd}");
    let part = tok.token_bytes(*split.expect("a token holding part of a character"));
    assert!(
        !part.is_empty() && std::str::from_utf8(&part).is_err(),
        "{part:?}"
    );
    for b in 0..=255u8 {
        assert_eq!(byte_of_char(byte_char(b)), Some(b));
    }
}

#[test]
fn special_tokens_in_text_become_single_ids() {
    let tok = tiny_tokenizer();
    let ids = tok
        .encode("[gMASK]<sop><|user|>hi<|assistant|><think>")
        .unwrap();
    assert_eq!(&ids[..3], &[262, 263, 264]);
    assert_eq!(&ids[ids.len() - 2..], &[265, 266]);
    assert!(tok.is_special(264) && !tok.is_special(104));
    assert_eq!(tok.special_token_ids().len(), SPECIALS.len());
}

#[test]
fn decode_skips_special_tokens_only_when_asked() {
    let tok = tiny_tokenizer();
    let ids = tok.encode("<|user|>hi<|endoftext|>").unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|user|>hi<|endoftext|>");
    assert_eq!(tok.decode(&ids, true).unwrap(), "hi");
    assert_eq!(tok.vocab_size(), 268);
}

#[test]
fn output_skip_ids_are_the_special_ids_without_the_parser_tags() {
    let tok = tiny_tokenizer();
    let want: BTreeSet<u32> = [261, 262, 263, 264, 265].into_iter().collect();
    assert_eq!(
        tok.output_skip_ids(),
        &want,
        "<think> 266 and </think> 267 stay"
    );
    assert!(
        tok.is_special(266),
        "the tags are still reported as special"
    );
}

#[test]
fn load_reads_all_model_files() {
    let dir = model_dir("load-all");
    write(&dir, "chat_template.jinja", "[gMASK]<sop>{{ messages }}");
    write(
        &dir,
        "generation_config.json",
        r#"{"eos_token_id": [261, 264], "temperature": 1.0, "top_p": 0.95}"#,
    );
    write(
        &dir,
        "config.json",
        r#"{"eos_token_id": 262, "max_position_embeddings": 202752}"#,
    );
    let files = ModelFiles::load(&dir).unwrap();
    assert_eq!(files.tokenizer.eos_token_ids(), &[261, 264]);
    assert_eq!(files.chat_template, "[gMASK]<sop>{{ messages }}");
    assert_eq!(files.generation.temperature, Some(1.0));
    assert_eq!(files.generation.top_p, Some(0.95));
    assert_eq!(files.generation.top_k, None);
    assert_eq!(files.max_position_embeddings, Some(202752));
    assert!(files.name.starts_with("glm47-load-all"));
}

#[test]
fn load_falls_back_to_tokenizer_config_for_template_and_eos() {
    let dir = model_dir("fallback");
    write(
        &dir,
        "tokenizer_config.json",
        r#"{"chat_template": "T", "eos_token": "<|endoftext|>"}"#,
    );
    let files = ModelFiles::load(&dir).unwrap();
    assert_eq!(files.chat_template, "T");
    assert_eq!(files.tokenizer.eos_token_ids(), &[261]);
    assert_eq!(files.generation, GenerationDefaults::default());
}

#[test]
fn load_takes_the_default_of_named_templates() {
    let dir = model_dir("named");
    write(
        &dir,
        "tokenizer_config.json",
        r#"{"chat_template": [{"name": "tool_use", "template": "A"}, {"name": "default", "template": "B"}]}"#,
    );
    write(&dir, "config.json", r#"{"eos_token_id": 261}"#);
    assert_eq!(ModelFiles::load(&dir).unwrap().chat_template, "B");
}

#[test]
fn load_uses_config_eos_when_generation_config_has_none() {
    let dir = model_dir("config-eos");
    write(&dir, "chat_template.jinja", "T");
    write(&dir, "generation_config.json", r#"{"top_k": 40}"#);
    write(&dir, "config.json", r#"{"eos_token_id": 262}"#);
    let files = ModelFiles::load(&dir).unwrap();
    assert_eq!(files.tokenizer.eos_token_ids(), &[262]);
    assert_eq!(files.generation.top_k, Some(40));
}

#[test]
fn load_reports_missing_pieces_clearly() {
    let dir = model_dir("missing");
    let err = ModelFiles::load(&dir).unwrap_err();
    assert!(
        matches!(err, TokenizerError::MissingChatTemplate { .. }),
        "{err}"
    );
    write(&dir, "chat_template.jinja", "T");
    let err = ModelFiles::load(&dir).unwrap_err();
    assert!(matches!(err, TokenizerError::MissingEos { .. }), "{err}");
    write(&dir, "config.json", r#"{"eos_token_id": "x"}"#);
    let err = ModelFiles::load(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            TokenizerError::InvalidField {
                field: "eos_token_id",
                ..
            }
        ),
        "{err}"
    );
    write(&dir, "config.json", "{");
    assert!(matches!(
        ModelFiles::load(&dir).unwrap_err(),
        TokenizerError::Json { .. }
    ));
    let empty = temp_dir("empty");
    assert!(matches!(
        ModelFiles::load(&empty).unwrap_err(),
        TokenizerError::Load { .. }
    ));
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<ModelFiles>();
}
