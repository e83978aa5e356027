//! Token ids, byte offsets and every hook kind against transformers' goldens
//! (`tests/goldens/make_goldens.py`).

use concord_models::{HookKind, HookName};
use serde_json::Value;
use tch::{Kind, Tensor};

use crate::support::{goldens, model};

/// Activations must agree within this, per document: max-abs error / max-abs value.
const REL_TOL: f64 = 1e-4;

struct Golden {
    tensors: Vec<(String, Tensor)>,
    json: Value,
}

fn golden(name: &str) -> Golden {
    let dir = goldens();
    let tensors = Tensor::read_safetensors(dir.join(format!("{name}.safetensors"))).unwrap();
    let json =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    Golden { tensors, json }
}

impl Golden {
    fn get(&self, key: &str) -> &Tensor {
        &self
            .tensors
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("golden lacks {key}"))
            .1
    }
}

fn check_tokens(name: &str) {
    let m = model(name);
    let g = golden(name);
    for t in g.json["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let enc = m.tokenizer.encode(text).unwrap();
        let ids: Vec<u32> = t["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(enc.ids, ids, "{name}: ids of {text:?}");
        let special: Vec<bool> = t["special_tokens_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64() == Some(1))
            .collect();
        assert_eq!(enc.special, special, "{name}: special tokens of {text:?}");
        let offsets: Vec<(usize, usize)> = t["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_u64().unwrap() as usize,
                    p[1].as_u64().unwrap() as usize,
                )
            })
            .collect();
        for (i, (&got, &want)) in enc.offsets.iter().zip(&offsets).enumerate() {
            if enc.special[i] {
                assert_eq!(got, (0, 0));
                continue;
            }
            // Python reports character offsets (converted to bytes by the script); a byte-level
            // token that ends inside a multi-byte character has no character boundary there, so
            // Python widens it to the whole character. Byte offsets must lie within.
            assert!(
                got == want || (want.0 <= got.0 && got.1 <= want.1 && got.0 < got.1),
                "{name}: token {i} of {text:?}: bytes {got:?}, transformers {want:?}"
            );
            assert!(
                text.get(want.0..want.1).is_some(),
                "golden spans are char boundaries"
            );
        }
    }
}

/// Per-document relative error over valid positions. `got`, `want`: `(batch, seq, d)`.
fn rel_err(got: &Tensor, want: &Tensor, mask: &Tensor, b: i64) -> f64 {
    let valid = mask.get(b).ne(0);
    let n = i64::try_from(valid.sum(Kind::Int64)).unwrap();
    let g = got.get(b).narrow(0, 0, n).to_kind(Kind::Double);
    let w = want.get(b).narrow(0, 0, n).to_kind(Kind::Double);
    let scale = f64::try_from(w.abs().max()).unwrap().max(1e-12);
    f64::try_from((g - &w).abs().max()).unwrap() / scale
}

fn check_activations(name: &str) {
    let m = model(name);
    let g = golden(name);
    let ids = g.get("input_ids");
    let mask = g.get("attention_mask");
    let cols = g.json["cols"].as_i64().unwrap();
    let hooks: Vec<HookName> = g
        .tensors
        .iter()
        .filter(|(k, _)| k.starts_with("blocks."))
        .map(|(k, _)| k.parse().unwrap())
        .collect();
    assert!(
        hooks.len() >= 10,
        "{name}: golden has {} hooks",
        hooks.len()
    );
    let cache = m.run_with_cache(ids, mask, &hooks).unwrap();
    let batch = ids.size()[0];
    for hook in &hooks {
        let got = &cache[hook];
        assert_eq!(
            got.size()[2] as usize,
            m.info.hook_width(*hook),
            "{name} {hook} width"
        );
        let want = g.get(&hook.to_string());
        let got = got.narrow(2, 0, want.size()[2].min(cols));
        for b in 0..batch {
            let err = rel_err(&got, want, mask, b);
            assert!(
                err <= REL_TOL,
                "{name} {hook} doc {b}: relative error {err:.2e}"
            );
        }
    }
    // The comparison is sensitive: two different hooks of the same block do not pass it.
    let (pre, post) = (
        HookName::new(0, HookKind::ResidPre),
        HookName::new(0, HookKind::ResidPost),
    );
    let want = g.get(&post.to_string());
    let wrong = cache[&pre].narrow(2, 0, want.size()[2]);
    assert!(rel_err(&wrong, want, mask, 0) > REL_TOL);
    if m.info.is_causal {
        let out = m.forward_logits(ids, mask).unwrap();
        let logits = out.logits.narrow(2, 0, cols);
        for b in 0..batch {
            let err = rel_err(&logits, g.get("logits"), mask, b);
            assert!(
                err <= REL_TOL,
                "{name} logits doc {b}: relative error {err:.2e}"
            );
        }
        let valid = mask.narrow(1, 1, mask.size()[1] - 1).to_kind(Kind::Float);
        let want = g.get("loss") * &valid;
        let diff = f64::try_from((&out.loss - &want).abs().max()).unwrap();
        assert!(diff < 1e-3, "{name} per-token loss differs by {diff}");
    }
}

#[test]
fn smollm2_tokens_match_transformers_gguf_tokenizer() {
    check_tokens("smollm2-135m");
}

#[test]
fn minilm_tokens_match_transformers() {
    check_tokens("minilm-l6");
}

#[test]
fn tiny_neox_tokens_match_transformers() {
    check_tokens("tiny-neox");
}

#[test]
fn tiny_gpt2_tokens_match_transformers() {
    check_tokens("tiny-gpt2");
}

#[test]
fn smollm2_hooks_match_transformers() {
    check_activations("smollm2-135m");
}

#[test]
fn minilm_hooks_match_transformers() {
    check_activations("minilm-l6");
}

#[test]
fn tiny_neox_parallel_residual_hooks_match_transformers() {
    check_activations("tiny-neox");
}

#[test]
fn tiny_neox_sequential_residual_hooks_match_transformers() {
    check_activations("tiny-neox-seq");
}

#[test]
fn tiny_gpt2_hooks_match_transformers() {
    check_activations("tiny-gpt2");
}
