//! The whole comparison of two SAEs and its JSON.

use concord_align::synth::{SaeLike, sae_like_pair};
use concord_align::{CompareOptions, Dict, compare};
use concord_core::SaeWeights;

/// SAE weights whose decoder rows are `dec` and whose encoder is its transpose.
fn sae(dec: &Dict) -> SaeWeights {
    let (n, d) = (dec.n, dec.d);
    let mut w_enc = vec![0.0; d * n];
    for i in 0..n {
        for k in 0..d {
            w_enc[k * n + i] = 2.0 * dec.row(i)[k];
        }
    }
    SaeWeights {
        d_in: d,
        d_sae: n,
        w_enc,
        b_enc: vec![0.0; n],
        w_dec: dec.rows.clone(),
        b_dec: vec![0.0; d],
        threshold: None,
    }
}

#[test]
fn json_has_the_issue_keys_and_identical_saes_score_one() {
    let (a, b) = sae_like_pair(60, 90, 32, &SaeLike::default(), 1).unwrap();
    let opts = CompareOptions {
        null_seeds: 2,
        ..CompareOptions::default()
    };
    let c = compare(&sae(&a), &sae(&b), &opts).unwrap();
    let json = serde_json::to_value(&c).unwrap();
    for kind in ["decoder", "encoder"] {
        for dir in ["a_to_b", "b_to_a"] {
            assert!(json["mmcs"][kind][dir].is_f64(), "mmcs.{kind}.{dir}");
        }
        for t in ["0.5", "0.7", "0.9"] {
            assert!(json["matching"][kind]["shared"][t].is_f64(), "shared {t}");
        }
        assert_eq!(json["matching"][kind]["optimal"], true);
        assert!(json["matching"][kind]["mean_cos"].is_f64());
    }
    assert!(json["null"]["isotropic_decoder"]["mmcs_a_to_b"]["mean"].is_f64());
    assert!(
        json["null"]["rand_like_decoder"]["label"]
            .as_str()
            .unwrap()
            .contains("biased")
    );
    assert!(json["correlation"].as_object().unwrap().is_empty());
    assert_eq!(c.matches.decoder.len(), 60);
    // Encoders are decoders scaled by 2 here: the same directions, the same scores.
    assert!((c.mmcs.decoder.a_to_b - c.mmcs.encoder.unwrap().a_to_b).abs() < 1e-6);
    // The SAE-like pair scores well above its null.
    let null = &c.null.isotropic_decoder.as_ref().unwrap().mmcs_a_to_b;
    assert!(c.mmcs.decoder.a_to_b > null.hi, "{:?} vs {null:?}", c.mmcs);

    let same = compare(&sae(&a), &sae(&a), &CompareOptions::default()).unwrap();
    assert!((same.matching.decoder.mean_cos - 1.0).abs() < 1e-6);
    assert_eq!(same.matching.decoder.shared["0.9"], 1.0);
    assert!(same.matches.decoder.iter().all(|p| p.a == p.b));
}

#[test]
fn mismatched_or_broken_saes_are_errors() {
    let (a, _) = sae_like_pair(10, 10, 8, &SaeLike::default(), 1).unwrap();
    let (c, _) = sae_like_pair(10, 10, 6, &SaeLike::default(), 1).unwrap();
    let err = compare(&sae(&a), &sae(&c), &CompareOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dimension mismatch") && err.contains("d = 8") && err.contains("d = 6"),
        "{err}"
    );
    let mut broken = sae(&a);
    broken.w_dec[13] = f32::NAN;
    let err = compare(&broken, &sae(&a), &CompareOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("W_dec of a") && err.contains("row 1"), "{err}");
    let empty = SaeWeights {
        d_in: 8,
        d_sae: 0,
        w_enc: vec![],
        b_enc: vec![],
        w_dec: vec![],
        b_dec: vec![0.0; 8],
        threshold: None,
    };
    assert!(
        compare(&empty, &sae(&a), &CompareOptions::default())
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
}
