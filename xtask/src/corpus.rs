//! Derives the default corpus: plain-text works cut into documents, one JSON object per line.
//!
//! Each text is cut at paragraph breaks into documents of at least [`DOC_CHARS`] characters
//! (a play's scene or a few stanzas: about the length of a web page's text in the study's
//! OpenWebText), and the documents of all texts are put in a seeded random order so that any
//! prefix, and each half, of the corpus mixes every text, as OpenWebText's halves do.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Documents are at least this many characters long (the last one of a text may be shorter).
const DOC_CHARS: usize = 1200;
/// The seed of the documents' order.
const ORDER_SEED: u64 = 0;

pub fn derive_jsonl(staging: &Path, out: &Path) -> Result<()> {
    let mut texts = Vec::new();
    collect_txt(staging, &mut texts)?;
    texts.sort();
    let mut docs: Vec<(String, String)> = Vec::new();
    for path in &texts {
        let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        // The texts are ASCII with a few Latin-1 characters; decode those as Latin-1.
        let text = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
        };
        let source = path
            .file_stem()
            .map(|s| s.to_string_lossy().trim_end_matches("_gut").to_owned())
            .unwrap_or_default();
        docs.extend(
            split_documents(&text)
                .into_iter()
                .map(|d| (source.clone(), d)),
        );
    }
    shuffle(&mut docs, ORDER_SEED);
    let mut file =
        fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (source, text) in &docs {
        let line = serde_json::json!({ "text": text, "source": source });
        writeln!(file, "{line}")?;
    }
    eprintln!(
        "setup: corpus of {} documents from {} texts",
        docs.len(),
        texts.len()
    );
    Ok(())
}

fn collect_txt(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_txt(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "txt") {
            out.push(path);
        }
    }
    Ok(())
}

/// Cuts a text into documents at blank lines, each at least [`DOC_CHARS`] long.
fn split_documents(text: &str) -> Vec<String> {
    let text = text.replace("\r\n", "\n");
    let mut docs = Vec::new();
    let mut current = String::new();
    for para in text.split("\n\n") {
        let lines: Vec<&str> = para
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.trim().is_empty())
            .collect();
        // Verse without stanza breaks makes paragraphs of many pages: cut those at lines.
        for piece in cut_lines(&lines) {
            if !current.is_empty() {
                current.push_str("\n\n");
            }
            current.push_str(&piece);
            if current.chars().count() >= DOC_CHARS {
                docs.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        docs.push(current);
    }
    docs
}

/// Joins lines into pieces of at most about [`DOC_CHARS`] characters.
fn cut_lines(lines: &[&str]) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut piece = String::new();
    for line in lines {
        if !piece.is_empty() && piece.chars().count() + line.chars().count() > DOC_CHARS {
            pieces.push(std::mem::take(&mut piece));
        }
        if !piece.is_empty() {
            piece.push('\n');
        }
        piece.push_str(line);
    }
    if !piece.is_empty() {
        pieces.push(piece);
    }
    pieces
}

/// A Fisher-Yates shuffle driven by splitmix64: stable across platforms and crate versions.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
