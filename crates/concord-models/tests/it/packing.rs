//! Packing documents into windows: the study's packed layout, the encoder layout, per document.

use concord_models::{
    HookKind, HookName, Model, NO_POS, PackOptions, Packing, TokenRow, Window, gather_rows, pack,
    to_batch,
};

use crate::support::model;

const DOCS: [&str; 4] = [
    "To be, or not to be",
    "",
    "that is the question: h\u{e9}llo",
    "Whether 'tis nobler",
];

fn docs() -> impl Iterator<Item = (u64, String)> {
    DOCS.iter()
        .enumerate()
        .map(|(i, t)| (i as u64 + 10, (*t).to_owned()))
}

fn windows(m: &Model, context_len: usize, packing: Packing) -> Vec<Window> {
    pack(
        &m.tokenizer,
        m.info.is_causal,
        docs(),
        PackOptions {
            context_len,
            packing,
        },
    )
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn text_of(row: &TokenRow) -> &'static str {
    let doc = DOCS[(row.doc - 10) as usize];
    &doc[row.byte_start as usize..row.byte_end as usize]
}

#[test]
fn packed_causal_stream_is_eos_joined_and_drops_the_last_partial_window() {
    let m = model("tiny-neox");
    let eos = m.info.eos.unwrap();
    let mut stream = Vec::new();
    for (doc, text) in docs() {
        stream.push((doc, 0u32, eos));
        let enc = m.tokenizer.encode_plain(&text).unwrap();
        stream.extend(
            enc.ids
                .iter()
                .enumerate()
                .map(|(i, &t)| (doc, i as u32 + 1, t)),
        );
    }
    let ws = windows(&m, 7, Packing::Packed);
    assert_eq!(ws.len(), stream.len() / 7);
    let flat: Vec<(u64, u32, u32)> = ws
        .iter()
        .flat_map(|w| w.rows.iter().map(|r| (r.doc, r.pos, r.token)))
        .collect();
    assert_eq!(flat, stream[..flat.len()]);
    for (i, w) in ws.iter().enumerate() {
        assert_eq!((w.seq, w.rows.len()), (i as u64, 7));
    }
    // Spans: separators are empty; the text tokens of a document tile its text.
    let mut rebuilt = vec![String::new(); DOCS.len()];
    for r in ws.iter().flat_map(|w| &w.rows) {
        if r.pos == 0 {
            assert_eq!((r.token, r.byte_start, r.byte_end), (eos, 0, 0));
        } else {
            rebuilt[(r.doc - 10) as usize].push_str(text_of(r));
        }
    }
    assert_eq!(rebuilt[0], DOCS[0]);
}

#[test]
fn packed_encoder_windows_start_with_cls_and_end_documents_with_sep() {
    let m = model("minilm-l6");
    let (cls, sep) = (m.info.cls.unwrap(), m.info.sep.unwrap());
    let ws = windows(&m, 6, Packing::Packed);
    assert!(!ws.is_empty());
    for w in &ws {
        assert_eq!(w.rows.len(), 6);
        assert_eq!((w.rows[0].token, w.rows[0].pos), (cls, NO_POS));
        assert!(w.rows[1..].iter().all(|r| r.token != cls));
    }
    let rows: Vec<&TokenRow> = ws.iter().flat_map(|w| &w.rows[1..]).collect();
    // The empty document 11 is just its [SEP], at position 0.
    let empty: Vec<_> = rows
        .iter()
        .filter(|r| r.doc == 11)
        .map(|r| (r.pos, r.token))
        .collect();
    assert_eq!(empty, vec![(0, sep)]);
    let first: Vec<_> = rows
        .iter()
        .filter(|r| r.doc == 10 && r.token != sep)
        .map(|r| text_of(r))
        .collect();
    assert_eq!(
        first.concat().to_lowercase(),
        DOCS[0].to_lowercase().replace(' ', "")
    );
}

#[test]
fn per_document_windows_are_the_tokenizer_output_truncated() {
    let m = model("minilm-l6");
    let ws = windows(&m, 8, Packing::PerDocument);
    assert_eq!(ws.len(), DOCS.len());
    for (w, text) in ws.iter().zip(DOCS) {
        let enc = m.tokenizer.encode(text).unwrap();
        let n = enc.len().min(8);
        let got: Vec<u32> = w.rows.iter().map(|r| r.token).collect();
        assert_eq!(got, enc.ids[..n]);
        assert!(w.rows.iter().enumerate().all(|(i, r)| r.pos == i as u32));
    }
    // A causal tokenizer gives an empty document no tokens, hence no window.
    assert_eq!(
        windows(&model("tiny-neox"), 8, Packing::PerDocument).len(),
        DOCS.len() - 1
    );
}

#[test]
fn batches_are_right_padded() {
    let ws = windows(&model("minilm-l6"), 8, Packing::PerDocument);
    let (ids, mask) = to_batch(&ws, 0).unwrap();
    assert_eq!(ids.size(), vec![4, 8]);
    let lens: Vec<i64> = (0..4)
        .map(|b| i64::try_from(mask.get(b).sum(tch::Kind::Int64)).unwrap())
        .collect();
    assert_eq!(
        lens,
        ws.iter().map(|w| w.rows.len() as i64).collect::<Vec<_>>()
    );
    assert!(
        pack(
            &model("minilm-l6").tokenizer,
            false,
            docs(),
            PackOptions {
                context_len: 1,
                packing: Packing::Packed
            }
        )
        .is_err()
    );
}

#[test]
fn gathered_rows_are_the_real_tokens_in_window_order() {
    let m = model("tiny-neox");
    let ws = windows(&m, 8, Packing::PerDocument);
    let (ids, mask) = to_batch(&ws, 1).unwrap();
    let hook = HookName::new(0, HookKind::ResidPre);
    let acts = m
        .run_with_cache(&ids, &mask, &[hook])
        .unwrap()
        .remove(&hook)
        .unwrap();
    let lens: Vec<usize> = ws.iter().map(|w| w.rows.len()).collect();
    let rows = gather_rows(&acts, &lens, tch::Kind::Float).unwrap();
    assert_eq!(rows.size(), vec![lens.iter().sum::<usize>() as i64, 32]);
    // The second window's first row follows the first window's last real row.
    assert!(rows.get(lens[0] as i64).equal(&acts.get(1).get(0)));
    assert!(gather_rows(&acts, &[99], tch::Kind::Float).is_err());
}
