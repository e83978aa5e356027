//! Architecture properties: TopK and BatchTopK sparsity, unit-norm decoders, AuxK revival,
//! training progress, the one-pass grid, and the folders written.

use concord_core::sae::Sae;
use concord_train::{Arch, Batch, SaeModel, SaeSpec, TrainOptions, Trainer, evaluate};

use crate::util::{curve_steps, synthetic, tempdir};

const D: usize = 16;
const BATCH: usize = 64;

fn spec(arch: Arch, ratio: usize, seed: u64) -> SaeSpec {
    let mut s = SaeSpec::new(arch, 0, "blocks.1.hook_resid_post", "synthetic", D, ratio);
    s.init_seed = seed;
    if arch.uses_k() {
        s.hyper.k = Some(4);
        s.hyper.lr = 3e-3;
    }
    s.name = s.default_name();
    s
}

fn train(trainer: &mut Trainer, data: &[f32], steps: usize) -> Vec<concord_train::StepStats> {
    (0..steps)
        .map(|s| {
            let start = (s * BATCH * D) % data.len();
            let rows = &data[start..start + BATCH * D];
            trainer
                .step(&[Batch {
                    stream: 0,
                    width: D,
                    rows,
                }])
                .unwrap()
        })
        .collect()
}

#[test]
fn topk_keeps_exactly_k_and_batchtopk_k_on_average() {
    // Dense GEMMs and the sparse kernels.
    for sparse in [0.0, 1.0] {
        topk_case(sparse);
    }
}

