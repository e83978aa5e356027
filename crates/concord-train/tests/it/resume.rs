//! Checkpoints: a run killed and resumed ends bitwise equal to an uninterrupted one (every
//! architecture; JumpReLU's thresholds and their Adam moments included).

use concord_train::{Arch, Batch, SaeSpec, TrainOptions, Trainer};

use crate::util::{curve_steps, synthetic, tempdir};

const D: usize = 12;
const BATCH: usize = 32;

fn specs() -> Vec<SaeSpec> {
    let mut topk = SaeSpec::new(Arch::TopK, 0, "blocks.0.hook_resid_pre", "synthetic", D, 4);
    topk.hyper.k = Some(3);
    topk.hyper.dead_tokens = 2 * BATCH as u64;
    let mut btk = SaeSpec::new(
        Arch::BatchTopK,
        1,
        "blocks.1.hook_resid_pre",
        "synthetic",
        D,
        2,
    );
    btk.hyper.k = Some(3);
    btk.name = btk.default_name();
    // A kernel window wide enough that the thresholds (and their Adam moments) move.
    let mut jump = SaeSpec::new(
        Arch::JumpRelu,
        0,
        "blocks.0.hook_resid_pre",
        "synthetic",
        D,
        2,
    );
    jump.hyper.bandwidth = Some(0.1);
    jump.hyper.lr = 1e-2;
    vec![
        SaeSpec::new(
            Arch::ReluL1Faithful,
            0,
            "blocks.0.hook_resid_pre",
            "synthetic",
            D,
            2,
        ),
        SaeSpec::new(
            Arch::ReluL1,
            1,
            "blocks.1.hook_resid_pre",
            "synthetic",
            D,
            2,
        ),
        topk,
        btk,
        jump,
    ]
}

fn step(t: &mut Trainer, a: &[f32], b: &[f32], s: usize) {
    let n = BATCH * D;
    let (ra, rb) = (&a[s * n..(s + 1) * n], &b[s * n..(s + 1) * n]);
    t.step(&[
        Batch {
            stream: 0,
            width: D,
            rows: ra,
        },
        Batch {
            stream: 1,
            width: D,
            rows: rb,
        },
    ])
    .unwrap();
}

#[test]
fn resume_is_bitwise_identical() {
    let (a, b) = (synthetic(21, 12 * BATCH, D), synthetic(22, 12 * BATCH, D));
    let opts = TrainOptions {
        total_steps: Some(12),
        curve_every: 1,
        ..TrainOptions::default()
    };
    let mut full = Trainer::new(specs(), opts.clone()).unwrap();
    for s in 0..12 {
        step(&mut full, &a, &b, s);
    }

    let ckpt = tempdir();
    let dir = ckpt.path().join("ckpt");
    let opts = TrainOptions {
        checkpoint_dir: Some(dir.clone()),
        checkpoint_every: 5,
        ..opts
    };
    let mut first = Trainer::new(specs(), opts).unwrap();
    for s in 0..7 {
        step(&mut first, &a, &b, s);
    }
    // "Killed" after step 7: the checkpoint holds step 5.
    drop(first);
    let mut resumed = Trainer::resume(&dir).unwrap();
    assert_eq!(resumed.steps_done(), 5);
    for s in 5..12 {
        step(&mut resumed, &a, &b, s);
    }
    for i in 0..specs().len() {
        let (x, y) = (full.sae(i).unwrap(), resumed.sae(i).unwrap());
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&x.weights.w_enc),
            bits(&y.weights.w_enc),
            "SAE {i} W_enc"
        );
        assert_eq!(
            bits(&x.weights.w_dec),
            bits(&y.weights.w_dec),
            "SAE {i} W_dec"
        );
        assert_eq!(
            bits(&x.weights.b_enc),
            bits(&y.weights.b_enc),
            "SAE {i} b_enc"
        );
        assert_eq!(
            bits(&x.weights.b_dec),
            bits(&y.weights.b_dec),
            "SAE {i} b_dec"
        );
        assert_eq!(
            x.weights.threshold.as_deref().map(bits),
            y.weights.threshold.as_deref().map(bits),
            "SAE {i} threshold"
        );
        assert_eq!(x.cfg, y.cfg, "SAE {i} cfg");
    }
    let out_a = tempdir();
    let out_b = tempdir();
    full.save(out_a.path()).unwrap();
    resumed.save(out_b.path()).unwrap();
    // Every file byte for byte: the curve's floats went through `trainer.json` and back.
    for spec in specs() {
        for file in ["curve.jsonl", "metrics.json", "cfg.json"] {
            let read = |p: &std::path::Path| std::fs::read(p.join(&spec.name).join(file)).unwrap();
            assert!(
                read(out_a.path()) == read(out_b.path()),
                "{} {file} differs after a resume",
                spec.name
            );
        }
    }
}

/// `curve.jsonl` ends with the last step, and `metrics.json` holds a `threshold` only where
/// it has one number (BatchTopK's).
#[test]
fn curve_ends_at_the_last_step_and_metrics_hold_no_null_threshold() {
    let (a, b) = (synthetic(23, 12 * BATCH, D), synthetic(24, 12 * BATCH, D));
    let opts = TrainOptions {
        total_steps: Some(12),
        curve_every: 10,
        ..TrainOptions::default()
    };
    let mut t = Trainer::new(specs(), opts).unwrap();
    for s in 0..12 {
        step(&mut t, &a, &b, s);
    }
    let out = tempdir();
    t.save(out.path()).unwrap();
    for spec in specs() {
        let dir = out.path().join(&spec.name);
        let steps = curve_steps(&dir);
        assert_eq!(steps, [1, 10, 12], "{}", spec.name);
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap();
        match spec.arch {
            Arch::BatchTopK => assert!(metrics["threshold"].as_f64().unwrap() > 0.0),
            _ => assert!(
                metrics.get("threshold").is_none(),
                "{}: {metrics}",
                spec.name
            ),
        }
    }
}
