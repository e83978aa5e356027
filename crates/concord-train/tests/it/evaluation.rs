//! Evaluation numbers on SAEs whose answers are known by hand, and splice metrics.

use concord_core::sae::Sae;
use concord_core::{SaeConfig, SaeWeights};
use concord_train::{SaeModel, SpliceMeter, evaluate};
use tch::{Device, Kind, Tensor};

/// `d_in = 2`, `d_sae = 4`: features `relu(x1), relu(x2), relu(-x1), relu(-x2)` decoding back
/// exactly, so reconstruction is perfect and activity is readable from the signs.
fn sign_sae(architecture: &str, k: Option<usize>) -> Sae {
    let cfg = SaeConfig::from_json(
        &format!(r#"{{"d_in": 2, "d_sae": 4, "architecture": "{architecture}", "hook_name": "h", "model_name": "m"}}"#),
        std::path::Path::new("cfg.json"),
    )
    .unwrap();
    let cfg = SaeConfig { k, ..cfg };
    let weights = SaeWeights {
        d_in: 2,
        d_sae: 4,
        w_enc: vec![1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 0.0, -1.0],
        b_enc: vec![0.0; 4],
        w_dec: vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0],
        b_dec: vec![0.0; 2],
        threshold: None,
    };
    Sae { cfg, weights }
}

fn check(sae: &Sae, rows: &[f32], fvu: f64, l0: f64, frequency: &[f64], dead: f64, dense: f64) {
    let model = SaeModel::from_sae(sae, Device::Cpu).unwrap();
    let r = evaluate(&model, rows.chunks(4)).unwrap();
    assert!((r.fvu - fvu).abs() < 1e-9, "fvu {} vs {fvu}", r.fvu);
    assert!((r.l0 - l0).abs() < 1e-12, "l0 {} vs {l0}", r.l0);
    assert_eq!(r.frequency, frequency);
    assert_eq!((r.dead_fraction, r.dense_fraction), (dead, dense));
    assert_eq!(r.tokens as usize, rows.len() / 2);
}

#[test]
fn known_answers() {
    // Rows (1, -2), (3, 4), (-1, 5), (2, 1): all reconstructed exactly.
    let rows = [1.0, -2.0, 3.0, 4.0, -1.0, 5.0, 2.0, 1.0];
    check(
        &sign_sae("standard", None),
        &rows,
        0.0,
        2.0,
        &[0.75, 0.75, 0.25, 0.25],
        0.0,
        1.0,
    );
    // TopK with k = 1 keeps the larger magnitude: (1,-2) -> -x2 = 2; (3,4) -> x2; (-1,5) -> x2;
    // (2,1) -> x1. Reconstructions (0,-2), (0,4), (0,5), (2,0): squared errors 1, 9, 1, 1.
    // The mean row is (1.25, 2); total variance 8.75 + 30 = 38.75.
    check(
        &sign_sae("topk", Some(1)),
        &rows,
        12.0 / 38.75,
        1.0,
        &[0.25, 0.5, 0.0, 0.25],
        0.25,
        0.75,
    );
}

#[test]
fn jumprelu_threshold_and_encode_shapes() {
    let mut sae = sign_sae("jumprelu", None);
    sae.weights.threshold = Some(vec![1.5; 4]);
    let model = SaeModel::from_sae(&sae, Device::Cpu).unwrap();
    let xs = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 4.0]).view([2, 2]);
    let cs = model.encode(&xs).unwrap();
    assert_eq!(cs.size(), vec![2, 4]);
    let v: Vec<f32> = Vec::try_from(&cs.view([-1])).unwrap();
    assert_eq!(v, vec![0.0, 0.0, 0.0, 2.0, 3.0, 4.0, 0.0, 0.0]);
    assert_eq!(model.decode(&cs).unwrap().size(), vec![2, 2]);
}

#[test]
fn splice_meter_reports_loss_recovered_and_kl() {
    let ones = |v: f64| Tensor::full([2, 3], v, (Kind::Float, Device::Cpu));
    // Six tokens, vocab 2.
    let logits = Tensor::from_slice(&[
        0.0f32, 1.0, 2.0, 0.5, 0.5, 0.5, 1.0, 1.0, 0.0, 3.0, 2.0, 2.0,
    ])
    .view([2, 3, 2]);
    let mut m = SpliceMeter::default();
    m.add(&ones(1.0), &ones(1.5), &ones(3.0), &logits, &logits)
        .unwrap();
    let r = m.report();
    assert_eq!(r.tokens, 6);
    assert!(
        (r.loss_recovered - 0.75).abs() < 1e-12 && r.kl.abs() < 1e-12,
        "{r:?}"
    );
    // KL of a uniform spliced distribution against logits (0, ln 3): p = (1/4, 3/4).
    let clean = Tensor::from_slice(&[0.0f32, 3f32.ln()]).view([1, 2]);
    let flat = Tensor::zeros([1, 2], (Kind::Float, Device::Cpu));
    let mut m = SpliceMeter::default();
    let one = Tensor::ones([1], (Kind::Float, Device::Cpu));
    m.add(&one, &one, &(&one * 2), &clean, &flat).unwrap();
    let want = 0.25 * (0.25f64 / 0.5).ln() + 0.75 * (0.75f64 / 0.5).ln();
    assert!((m.report().kl - want).abs() < 1e-6, "{}", m.report().kl);
    assert!(m.add(&one, &ones(1.0), &one, &clean, &flat).is_err());
}

/// A non-finite value is named by its row over the whole evaluation set, not its batch's.
#[test]
fn non_finite_row_is_counted_over_all_batches() {
    let mut rows = [1.0f32, -2.0, 3.0, 4.0, -1.0, 5.0, 2.0, 1.0];
    rows[7] = f32::NAN;
    let model = SaeModel::from_sae(&sign_sae("standard", None), Device::Cpu).unwrap();
    let err = evaluate(&model, rows.chunks(4)).unwrap_err().to_string();
    assert!(
        err.contains("evaluation row 3 ") && err.contains("column 1") && err.contains("NaN"),
        "{err}"
    );
}
