//! bf16 products against f32, and the input scale folded into the saved SAE.

use concord_core::sae::Sae;
use concord_train::{
    Arch, Batch, ComputeDtype, SaeModel, SaeSpec, TrainOptions, Trainer, evaluate, input_scale_for,
};

use crate::util::synthetic;

const D: usize = 64;
const BATCH: usize = 256;
const STEPS: usize = 300;
/// The data's scale, far from the unit scale the normalisation brings it to.
const SCALE: f32 = 3.7;

fn data(seed: u64, rows: usize) -> Vec<f32> {
    synthetic(seed, rows, D)
        .into_iter()
        .map(|v| v * SCALE)
        .collect()
}

fn spec(arch: Arch, rows: &[f32]) -> SaeSpec {
    let mut s = SaeSpec::new(arch, 0, "blocks.1.hook_mlp_out", "synthetic", D, 4);
    if arch.uses_k() {
        s.hyper.k = Some(16);
    } else if arch.uses_l1() {
        s.hyper.l1 = Some(0.01);
    }
    s.hyper.lr = 3e-3;
    let mean_sq = rows.iter().map(|&v| f64::from(v * v)).sum::<f64>() / (rows.len() / D) as f64;
    s.input_scale = input_scale_for(D, mean_sq);
    s
}

/// Trains one SAE `STEPS` steps and returns it in SAELens layout.
fn trained(spec: SaeSpec, compute_dtype: ComputeDtype, train: &[f32]) -> Sae {
    let mut t = Trainer::new(
        vec![spec],
        TrainOptions {
            compute_dtype,
            // The dense products are what bf16 changes.
            sparse_max_density: 0.0,
            total_steps: Some(STEPS as u64),
            ..TrainOptions::default()
        },
    )
    .unwrap();
    for s in 0..STEPS {
        let start = (s * BATCH * D) % (train.len() - BATCH * D);
        t.step(&[Batch {
            stream: 0,
            width: D,
            rows: &train[start..start + BATCH * D],
        }])
        .unwrap();
    }
    t.sae(0).unwrap()
}

fn eval(sae: &Sae, rows: &[f32]) -> concord_train::EvalReport {
    let model = SaeModel::from_sae(sae, tch::Device::Cpu).unwrap();
    evaluate(&model, rows.chunks(BATCH * D)).unwrap()
}

#[test]
fn bf16_products_train_as_f32_does() {
    let train = data(1, 16_384);
    let held_out = data(2, 4096);
    for arch in [Arch::ReluL1, Arch::TopK] {
        let f32_sae = trained(spec(arch, &train), ComputeDtype::F32, &train);
        let bf16_sae = trained(spec(arch, &train), ComputeDtype::Bf16, &train);
        let (a, b) = (eval(&f32_sae, &held_out), eval(&bf16_sae, &held_out));
        assert!(a.fvu < 0.75, "{arch}: f32 FVU {} (not trained)", a.fvu);
        assert!(
            (b.fvu - a.fvu).abs() <= 0.02 * a.fvu,
            "{arch}: FVU bf16 {} against f32 {}",
            b.fvu,
            a.fvu
        );
        assert!(
            (b.l0 - a.l0).abs() <= 0.05 * a.l0,
            "{arch}: L0 bf16 {} against f32 {}",
            b.l0,
            a.l0
        );
        // The weights moved differently: bf16 is not silently f32.
        assert_ne!(f32_sae.weights.w_enc, bf16_sae.weights.w_enc, "{arch}");
    }
}

#[test]
fn the_input_scale_is_folded_into_the_saved_sae() {
    let train = data(3, 8192);
    for arch in [Arch::ReluL1, Arch::TopK, Arch::JumpRelu] {
        let spec = spec(arch, &train);
        let s = spec.input_scale;
        assert!((s - 1.0).abs() > 0.5, "the data is off the unit scale: {s}");
        let folded = trained(spec, ComputeDtype::F32, &train);
        assert_eq!(
            folded.cfg.extra.get("concord_input_scale"),
            Some(&serde_json::json!(s))
        );
        // The SAE as trained, on the scaled rows: biases and thresholds times the scale.
        let mut unfolded = folded.clone();
        let w = &mut unfolded.weights;
        for v in w.b_enc.iter_mut().chain(w.b_dec.iter_mut()) {
            *v = (f64::from(*v) * s) as f32;
        }
        if let Some(th) = &mut w.threshold {
            th.iter_mut().for_each(|v| *v = (f64::from(*v) * s) as f32);
        }
        let scaled: Vec<f32> = train.iter().map(|&v| (f64::from(v) * s) as f32).collect();
        let (raw, inside) = (eval(&folded, &train), eval(&unfolded, &scaled));
        assert!(
            (raw.fvu - inside.fvu).abs() < 1e-4 && (raw.l0 - inside.l0).abs() < 1e-2,
            "{arch}: folded on raw rows FVU {} L0 {}, as trained on scaled rows FVU {} L0 {}",
            raw.fvu,
            raw.l0,
            inside.fvu,
            inside.l0
        );
        assert!(raw.fvu < 0.9, "{arch}: FVU {} (not trained)", raw.fvu);
    }
}
