//! The activation side of `concord align`: both SAEs' feature activations on the same text,
//! streamed from the stores in sparse batches into the alignment crate's co-occurrence
//! statistics (never a dense tokens x features matrix), plus feature frequencies, consistency
//! by frequency, and the text where matched features fire.
//!
//! Rows of the two stores are paired by row when the stores hold the same tokens (same corpus,
//! tokenizer and packing), and otherwise by byte spans (two models with different tokenizers
//! on the same documents): a token of A is paired with the token of B that ends at the same
//! byte of the same document.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use concord_align::corr::{
    CoStats, Span, SpanRule, SparseBatch, StudyVariant, align_spans, pearson, study_variants,
};
use concord_core::outputs::{
    AlignOutput, CorrelationSummary, Directions, Example, FrequencyBin, Snippet,
};
use concord_core::sae::Sae;
use concord_models::tch::{Device, Tensor};
use concord_store::{Dataset, RowMeta};
use concord_train::SaeModel;

use crate::eval::check_widths;
use crate::harvest::to_f32_vec;

/// Tokens per encoded chunk.
const CHUNK: usize = 2048;
/// Documents the study's per-prompt variants average over (the study: 30 prompts).
const PROMPTS: usize = 30;
/// Matched pairs shown with their text.
const EXAMPLES: usize = 6;

/// Which rows of `a` and `b` hold the same token, in increasing order of both.
fn pair_rows(
    a: &Dataset,
    b: &Dataset,
    meta_a: &[RowMeta],
    meta_b: &[RowMeta],
) -> Result<Vec<(u32, u32)>> {
    let (ma, mb) = (a.manifest(), b.manifest());
    if ma.corpus_sha256 != mb.corpus_sha256 {
        bail!(
            "{} and {} were harvested from different corpora: activations cannot be paired",
            a.dir().display(),
            b.dir().display()
        );
    }
    let same_tokens = ma.tokenizer_sha256 == mb.tokenizer_sha256
        && ma.context_len == mb.context_len
        && ma.packing == mb.packing;
    // The same tokens in the same rows: pair by row over the rows both hold (`b` is read
    // with twice `a`'s rows, for a finer tokenizer).
    let common = meta_a.len().min(meta_b.len());
    if same_tokens
        && common > 0
        && meta_a
            .iter()
            .zip(meta_b)
            .all(|(x, y)| x.doc == y.doc && x.token == y.token)
    {
        return Ok((0..common as u32).map(|i| (i, i)).collect());
    }
    let spans = |m: &[RowMeta]| -> Vec<Span> {
        m.iter()
            .map(|r| Span {
                doc: r.doc as u32,
                start: r.byte_start,
                end: r.byte_end,
            })
            .collect()
    };
    let (sa, sb) = (spans(meta_a), spans(meta_b));
    // Windows overlap documents, so the same document's tokens can appear in two windows;
    // keep the stream order the alignment needs by sorting the spans' positions.
    let order = |s: &[Span]| -> Vec<u32> {
        let mut idx: Vec<u32> = (0..s.len() as u32).collect();
        idx.sort_by_key(|&i| (s[i as usize].doc, s[i as usize].end, i));
        idx
    };
    let (oa, ob) = (order(&sa), order(&sb));
    let sorted_a: Vec<Span> = oa.iter().map(|&i| sa[i as usize]).collect();
    let sorted_b: Vec<Span> = ob.iter().map(|&i| sb[i as usize]).collect();
    let mut pairs: Vec<(u32, u32)> = align_spans(&sorted_a, &sorted_b, SpanRule::SameEnd)?
        .into_iter()
        .map(|(i, j)| (oa[i as usize], ob[j as usize]))
        .collect();
    pairs.sort_unstable();
    if pairs.is_empty() {
        bail!(
            "{} and {} share no token ends: they do not hold the same documents",
            a.dir().display(),
            b.dir().display()
        );
    }
    Ok(pairs)
}

/// Encodes rows `(tokens, d_in)` and returns their sparse codes.
fn encode(model: &SaeModel, rows: &[f32], d: usize) -> Result<SparseBatch> {
    let tokens = rows.len() / d;
    let xs = Tensor::f_from_slice(rows)?.f_view([tokens as i64, d as i64])?;
    let codes = to_f32_vec(&model.encode(&xs)?)?;
    Ok(SparseBatch::from_dense(&codes, tokens, model.d_sae))
}

/// Keeps the strongest activations of a few features.
struct TopActs {
    features: BTreeMap<u32, Vec<(f32, RowMeta)>>,
}

