//! Hook selection, early stopping, splices and the errors around them.

use concord_models::{ComputeDtype, Error, HookKind, HookName, LoadOptions, Model, ModelSource};
use tch::{Kind, Tensor};

use crate::support::{goldens, model};

fn batch(m: &Model) -> (Tensor, Tensor) {
    let a = m
        .tokenizer
        .encode("Now is the winter of our discontent")
        .unwrap();
    let b = m.tokenizer.encode("Made glorious summer").unwrap();
    let len = a.len().max(b.len());
    let row = |ids: &[u32]| {
        let mut v: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        let mut mask = vec![1i64; v.len()];
        v.resize(len, 1);
        mask.resize(len, 0);
        (v, mask)
    };
    let (ra, ma) = row(&a.ids);
    let (rb, mb) = row(&b.ids);
    let ids = Tensor::from_slice(&[ra, rb].concat()).reshape([2, len as i64]);
    let mask = Tensor::from_slice(&[ma, mb].concat()).reshape([2, len as i64]);
    (ids, mask)
}

#[test]
fn resid_post_of_one_block_is_resid_pre_of_the_next() {
    let m = model("tiny-neox");
    let (ids, mask) = batch(&m);
    let hooks = [
        HookName::new(0, HookKind::ResidPost),
        HookName::new(1, HookKind::ResidPre),
    ];
    let cache = m.run_with_cache(&ids, &mask, &hooks).unwrap();
    assert_eq!(cache.len(), 2);
    assert!(cache[&hooks[0]].equal(&cache[&hooks[1]]));
    // Asking only for block 1's input runs one block and gives the same value.
    let only = m.run_with_cache(&ids, &mask, &hooks[1..]).unwrap();
    assert!(only[&hooks[1]].equal(&cache[&hooks[0]]));
}

#[test]
fn out_of_range_and_empty_hooks_are_errors() {
    let m = model("tiny-neox");
    let (ids, mask) = batch(&m);
    let err = m
        .run_with_cache(&ids, &mask, &[HookName::new(2, HookKind::MlpOut)])
        .unwrap_err();
    assert!(
        matches!(err, Error::LayerOutOfRange { n_layers: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("blocks.2.hook_mlp_out"), "{err}");
    assert!(matches!(
        m.run_with_cache(&ids, &mask, &[]).unwrap_err(),
        Error::NoHooks
    ));
    let bad_ids = Tensor::from_slice(&[0i64, 9999]).reshape([1, 2]);
    let err = m.run_with_cache(
        &bad_ids,
        &Tensor::ones([1, 2], (Kind::Int64, tch::Device::Cpu)),
        &[HookName::new(0, HookKind::MlpOut)],
    );
    assert!(err.unwrap_err().to_string().contains("token ids"));
}

#[test]
fn identity_splice_equals_the_clean_forward_and_zero_ablation_raises_loss() {
    for name in ["tiny-neox", "tiny-gpt2"] {
        check_splices(name);
    }
}

fn check_splices(name: &str) {
    let m = model(name);
    let (ids, mask) = batch(&m);
    let clean = m.forward_logits(&ids, &mask).unwrap();
    let hook = HookName::new(1, HookKind::MlpOut);
    let same = m
        .splice(&ids, &mask, hook, &|x: &Tensor| x.shallow_clone())
        .unwrap();
    assert!(same.logits.equal(&clean.logits));
    let zero = m
        .splice(&ids, &mask, hook, &|x: &Tensor| x.zeros_like())
        .unwrap();
    assert!(!zero.logits.equal(&clean.logits));
    assert_eq!(clean.loss.size(), vec![2, ids.size()[1] - 1]);
    // Padding targets carry no loss.
    let last = clean.loss.get(1).get(clean.loss.size()[1] - 1);
    assert_eq!(f64::try_from(last).unwrap(), 0.0);
    let wrong = m.splice(&ids, &mask, hook, &|x: &Tensor| x.narrow(2, 0, 3));
    assert!(wrong.unwrap_err().to_string().contains("replacement"));
}

#[test]
fn splice_needs_a_causal_model() {
    let m = model("minilm-l6");
    let ids = Tensor::from_slice(&[101i64, 102]).reshape([1, 2]);
    let mask = ids.ones_like();
    let err = m.forward_logits(&ids, &mask).unwrap_err();
    assert!(matches!(err, Error::NotCausal { .. }), "{err}");
}

#[test]
fn bf16_compute_stays_close_to_f32() {
    for name in ["tiny-neox", "tiny-gpt2"] {
        check_bf16(name);
    }
}

fn check_bf16(name: &str) {
    let source = ModelSource::HfFolder(goldens().join(name));
    let opts = LoadOptions {
        dtype: ComputeDtype::Bf16,
        ..Default::default()
    };
    let m16 = Model::load(&source, opts).unwrap();
    let m32 = model(name);
    let (ids, mask) = batch(&m32);
    let hook = [HookName::new(1, HookKind::ResidPost)];
    let a = m16
        .run_with_cache(&ids, &mask, &hook)
        .unwrap()
        .remove(&hook[0])
        .unwrap();
    assert_eq!(a.kind(), Kind::BFloat16);
    let b = m32
        .run_with_cache(&ids, &mask, &hook)
        .unwrap()
        .remove(&hook[0])
        .unwrap();
    let a = a.to_kind(Kind::Float);
    let rel = f64::try_from((&a - &b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap();
    assert!(rel < 0.05, "{name}: bf16 relative error {rel}");
}

#[test]
fn learned_positions_bound_the_context_of_gpt2_not_of_rotary_models() {
    let gpt2 = model("tiny-gpt2");
    assert_eq!(gpt2.info.max_positions, 128);
    gpt2.check_context_len(128).unwrap();
    let err = gpt2.check_context_len(129).unwrap_err().to_string();
    assert!(
        err.contains("129") && err.contains("128 positions"),
        "{err}"
    );
    let ids = Tensor::zeros([1, 129], (Kind::Int64, tch::Device::Cpu));
    let err = gpt2
        .run_with_cache(
            &ids,
            &ids.ones_like(),
            &[HookName::new(0, HookKind::ResidPre)],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("sequence length 129"), "{err}");
    drop(gpt2);
    // NeoX's rotary positions have no table to run off the end of.
    model("tiny-neox").check_context_len(129).unwrap();
}

#[test]
fn left_padding_uses_an_explicit_mask_without_nans() {
    let m = model("tiny-neox");
    let ids = Tensor::from_slice(&[1i64, 1, 40, 41, 42, 43, 44, 45]).reshape([2, 4]);
    let mask = Tensor::from_slice(&[0i64, 0, 1, 1, 1, 1, 1, 1]).reshape([2, 4]);
    let hook = [HookName::new(1, HookKind::ResidPost)];
    let out = m
        .run_with_cache(&ids, &mask, &hook)
        .unwrap()
        .remove(&hook[0])
        .unwrap();
    assert!(!bool::try_from(out.isnan().any()).unwrap());
}
