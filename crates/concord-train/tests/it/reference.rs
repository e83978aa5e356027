//! `relu-l1-faithful` against the committed PyTorch reference (`make_reference.py`): same
//! data order, same init, losses step by step and final FVU and L0.

use concord_core::SaeWeights;
use concord_train::{Arch, Batch, SaeModel, SaeSpec, TrainOptions, Trainer, evaluate};

use crate::util::{read_safetensors, reference_dir};

#[test]
fn faithful_matches_pytorch_reference() {
    let dir = reference_dir();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let sample = read_safetensors(&dir.join("sample.safetensors"));
    let init = read_safetensors(&dir.join("init.safetensors"));
    let get = |set: &[(String, Vec<usize>, Vec<f64>)], name: &str| {
        set.iter().find(|t| t.0 == name).cloned().unwrap()
    };
    let (_, acts_shape, acts) = get(&sample, "acts");
    let (_, order_shape, order) = get(&sample, "order");
    let (rows, d) = (acts_shape[0], acts_shape[1]);
    let n = reference["n"].as_u64().unwrap() as usize;
    let acts: Vec<f32> = acts.iter().map(|&v| v as f32).collect();

    let mut spec = SaeSpec::new(
        Arch::ReluL1Faithful,
        0,
        "blocks.0.hook_mlp_out",
        "synthetic",
        d,
        n / d,
    );
    spec.hyper.l1 = reference["l1"].as_f64();
    spec.hyper.lr = reference["lr"].as_f64().unwrap();
    let mut trainer = Trainer::new(
        vec![spec],
        TrainOptions {
            curve_every: 1,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    // The study's (d_sae, d_in) encoder is our W_enc transposed.
    let (_, _, w_enc_rows) = get(&init, "W_enc");
    let (_, _, w_dec) = get(&init, "W_dec");
    let mut w_enc = vec![0.0f32; n * d];
    for j in 0..n {
        for i in 0..d {
            w_enc[i * n + j] = w_enc_rows[j * d + i] as f32;
        }
    }
    let weights = SaeWeights {
        d_in: d,
        d_sae: n,
        w_enc,
        b_enc: vec![0.0; n],
        w_dec: w_dec.iter().map(|&v| v as f32).collect(),
        b_dec: vec![0.0; d],
        threshold: None,
    };
    trainer.set_weights(0, &weights).unwrap();

    let steps = reference["steps"].as_array().unwrap();
    let batch = order_shape[1];
    assert_eq!(order_shape[0], steps.len());
    let mut xs = vec![0.0f32; batch * d];
    for (s, want) in steps.iter().enumerate() {
        for (b, &row) in order[s * batch..(s + 1) * batch].iter().enumerate() {
            let row = row as usize;
            xs[b * d..(b + 1) * d].copy_from_slice(&acts[row * d..(row + 1) * d]);
        }
        let got = trainer
            .step(&[Batch {
                stream: 0,
                width: d,
                rows: &xs,
            }])
            .unwrap();
        let got = &got.saes[0];
        if s < 20 {
            let want_loss = want["loss"].as_f64().unwrap();
            let rel = (got.loss - want_loss).abs() / want_loss.abs();
            assert!(
                rel <= 1e-4,
                "step {s}: loss {} vs reference {want_loss} (rel {rel:e})",
                got.loss
            );
            // An activation within rounding of zero may flip: allow one per batch.
            let want_l0 = want["l0"].as_f64().unwrap();
            assert!(
                (got.l0 - want_l0).abs() <= 1.0 / batch as f64 + 1e-9,
                "step {s}: L0 {} vs {want_l0}",
                got.l0
            );
        }
    }
    let sae = trainer.sae(0).unwrap();
    assert_eq!(sae.cfg.training_tokens, Some((steps.len() * batch) as u64));
    let model = SaeModel::from_sae(&sae, tch::Device::Cpu).unwrap();
    let report = evaluate(&model, acts.chunks(512)).unwrap();
    assert_eq!(report.tokens, rows as u64);
    let fin = &reference["final"];
    for (what, got, want) in [
        ("fvu", report.fvu, &fin["fvu"]),
        ("l0", report.l0, &fin["l0"]),
    ] {
        let want = want.as_f64().unwrap();
        assert!(
            (got - want).abs() <= 0.05 * want,
            "final {what}: {got} vs reference {want}"
        );
    }
}