impl TopActs {
    fn observe(&mut self, codes: &SparseBatch, meta: &[RowMeta]) {
        for (t, m) in meta.iter().enumerate() {
            for (f, v) in codes.row(t) {
                if let Some(list) = self.features.get_mut(&f) {
                    list.push((v, *m));
                    list.sort_by(|x, y| y.0.total_cmp(&x.0));
                    list.truncate(3);
                }
            }
        }
    }
}

/// Fills `out.correlation`, `out.by_frequency` and `out.examples` from the first
/// `max_tokens` rows of `a`'s store (0: all); returns the features' activation frequencies on
/// the paired tokens, `(n_a)` and `(n_b)`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    out: &mut AlignOutput,
    (a, a_dir): (&Sae, &Path),
    (b, b_dir): (&Sae, &Path),
    acts_a: &Path,
    acts_b: &Path,
    corpus: Option<&Path>,
    matches: &[concord_align::Pair],
    max_tokens: u64,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (ds_a, ds_b) = (Dataset::open(acts_a)?, Dataset::open(acts_b)?);
    check_widths(a, a_dir, &ds_a)?;
    check_widths(b, b_dir, &ds_b)?;
    // Rows of `a` read at most (0: all); twice as many of `b`, whose tokenizer may cut the
    // same text finer.
    let most = if max_tokens == 0 {
        u64::MAX
    } else {
        max_tokens
    };
    let (ra, rb) = (
        ds_a.rows().min(most),
        ds_b.rows().min(most.saturating_mul(2)),
    );
    let (meta_a, meta_b) = (ds_a.read_meta(0..ra)?, ds_b.read_meta(0..rb)?);
    let pairs = pair_rows(&ds_a, &ds_b, &meta_a, &meta_b)?;
    let (ma, mb) = (
        SaeModel::from_sae(a, Device::Cpu)?,
        SaeModel::from_sae(b, Device::Cpu)?,
    );
    let (da, db) = (ds_a.d(), ds_b.d());
    // The rows each chunk needs, read as contiguous ranges.
    let mut stats = CoStats::new(ma.d_sae, mb.d_sae);
    let mut prompts: Vec<(SparseBatch, SparseBatch)> = Vec::new();
    let mut prompt_docs: BTreeSet<u64> = BTreeSet::new();
    let mut tracked_a = TopActs {
        features: BTreeMap::new(),
    };
    let mut tracked_b = TopActs {
        features: BTreeMap::new(),
    };
    let mut best: Vec<&concord_align::Pair> = matches.iter().collect();
    best.sort_by(|x, y| y.cos.total_cmp(&x.cos).then(x.a.cmp(&y.a)));
    for p in best.iter().take(EXAMPLES * 3) {
        tracked_a.features.insert(p.a, Vec::new());
        tracked_b.features.insert(p.b, Vec::new());
    }
    // The first documents are one chunk each (the study's per-prompt variants); then chunks
    // of CHUNK tokens.
    let mut start = 0;
    while start < pairs.len() {
        let doc = |k: usize| meta_a[pairs[k].0 as usize].doc;
        let prompt = prompt_docs.len() < PROMPTS;
        let end = if prompt {
            let mut e = start + 1;
            while e < pairs.len() && doc(e) == doc(start) {
                e += 1;
            }
            e
        } else {
            (start + CHUNK).min(pairs.len())
        };
        let chunk = &pairs[start..end];
        let gather =
            |ds: &Dataset, d: usize, idx: &mut dyn Iterator<Item = u32>| -> Result<Vec<f32>> {
                let idx: Vec<u32> = idx.collect();
                let (lo, hi) = (
                    u64::from(*idx.iter().min().expect("a chunk has rows")),
                    u64::from(*idx.iter().max().expect("a chunk has rows")) + 1,
                );
                let block = ds.read_rows(lo..hi)?;
                let mut rows = Vec::with_capacity(idx.len() * d);
                for i in idx {
                    let r = (u64::from(i) - lo) as usize;
                    rows.extend_from_slice(&block.xs[r * d..(r + 1) * d]);
                }
                Ok(rows)
            };
        let xa = gather(&ds_a, da, &mut chunk.iter().map(|p| p.0))?;
        let xb = gather(&ds_b, db, &mut chunk.iter().map(|p| p.1))?;
        let (ca, cb) = (encode(&ma, &xa, da)?, encode(&mb, &xb, db)?);
        stats.add(&ca, &cb)?;
        let rows_a: Vec<RowMeta> = chunk.iter().map(|p| meta_a[p.0 as usize]).collect();
        let rows_b: Vec<RowMeta> = chunk.iter().map(|p| meta_b[p.1 as usize]).collect();
        tracked_a.observe(&ca, &rows_a);
        tracked_b.observe(&cb, &rows_b);
        if prompt {
            prompt_docs.insert(rows_a[0].doc);
            prompts.push((ca, cb));
        }
        start = end;
    }
    let summary = pearson(&stats);
    // Both study variants from one pass over each prompt's sums.
    let [zscore, uncentred]: [_; 2] = study_variants(
        ma.d_sae,
        mb.d_sae,
        prompts.iter().map(|(x, y)| (x, y)),
        &[StudyVariant::ZScore, StudyVariant::Uncentred],
    )?
    .try_into()
    .expect("one score per variant");
    out.correlation = Some(CorrelationSummary {
        centred: Directions {
            a_to_b: summary.a_to_b,
            b_to_a: summary.b_to_a,
        },
        dead_a: summary.dead_a,
        dead_b: summary.dead_b,
        tokens: summary.tokens,
        study_zscore: Some(zscore.value).filter(|v| v.is_finite()),
        study_uncentred: Some(uncentred.value).filter(|v| v.is_finite()),
        permutation_null: None,
    });
    // Consistency by frequency of A's features.
    let tokens = stats.tokens.max(1) as f64;
    let freq_a: Vec<f64> = stats.count_a.iter().map(|&c| c as f64 / tokens).collect();
    let edges = [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0 + 1e-9];
    out.by_frequency = edges
        .windows(2)
        .map(|w| {
            let cos: Vec<f64> = matches
                .iter()
                .filter(|p| (w[0]..w[1]).contains(&freq_a[p.a as usize]))
                .map(|p| f64::from(p.cos))
                .collect();
            FrequencyBin {
                lo: w[0],
                hi: w[1].min(1.0),
                features: cos.len(),
                mean_matched_cos: if cos.is_empty() {
                    f64::NAN
                } else {
                    cos.iter().sum::<f64>() / cos.len() as f64
                },
            }
        })
        .filter(|b| b.features > 0)
        .collect();
    // Examples: the best-matched pairs whose features both fired, with their text.
    if let Some(corpus) = corpus {
        let wanted: BTreeSet<u64> = tracked_a
            .features
            .values()
            .chain(tracked_b.features.values())
            .flatten()
            .map(|(_, m)| m.doc)
            .collect();
        let texts = read_docs(corpus, &wanted)?;
        let snip = |list: &[(f32, RowMeta)]| -> Vec<Snippet> {
            list.iter()
                .filter_map(|(v, m)| {
                    texts.get(&m.doc).map(|t| Snippet {
                        doc: m.doc,
                        text: snippet(t, m.byte_start as usize, m.byte_end as usize),
                        act: *v,
                    })
                })
                .collect()
        };
        for p in best.iter() {
            let (sa, sb) = (
                snip(&tracked_a.features[&p.a]),
                snip(&tracked_b.features[&p.b]),
            );
            if !sa.is_empty() && !sb.is_empty() {
                out.examples.push(Example {
                    a: p.a as usize,
                    b: p.b as usize,
                    cos: f64::from(p.cos),
                    a_top: sa,
                    b_top: sb,
                });
            }
            if out.examples.len() == EXAMPLES {
                break;
            }
        }
    }
    let freq = |counts: &[u64]| counts.iter().map(|&c| (c as f64 / tokens) as f32).collect();
    Ok((freq(&stats.count_a), freq(&stats.count_b)))
}

/// The texts of the documents with the given indices.
fn read_docs(path: &Path, wanted: &BTreeSet<u64>) -> Result<BTreeMap<u64, String>> {
    let mut out = BTreeMap::new();
    let Some(&last) = wanted.iter().next_back() else {
        return Ok(out);
    };
    let corpus = crate::hub::open_corpus(path)?;
    for doc in corpus.documents()? {
        let doc = doc.with_context(|| format!("reading {}", path.display()))?;
        if wanted.contains(&doc.index) {
            out.insert(doc.index, doc.text);
        }
        if doc.index >= last {
            break;
        }
    }
    Ok(out)
}

/// About 60 bytes of context, the token in [brackets], and 20 bytes after, on char bounds.
fn snippet(text: &str, start: usize, end: usize) -> String {
    let floor = |mut i: usize| {
        i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let (s, e) = (floor(start), floor(end.max(start)));
    let (lo, hi) = (floor(s.saturating_sub(60)), floor(e + 20));
    format!("{}[{}]{}", &text[lo..s], &text[s..e], &text[e..hi]).replace(['\n', '\r'], " ")
}
