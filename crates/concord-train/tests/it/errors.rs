//! Bad input: clear errors, and nothing changed or written from a poisoned step.

use concord_core::sae::Sae;
use concord_train::{Arch, Batch, SaeModel, SaeSpec, TrainOptions, Trainer};

use crate::util::{synthetic, tempdir};

const D: usize = 8;

fn trainer(ckpt: Option<std::path::PathBuf>) -> Trainer {
    let spec = SaeSpec::new(
        Arch::ReluL1Faithful,
        0,
        "blocks.0.hook_mlp_out",
        "synthetic",
        D,
        2,
    );
    let opts = TrainOptions {
        checkpoint_every: 1,
        checkpoint_dir: ckpt,
        ..TrainOptions::default()
    };
    Trainer::new(vec![spec], opts).unwrap()
}

/// One step of `rows` on `stream`, which must fail: its error, as text.
fn step_err(t: &mut Trainer, stream: usize, width: usize, rows: &[f32]) -> String {
    t.step(&[Batch {
        stream,
        width,
        rows,
    }])
    .unwrap_err()
    .to_string()
}

#[test]
fn non_finite_row_is_named_and_nothing_is_checkpointed() {
    let tmp = tempdir();
    let ckpt = tmp.path().join("ckpt");
    let mut t = trainer(Some(ckpt.clone()));
    let mut rows = synthetic(1, 16, D);
    rows[3 * D + 2] = f32::NAN;
    let err = step_err(&mut t, 0, D, &rows);
    assert!(
        err.contains("row 3") && err.contains("column 2") && err.contains("NaN"),
        "{err}"
    );
    rows[3 * D + 2] = f32::INFINITY;
    let err = step_err(&mut t, 0, D, &rows);
    assert!(err.contains("row 3") && err.contains("inf"), "{err}");
    assert_eq!(t.steps_done(), 0);
    assert!(!ckpt.exists());
    rows[3 * D + 2] = 0.0;
    t.step(&[Batch {
        stream: 0,
        width: D,
        rows: &rows,
    }])
    .unwrap();
    assert!(ckpt.join("trainer.json").exists());
}

#[test]
fn width_mismatch_missing_stream_and_ragged_rows() {
    let mut t = trainer(None);
    let rows = synthetic(2, 16, 4);
    let err = step_err(&mut t, 0, 4, &rows);
    assert!(err.contains("width 4") && err.contains("d_in = 8"), "{err}");
    let err = step_err(&mut t, 1, D, &rows);
    assert!(
        err.contains("stream 0") && err.contains("not given"),
        "{err}"
    );
    let err = step_err(&mut t, 0, D, &rows[..60]);
    assert!(err.contains("60 values"), "{err}");
    assert_eq!(t.steps_done(), 0);
}

#[test]
fn diverging_loss_is_an_error_before_any_update() {
    let tmp = tempdir();
    let ckpt = tmp.path().join("ckpt");
    let mut t = trainer(Some(ckpt.clone()));
    let rows = synthetic(3, 16, D);
    t.step(&[Batch {
        stream: 0,
        width: D,
        rows: &rows,
    }])
    .unwrap();
    let before = t.sae(0).unwrap();
    let huge: Vec<f32> = rows.iter().map(|v| v * 1e4).collect();
    let err = step_err(&mut t, 0, D, &huge);
    assert!(err.contains("diverged") && err.contains("step 2"), "{err}");
    assert_eq!(t.steps_done(), 1);
    assert_eq!(t.sae(0).unwrap(), before);
    let resumed = Trainer::resume(&ckpt).unwrap();
    assert_eq!(resumed.steps_done(), 1);
}

/// With `b_dec` initialised from a batch of one row, the first loss is exactly 0; later
/// losses are not divergence for that (they are compared with the data's scale too).
#[test]
fn zero_first_loss_is_not_a_scale_for_divergence() {
    let spec = SaeSpec::new(Arch::ReluL1, 0, "blocks.0.hook_mlp_out", "synthetic", D, 2);
    let opts = TrainOptions {
        total_steps: Some(8),
        ..TrainOptions::default()
    };
    let mut t = Trainer::new(vec![spec], opts).unwrap();
    let rows = synthetic(4, 8, D);
    let mut losses = Vec::new();
    for row in rows.chunks(D) {
        let stats = t
            .step(&[Batch {
                stream: 0,
                width: D,
                rows: row,
            }])
            .unwrap();
        losses.push(stats.saes[0].loss);
    }
    assert_eq!(losses[0], 0.0);
    assert!(losses[1..].iter().all(|&l| l > 0.0), "{losses:?}");
    // Rows a million times larger still diverge.
    let huge: Vec<f32> = rows[..D].iter().map(|v| v * 1e6).collect();
    let err = step_err(&mut t, 0, D, &huge);
    assert!(err.contains("diverged") && err.contains("step 9"), "{err}");
}

/// Options of no one SAE are named as such (no `SAE ""`); a CUDA device libtorch does not see
/// is refused before anything is allocated.
#[test]
fn device_errors_are_clean() {
    let spec = || SaeSpec::new(Arch::ReluL1, 0, "blocks.0.hook_mlp_out", "synthetic", D, 2);
    for (device, expected) in [
        ("tpu", "unknown device \"tpu\""),
        ("cuda:7", "device \"cuda:7\" is not available"),
    ] {
        let opts = TrainOptions {
            device: device.into(),
            ..TrainOptions::default()
        };
        let err = Trainer::new(vec![spec()], opts).unwrap_err().to_string();
        assert!(err.contains(expected) && !err.contains("SAE \"\""), "{err}");
    }
}

#[test]
fn unknown_architectures_and_bad_specs_are_refused() {
    let err = "gated".parse::<Arch>().unwrap_err().to_string();
    assert!(err.contains("unknown SAE architecture \"gated\""), "{err}");
    let mut sae = trainer(None).sae(0).unwrap();
    sae.cfg.architecture = "gated".into();
    let err = SaeModel::from_sae(&sae, tch::Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("gated"), "{err}");
    let a = SaeSpec::new(Arch::TopK, 0, "h", "m", D, 2);
    let err = Trainer::new(vec![a.clone(), a], TrainOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("share this name"), "{err}");
    let mut b = SaeSpec::new(Arch::TopK, 0, "h", "m", D, 2);
    b.hyper.l1 = Some(1e-3);
    assert!(Trainer::new(vec![b], TrainOptions::default()).is_err());
    let opts = TrainOptions {
        device: "tpu".into(),
        ..TrainOptions::default()
    };
    let c = SaeSpec::new(Arch::TopK, 0, "h", "m", D, 2);
    assert!(
        Trainer::new(vec![c], opts)
            .unwrap_err()
            .to_string()
            .contains("tpu")
    );
    // A folder that is not an SAE: the error names the file.
    let tmp = tempdir();
    let err = Sae::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("cfg.json"), "{err}");
}
