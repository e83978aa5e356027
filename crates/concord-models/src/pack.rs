//! Packing documents into context windows, with every token's document, position and byte span.
//!
//! Two layouts (see `docs/MODELS.md` for the exact rules):
//! - **Packed** (the study's): causal models see the stream `EOS d0 EOS d1 EOS d2 ...` cut into
//!   windows of `context_len` tokens, the last partial window dropped. The EOS before a
//!   document belongs to that document at `pos = 0`; its text tokens follow at `pos = 1..`.
//!   Encoders without EOS (BERT) see `[CLS]` followed by `context_len - 1` tokens of the
//!   stream `d0 [SEP] d1 [SEP] ...`; the `[SEP]` after a document belongs to it (after its last
//!   text token), and the window's `[CLS]` belongs to the document of the token after it, at
//!   `pos = u32::MAX` (it is in no document's sequence).
//! - **Per document** (`no_pack`): each document is tokenized alone exactly like
//!   `tokenizer(text)` (BERT: `[CLS] ... [SEP]`), truncated to `context_len`; a document with
//!   no tokens makes no window.
//!
//! Inserted tokens have an empty byte span `(0, 0)`. Memory is bounded by one document's tokens
//! plus one window.

use std::collections::VecDeque;

use concord_core::manifest::Packing;
use tch::{Kind, Tensor};

use crate::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// `pos` of a window-start `[CLS]`, which belongs to no document's token sequence.
pub const NO_POS: u32 = u32::MAX;

/// One token of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenRow {
    /// The document's index as the caller numbered it.
    pub doc: u64,
    /// Token index in the document's token sequence ([`NO_POS`] for a window's `[CLS]`).
    pub pos: u32,
    pub token: u32,
    /// The token's UTF-8 byte span in the document's text; empty for inserted tokens.
    pub byte_start: u32,
    pub byte_end: u32,
}

/// One context window: its number and its tokens (exactly `context_len` when packed, at most
/// `context_len` per document).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub seq: u64,
    pub rows: Vec<TokenRow>,
}

/// How to pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackOptions {
    pub context_len: usize,
    pub packing: Packing,
}

/// The separator tokens of the packed layout.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// `EOS` before every document.
    Causal {
        eos: u32,
    },
    /// `[CLS]` at each window start, `[SEP]` after every document.
    Encoder {
        cls: u32,
        sep: u32,
    },
    PerDocument,
}

/// An iterator of windows over an iterator of `(doc_index, text)`.
#[derive(Debug)]
pub struct Packer<'t, I> {
    tokenizer: &'t TextTokenizer,
    docs: I,
    layout: Layout,
    context_len: usize,
    buffer: VecDeque<TokenRow>,
    next_seq: u64,
    done: bool,
}

/// Starts packing `docs` for a model whose tokenizer is `tokenizer`; `is_causal` picks the
/// packed layout's separators (EOS for causal models, falling back to BOS; `[CLS]`/`[SEP]` for
/// encoders).
pub fn pack<I>(
    tokenizer: &TextTokenizer,
    is_causal: bool,
    docs: I,
    opts: PackOptions,
) -> Result<Packer<'_, I>>
where
    I: Iterator<Item = (u64, String)>,
{
    if opts.context_len < 2 {
        return Err(Error::InvalidInput {
            reason: format!("context length {} is below 2", opts.context_len),
        });
    }
    let sp = tokenizer.special;
    let layout = match opts.packing {
        Packing::PerDocument => Layout::PerDocument,
        Packing::Packed if is_causal => match sp.eos.or(sp.bos) {
            Some(eos) => Layout::Causal { eos },
            None => {
                return Err(Error::Tokenizer {
                    path: tokenizer.source().to_owned(),
                    reason: "packing needs an EOS or BOS token and this tokenizer has none".into(),
                });
            }
        },
        Packing::Packed => match (sp.cls, sp.sep) {
            (Some(cls), Some(sep)) => Layout::Encoder { cls, sep },
            _ => {
                return Err(Error::Tokenizer {
                    path: tokenizer.source().to_owned(),
                    reason: "packing for an encoder needs [CLS] and [SEP] tokens".into(),
                });
            }
        },
    };
    Ok(Packer {
        tokenizer,
        docs,
        layout,
        context_len: opts.context_len,
        buffer: VecDeque::new(),
        next_seq: 0,
        done: false,
    })
}

fn span(doc: u64, (a, b): (usize, usize)) -> Result<(u32, u32)> {
    let conv = |x: usize| {
        u32::try_from(x).map_err(|_| Error::InvalidInput {
            reason: format!("document {doc} is longer than 4 GiB"),
        })
    };
    Ok((conv(a)?, conv(b)?))
}

fn inserted(doc: u64, pos: u32, token: u32) -> TokenRow {
    TokenRow {
        doc,
        pos,
        token,
        byte_start: 0,
        byte_end: 0,
    }
}