fn topk_case(sparse_max_density: f64) {
    let data = synthetic(7, 1024, D);
    let mut t = Trainer::new(
        vec![spec(Arch::TopK, 4, 0), spec(Arch::BatchTopK, 4, 0)],
        TrainOptions {
            sparse_max_density,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    for stats in train(&mut t, &data, 30) {
        assert_eq!(stats.saes[0].l0, 4.0, "topk step {}", stats.step);
        assert!(
            (stats.saes[1].l0 - 4.0).abs() < 1e-9,
            "batchtopk step {}: {}",
            stats.step,
            stats.saes[1].l0
        );
    }
    // BatchTopK saves a positive inference threshold.
    let th = t.sae(1).unwrap().weights.threshold.unwrap();
    assert!(th.iter().all(|&v| v > 0.0 && v == th[0]), "{:?}", &th[..4]);
}

#[test]
fn decoders_are_unit_norm_where_constrained_and_stored_normalised() {
    let data = synthetic(8, 1024, D);
    let specs = vec![
        spec(Arch::ReluL1, 2, 0),
        spec(Arch::ReluL1Faithful, 2, 0),
        spec(Arch::TopK, 2, 0),
        spec(Arch::JumpRelu, 2, 0),
    ];
    let mut t = Trainer::new(
        specs,
        TrainOptions {
            total_steps: Some(20),
            ..TrainOptions::default()
        },
    )
    .unwrap();
    train(&mut t, &data, 20);
    for i in 0..4 {
        let sae = t.sae(i).unwrap();
        for (r, row) in sae.weights.w_dec.chunks_exact(D).enumerate() {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "SAE {i} row {r}: norm {norm}");
        }
    }
}

#[test]
fn every_architecture_learns() {
    let data = synthetic(9, 2048, D);
    let specs: Vec<_> = Arch::ALL.into_iter().map(|a| spec(a, 4, 1)).collect();
    let mut t = Trainer::new(
        specs,
        TrainOptions {
            total_steps: Some(120),
            ..TrainOptions::default()
        },
    )
    .unwrap();
    let stats = train(&mut t, &data, 120);
    for (i, a) in Arch::ALL.into_iter().enumerate() {
        let first = stats[0].saes[i].mse;
        let last = stats[119].saes[i].mse;
        assert!(last < 0.5 * first, "{a}: mse {first} -> {last}");
    }
}

#[test]
fn auxk_trains_dead_features_and_only_auxk_does() {
    // Features 0..8 have a zero encoder column and a small positive bias: active but never in
    // the top k = 56, which the other 56 features (bias 10) fill on every row, so exactly
    // features 0..8 are dead and only AuxK can give them a gradient.
    let data = synthetic(10, 1024, D);
    let mut dead_rows = Vec::new();
    for alpha in [0.0, 1.0 / 32.0] {
        let mut s = spec(Arch::TopK, 4, 0);
        s.hyper.auxk_alpha = alpha;
        s.hyper.k = Some(56);
        s.hyper.dead_tokens = BATCH as u64;
        let mut t = Trainer::new(vec![s.clone()], TrainOptions::default()).unwrap();
        let mut w = concord_train::init_weights(&s);
        for j in 0..s.d_sae {
            w.b_enc[j] = if j < 8 { 0.01 } else { 10.0 };
            if j < 8 {
                for i in 0..D {
                    w.w_enc[i * s.d_sae + j] = 0.0;
                }
            }
        }
        t.set_weights(0, &w).unwrap();
        let stats = train(&mut t, &data, 10);
        assert_eq!(stats[9].saes[0].dead_fraction, 8.0 / 64.0);
        let after = t.sae(0).unwrap().weights;
        // Renormalisation moves rows by rounding only; a gradient step moves them by ~lr.
        let moved = (0..8 * D).any(|i| (after.w_dec[i] - w.w_dec[i]).abs() > 1e-4);
        dead_rows.push(moved);
    }
    assert_eq!(
        dead_rows,
        vec![false, true],
        "dead decoder rows moved (without AuxK, with AuxK)"
    );
}

#[test]
fn grid_of_two_streams_writes_saelens_folders() {
    let a = synthetic(11, 512, D);
    let b = synthetic(12, 512, 8);
    let mut s2 = SaeSpec::new(
        Arch::ReluL1Faithful,
        1,
        "blocks.2.hook_mlp_out",
        "synthetic",
        8,
        2,
    );
    s2.data_seed = 5;
    s2.name = s2.default_name();
    let specs = vec![
        spec(Arch::ReluL1Faithful, 2, 0),
        spec(Arch::ReluL1Faithful, 2, 1),
        s2,
    ];
    let mut t = Trainer::new(
        specs,
        TrainOptions {
            curve_every: 2,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    for s in 0..4 {
        let ra = &a[s * BATCH * D..(s + 1) * BATCH * D];
        let rb = &b[s * 32 * 8..(s + 1) * 32 * 8];
        let stats = t
            .step(&[
                Batch {
                    stream: 1,
                    width: 8,
                    rows: rb,
                },
                Batch {
                    stream: 0,
                    width: D,
                    rows: ra,
                },
            ])
            .unwrap();
        assert_eq!(stats.rows, (BATCH + 32) as u64);
        assert_eq!(stats.saes.len(), 3);
    }
    let out = tempdir();
    let dirs = t.save(out.path()).unwrap();
    assert_eq!(
        dirs[2],
        out.path()
            .join("blocks.2.hook_mlp_out/relu-l1-faithful-r2-i0-d5")
    );
    let sae = Sae::load(&dirs[2]).unwrap();
    let cfg = &sae.cfg;
    assert_eq!(
        (cfg.d_in, cfg.d_sae, cfg.architecture.as_str()),
        (8, 16, "standard")
    );
    assert_eq!(
        cfg.concord_architecture.as_deref(),
        Some("relu-l1-faithful")
    );
    assert_eq!(
        (cfg.init_seed, cfg.data_seed, cfg.training_tokens),
        (Some(0), Some(5), Some(128))
    );
    assert_eq!(
        (cfg.l1_coefficient, cfg.k, cfg.apply_b_dec_to_input),
        (Some(8e-4), None, Some(true))
    );
    assert_eq!(cfg.hook_name, "blocks.2.hook_mlp_out");
    let steps = curve_steps(&dirs[2]);
    assert_eq!(steps, vec![1, 2, 4]);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dirs[0].join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["training_tokens"], 256);
    // Different init seeds give different SAEs; nothing is left half-written.
    assert_ne!(
        t.sae(0).unwrap().weights.w_dec,
        t.sae(1).unwrap().weights.w_dec
    );
    let names: Vec<_> = std::fs::read_dir(out.path().join("blocks.1.hook_resid_post"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn jumprelu_learns_sparse_codes_and_moves_its_thresholds() {
    // About 3 of 32 ground-truth directions are active per row. Adam moves `ln(theta)` by
    // about lr per step, so leaving the 0.001 start within 300 steps takes a larger lr than
    // the default, and a kernel window (0.1) matched to pre-activations of order 0.5.
    let data = synthetic(13, 4096, D);
    let mut s = spec(Arch::JumpRelu, 4, 0);
    s.hyper.lr = 3e-2;
    s.hyper.l0_coefficient = Some(1e-2);
    s.hyper.bandwidth = Some(0.1);
    let steps = 300;
    let mut t = Trainer::new(
        vec![s],
        TrainOptions {
            total_steps: Some(steps as u64),
            ..TrainOptions::default()
        },
    )
    .unwrap();
    let init = t.sae(0).unwrap().weights.threshold.unwrap();
    assert!(
        init.iter().all(|&v| (v - 1e-3).abs() < 1e-9),
        "{:?}",
        &init[..4]
    );
    let stats: Vec<_> = train(&mut t, &data, steps)
        .into_iter()
        .map(|s| s.saes[0].clone())
        .collect();
    let (first, last) = (&stats[0], &stats[steps - 1]);
    let d_sae = (4 * D) as f64;
    assert!(
        last.loss < 0.25 * first.loss,
        "loss {} -> {}",
        first.loss,
        last.loss
    );
    assert!(
        last.l0 < d_sae / 8.0 && last.l0 < first.l0 / 3.0,
        "L0 {} -> {} of {d_sae}",
        first.l0,
        last.l0
    );
    let sae = t.sae(0).unwrap();
    assert_eq!(sae.cfg.architecture, "jumprelu");
    let th = sae.weights.threshold.clone().unwrap();
    let mean = th.iter().sum::<f32>() / th.len() as f32;
    assert!(
        th.iter().all(|v| v.is_finite() && *v > 0.0) && mean > 0.01,
        "thresholds: mean {mean}"
    );
    // A consumer applies the thresholds: the saved SAE encodes as sparsely as training saw,
    // and the same weights read as a ReLU SAE are far denser.
    let eval = |sae: &Sae| {
        let model = SaeModel::from_sae(sae, tch::Device::Cpu).unwrap();
        evaluate(&model, data.chunks(BATCH * D)).unwrap()
    };
    let jump = eval(&sae);
    assert!(
        jump.l0 < d_sae / 8.0 && jump.fvu < 0.2,
        "{} {}",
        jump.l0,
        jump.fvu
    );
    let mut relu = sae.clone();
    relu.cfg.architecture = "standard".into();
    assert!(eval(&relu).l0 > 2.0 * jump.l0);
}
