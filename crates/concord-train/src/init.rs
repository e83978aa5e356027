//! Parameter initialisation from an explicit seed (ChaCha8), independent of libtorch's RNG.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use concord_core::SaeWeights;
use concord_core::interop::transpose;

use crate::spec::{Arch, JUMPRELU_INIT_THRESHOLD, SaeSpec};

/// Initial weights of `spec` from its `init_seed`.
///
/// - `relu-l1-faithful` follows the study: `W_enc` and `W_dec`, both `(d_sae, d_in)` there,
///   xavier-uniform with bound `sqrt(6 / (fan_in + fan_out)) = sqrt(6 / (d_in + d_sae))` (the
///   sum of fans is the same in either orientation), drawn `W_enc` first, row-major in the
///   study's `(d_sae, d_in)` layout, then `W_dec`; zero biases.
/// - The other variants draw decoder rows from a standard normal, normalise them to unit norm,
///   and start the encoder as the decoder's transpose (Gao et al. 2024; Conerly et al. 2024).
/// - `jumprelu` starts every threshold at `init_threshold`, by default
///   [`JUMPRELU_INIT_THRESHOLD`] (SAELens's 0.001).
pub fn init_weights(spec: &SaeSpec) -> SaeWeights {
    let (d_in, d_sae) = (spec.d_in, spec.d_sae);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.init_seed);
    let (w_enc_rows, w_dec) = match spec.arch {
        Arch::ReluL1Faithful => {
            let bound = (6.0 / (d_in + d_sae) as f64).sqrt() as f32;
            let mut draw = || -> Vec<f32> {
                (0..d_in * d_sae)
                    .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound)
                    .collect()
            };
            let enc = draw();
            (enc, draw())
        }
        Arch::ReluL1 | Arch::TopK | Arch::BatchTopK | Arch::JumpRelu => {
            let mut w: Vec<f32> = (0..d_in * d_sae)
                .map(|_| rng.sample(StandardNormal))
                .collect();
            for row in w.chunks_exact_mut(d_in) {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= norm);
            }
            (w.clone(), w)
        }
    };
    SaeWeights {
        d_in,
        d_sae,
        w_enc: transpose(&w_enc_rows, d_sae, d_in),
        b_enc: vec![0.0; d_sae],
        w_dec,
        b_dec: vec![0.0; d_in],
        threshold: (spec.arch == Arch::JumpRelu).then(|| {
            let t = spec.hyper.init_threshold.unwrap_or(JUMPRELU_INIT_THRESHOLD);
            vec![t as f32; d_sae]
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faithful_init_is_seeded_and_bounded() {
        let mut spec = SaeSpec::new(Arch::ReluL1Faithful, 0, "h", "m", 8, 4);
        let a = init_weights(&spec);
        let bound = (6.0f32 / 40.0).sqrt();
        assert!(a.w_enc.iter().chain(&a.w_dec).all(|v| v.abs() <= bound));
        assert!(a.w_enc.iter().any(|v| v.abs() > 0.5 * bound));
        assert_eq!(a, init_weights(&spec));
        spec.init_seed = 1;
        assert_ne!(a.w_dec, init_weights(&spec).w_dec);
    }

    #[test]
    fn modern_init_has_unit_decoder_rows_and_tied_encoder() {
        let spec = SaeSpec::new(Arch::TopK, 0, "h", "m", 8, 2);
        let w = init_weights(&spec);
        for row in w.w_dec.chunks_exact(8) {
            let n: f32 = row.iter().map(|v| v * v).sum();
            assert!((n - 1.0).abs() < 1e-5, "{n}");
        }
        assert_eq!(w.encoder_rows(), w.w_dec);
    }
}