impl<I: Iterator<Item = (u64, String)>> Packer<'_, I> {
    /// Tokenizes the next document into the buffer; false when the documents are exhausted.
    fn feed(&mut self) -> Result<bool> {
        let Some((doc, text)) = self.docs.next() else {
            return Ok(false);
        };
        let enc = self.tokenizer.encode_plain(&text)?;
        let mut pos = 0u32;
        if let Layout::Causal { eos } = self.layout {
            self.buffer.push_back(inserted(doc, 0, eos));
            pos = 1;
        }
        for (&token, &off) in enc.ids.iter().zip(&enc.offsets) {
            let (byte_start, byte_end) = span(doc, off)?;
            self.buffer.push_back(TokenRow {
                doc,
                pos,
                token,
                byte_start,
                byte_end,
            });
            pos = pos.saturating_add(1);
        }
        if let Layout::Encoder { sep, .. } = self.layout {
            self.buffer.push_back(inserted(doc, pos, sep));
        }
        Ok(true)
    }

    fn next_packed(&mut self) -> Result<Option<Window>> {
        let cls = match self.layout {
            Layout::Encoder { cls, .. } => Some(cls),
            _ => None,
        };
        let from_stream = self.context_len - usize::from(cls.is_some());
        while self.buffer.len() < from_stream {
            if !self.feed()? {
                // The last partial window is dropped, as the study did.
                return Ok(None);
            }
        }
        let mut rows = Vec::with_capacity(self.context_len);
        if let Some(cls) = cls {
            let doc = self.buffer.front().map_or(0, |r| r.doc);
            rows.push(inserted(doc, NO_POS, cls));
        }
        rows.extend(self.buffer.drain(..from_stream));
        Ok(Some(self.window(rows)))
    }

    fn next_per_document(&mut self) -> Result<Option<Window>> {
        loop {
            let Some((doc, text)) = self.docs.next() else {
                return Ok(None);
            };
            let enc = self.tokenizer.encode(&text)?;
            if enc.is_empty() {
                continue;
            }
            let mut rows = Vec::with_capacity(enc.len().min(self.context_len));
            for (pos, (&token, &off)) in enc
                .ids
                .iter()
                .zip(&enc.offsets)
                .take(self.context_len)
                .enumerate()
            {
                let (byte_start, byte_end) = span(doc, off)?;
                rows.push(TokenRow {
                    doc,
                    pos: pos as u32,
                    token,
                    byte_start,
                    byte_end,
                });
            }
            return Ok(Some(self.window(rows)));
        }
    }

    fn window(&mut self, rows: Vec<TokenRow>) -> Window {
        let seq = self.next_seq;
        self.next_seq += 1;
        Window { seq, rows }
    }
}

impl<I: Iterator<Item = (u64, String)>> Iterator for Packer<'_, I> {
    type Item = Result<Window>;

    fn next(&mut self) -> Option<Result<Window>> {
        if self.done {
            return None;
        }
        let got = match self.layout {
            Layout::PerDocument => self.next_per_document(),
            _ => self.next_packed(),
        };
        match got {
            Ok(Some(w)) => Some(Ok(w)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Stacks windows into a right-padded batch: `(input_ids, attention_mask)`, both
/// `(batch, max_len)` i64 on the CPU, padding with `pad`.
pub fn to_batch(windows: &[Window], pad: u32) -> Result<(Tensor, Tensor)> {
    let len = windows.iter().map(|w| w.rows.len()).max().unwrap_or(0);
    if len == 0 {
        return Err(Error::InvalidInput {
            reason: "an empty batch of windows".into(),
        });
    }
    let mut ids = Vec::with_capacity(windows.len() * len);
    let mut mask = Vec::with_capacity(windows.len() * len);
    for w in windows {
        ids.extend(w.rows.iter().map(|r| i64::from(r.token)));
        mask.extend(std::iter::repeat_n(1i64, w.rows.len()));
        ids.extend(std::iter::repeat_n(i64::from(pad), len - w.rows.len()));
        mask.extend(std::iter::repeat_n(0i64, len - w.rows.len()));
    }
    let shape = [windows.len() as i64, len as i64];
    Ok((
        Tensor::f_from_slice(&ids)?
            .f_reshape(shape)?
            .f_to_kind(Kind::Int64)?,
        Tensor::f_from_slice(&mask)?.f_reshape(shape)?,
    ))
}

/// The activations of real tokens, in window order: rows `0..lens[b]` of every batch row `b` of
/// `acts` `(batch, seq, d)`, stacked into `(sum(lens), d)`, converted to `kind`, contiguous on
/// the CPU (ready for `Vec::<f32>::try_from` or `copy_data`).
pub fn gather_rows(acts: &Tensor, lens: &[usize], kind: Kind) -> Result<Tensor> {
    let (batch, seq, _) = acts.size3()?;
    if lens.len() as i64 != batch || lens.iter().any(|&l| l as i64 > seq) {
        return Err(Error::InvalidInput {
            reason: format!(
                "window lengths {lens:?} do not fit activations of shape {:?}",
                acts.size()
            ),
        });
    }
    let parts: Vec<Tensor> = lens
        .iter()
        .enumerate()
        .map(|(b, &len)| acts.f_get(b as i64)?.f_narrow(0, 0, len as i64))
        .collect::<Result<_, _>>()?;
    Ok(Tensor::f_cat(&parts, 0)?
        .f_to_kind(kind)?
        .f_to_device(tch::Device::Cpu)?
        .f_contiguous()?)
}
