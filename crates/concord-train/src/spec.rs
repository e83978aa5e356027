//! What to train: architectures, per-SAE specs with their hyperparameters, trainer options.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The SAE variants this crate trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// The study's AnthropicSAE exactly: untied, shift bias `b_dec` subtracted before encoding
    /// and added after decoding, decoder rows normalised at use, xavier-uniform init, zero
    /// biases, loss `mean((x_hat - x)^2) + l1 * mean_b ||c_b||_1`, Adam.
    #[serde(rename = "relu-l1-faithful")]
    ReluL1Faithful,
    /// ReLU with an L1 penalty, unit-norm decoder rows kept by gradient projection and
    /// renormalisation, `b_dec` initialised from the first batch, L1 and lr warm-up, lr decay.
    #[serde(rename = "relu-l1")]
    ReluL1,
    /// TopK activation (k largest of `ReLU(pre)` per token) with AuxK dead-feature revival.
    #[serde(rename = "topk")]
    TopK,
    /// BatchTopK: the `batch * k` largest activations over the whole batch; at inference a
    /// threshold (running mean of the smallest kept activation) replaces the batch rule.
    #[serde(rename = "batchtopk")]
    BatchTopK,
    /// JumpReLU (Rajamanoharan et al. 2024): `pre * H(pre - theta)` with a learned threshold
    /// `theta = exp(log_threshold)` per feature, loss MSE + `l0_coefficient * L0`, the
    /// threshold's gradient by a straight-through estimator with a rectangle kernel of width
    /// `bandwidth`; unit-norm decoder rows as `relu-l1`.
    #[serde(rename = "jumprelu")]
    JumpRelu,
}

impl Arch {
    pub const ALL: [Arch; 5] = [
        Arch::ReluL1Faithful,
        Arch::ReluL1,
        Arch::TopK,
        Arch::BatchTopK,
        Arch::JumpRelu,
    ];
    const NAMES: &'static str = "relu-l1-faithful, relu-l1, topk, batchtopk, jumprelu";

    /// This project's name of the variant (`cfg.json`'s `concord_architecture`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::ReluL1Faithful => "relu-l1-faithful",
            Arch::ReluL1 => "relu-l1",
            Arch::TopK => "topk",
            Arch::BatchTopK => "batchtopk",
            Arch::JumpRelu => "jumprelu",
        }
    }

    /// SAELens's architecture name (`cfg.json`'s `architecture`). BatchTopK is `jumprelu`:
    /// SAELens 6 has no inference class of its own for it and saves its BatchTopK SAEs as
    /// JumpReLU with the batch threshold in every feature's `threshold`, as we do.
    pub fn saelens_name(self) -> &'static str {
        match self {
            Arch::ReluL1Faithful | Arch::ReluL1 => "standard",
            Arch::TopK => "topk",
            Arch::BatchTopK => "jumprelu",
            Arch::JumpRelu => "jumprelu",
        }
    }

    /// Whether the activation keeps the `k` largest values (TopK, BatchTopK) rather than
    /// paying an L1 penalty.
    pub fn uses_k(self) -> bool {
        matches!(self, Arch::TopK | Arch::BatchTopK)
    }

    /// Whether the loss carries an L1 penalty on the codes (the ReLU variants).
    pub fn uses_l1(self) -> bool {
        matches!(self, Arch::ReluL1Faithful | Arch::ReluL1)
    }

    /// Whether decoder rows are kept at unit norm (gradient projection + renormalisation).
    pub fn unit_norm_decoder(self) -> bool {
        !matches!(self, Arch::ReluL1Faithful)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Arch> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| Error::UnknownArchitecture {
                name: s.to_owned(),
                expected: Arch::NAMES,
            })
    }
}

/// How `b_dec` starts: zeros (the study), or the mean or geometric median of the first batch
/// the SAE sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BDecInit {
    Zeros,
    Mean,
    GeometricMedian,
}

/// The hyperparameters of one SAE. [`SaeSpec::new`] fills the defaults of its architecture.
///
/// Warm-ups and decay are fractions of [`TrainOptions::total_steps`]; without a total they
/// are off (constant lr, full L1 from the first step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hyper {
    /// Adam learning rate (peak, when scheduled).
    pub lr: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// L1 coefficient (ReLU variants); `None` for the others.
    pub l1: Option<f64>,
    /// Active features per token (TopK variants); `None` for the others.
    pub k: Option<usize>,
    /// JumpReLU's sparsity coefficient: the loss is `mse + l0_coefficient * L0`, with the MSE
    /// a mean over elements and L0 a mean over tokens; `None` for the other variants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l0_coefficient: Option<f64>,
    /// JumpReLU's kernel width `epsilon`: pre-activations within `epsilon / 2` of a threshold
    /// give it a gradient; `None` for the other variants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<f64>,
    /// JumpReLU's threshold at initialisation, every feature's; `None` is
    /// [`JUMPRELU_INIT_THRESHOLD`] for JumpReLU and means nothing for the other variants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_threshold: Option<f64>,
    /// Linear lr warm-up over this fraction of the total steps.
    pub lr_warmup_frac: f64,
    /// Linear lr decay to zero over this final fraction of the total steps.
    pub lr_decay_frac: f64,
    /// Linear warm-up from zero of the sparsity coefficient (L1, or JumpReLU's L0) over this
    /// fraction of the total steps.
    pub l1_warmup_frac: f64,
    pub b_dec_init: BDecInit,
    /// Weight of the AuxK loss (TopK variants; 0 turns it off).
    pub auxk_alpha: f64,
    /// A feature that has not fired for this many tokens is dead: AuxK revives it and the
    /// progress numbers count it.
    pub dead_tokens: u64,
}

/// One SAE of the grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaeSpec {
    /// Output folder name, relative to the output folder (may contain `/`).
    pub name: String,
    /// Which input stream feeds this SAE: the index the caller gives each (hook, data order)
    /// in [`crate::Batch::stream`].
    pub stream: usize,
    pub hook_name: String,
    pub model_name: String,
    pub arch: Arch,
    pub d_in: usize,
    pub d_sae: usize,
    /// Seed of the parameter initialisation.
    pub init_seed: u64,
    /// Seed of the row order (used by the caller's reader; recorded in `cfg.json`).
    pub data_seed: u64,
    pub hyper: Hyper,
    /// The factor the SAE's input rows are multiplied by before it sees them (1: none).
    /// [`input_scale_for`] gives SAELens's `expected_average_only_in` normalisation (mean
    /// squared norm `d_in`); the saved SAE has it folded in, so it reads unscaled rows.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub input_scale: f64,
}

fn one() -> f64 {
    1.0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

/// The input scale that gives rows of mean squared norm `mean_sq_norm` the mean squared norm
/// `d_in` (one per element; SAELens's `normalize_activations = "expected_average_only_in"`).
pub fn input_scale_for(d_in: usize, mean_sq_norm: f64) -> f64 {
    (d_in as f64 / mean_sq_norm).sqrt()
}

impl SaeSpec {
    /// A spec with the defaults of `arch`: `d_sae = ratio * d_in`, name
    /// `<hook>/<arch>-r<ratio>-i<init_seed>-d<data_seed>`, both seeds 0, k = 32 for TopK
    /// variants, l1 = 8e-4 for ReLU variants, l0_coefficient [`JUMPRELU_L0_COEFFICIENT`] and
    /// bandwidth [`JUMPRELU_BANDWIDTH`] for JumpReLU.
    pub fn new(
        arch: Arch,
        stream: usize,
        hook_name: &str,
        model_name: &str,
        d_in: usize,
        ratio: usize,
    ) -> SaeSpec {
        let d_sae = d_in * ratio;
        let base = Hyper {
            lr: 1e-3,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            l1: Some(8e-4),
            k: None,
            l0_coefficient: None,
            bandwidth: None,
            init_threshold: None,
            lr_warmup_frac: 0.0,
            lr_decay_frac: 0.0,
            l1_warmup_frac: 0.0,
            b_dec_init: BDecInit::Zeros,
            auxk_alpha: 0.0,
            dead_tokens: 10_000_000,
        };
        let hyper = match arch {
            Arch::ReluL1Faithful => base,
            Arch::ReluL1 => Hyper {
                lr_warmup_frac: 0.01,
                lr_decay_frac: 0.2,
                l1_warmup_frac: 0.05,
                b_dec_init: BDecInit::GeometricMedian,
                ..base
            },
            // SAELens's threshold init (0.001) and bandwidth (0.001); the L0 coefficient is
            // in this crate's units (MSE a mean over elements): see docs/TRAINING.md.
            Arch::JumpRelu => Hyper {
                l1: None,
                l0_coefficient: Some(JUMPRELU_L0_COEFFICIENT),
                bandwidth: Some(JUMPRELU_BANDWIDTH),
                lr_warmup_frac: 0.01,
                lr_decay_frac: 0.2,
                l1_warmup_frac: 0.05,
                b_dec_init: BDecInit::GeometricMedian,
                ..base
            },
            Arch::TopK | Arch::BatchTopK => Hyper {
                // EleutherAI sparsify's default: 2e-4 scaled by 1/sqrt(d_sae / 2^14).
                lr: 2e-4 / (d_sae as f64 / 16384.0).sqrt(),
                l1: None,
                k: Some(32.min(d_sae)),
                lr_warmup_frac: 0.01,
                lr_decay_frac: 0.2,
                b_dec_init: BDecInit::Mean,
                auxk_alpha: 1.0 / 32.0,
                ..base
            },
        };
        let mut spec = SaeSpec {
            name: String::new(),
            stream,
            hook_name: hook_name.to_owned(),
            model_name: model_name.to_owned(),
            arch,
            d_in,
            d_sae,
            init_seed: 0,
            data_seed: 0,
            hyper,
            input_scale: 1.0,
        };
        spec.name = spec.default_name();
        spec
    }

    /// `<hook>/<arch>-r<ratio>-i<init_seed>-d<data_seed>` (with `-k<k>` for TopK variants).
    pub fn default_name(&self) -> String {
        let ratio = if self.d_in > 0 && self.d_sae.is_multiple_of(self.d_in) {
            format!("r{}", self.d_sae / self.d_in)
        } else {
            format!("n{}", self.d_sae)
        };
        let k = self.hyper.k.map(|k| format!("-k{k}")).unwrap_or_default();
        format!(
            "{}/{}-{ratio}{k}-i{}-d{}",
            self.hook_name, self.arch, self.init_seed, self.data_seed
        )
    }

    /// Checks the spec; errors name the SAE.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(Error::InvalidSpec {
                sae: self.name.clone(),
                reason,
            })
        };
        let h = &self.hyper;
        if self.d_in == 0 || self.d_sae == 0 {
            return bad(format!(
                "empty SAE: d_in = {}, d_sae = {}",
                self.d_in, self.d_sae
            ));
        }
        if self.name.is_empty()
            || self
                .name
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return bad(format!(
                "name {:?} is not a relative folder path",
                self.name
            ));
        }
        if !(h.lr.is_finite() && h.lr > 0.0) {
            return bad(format!("learning rate {} must be positive", h.lr));
        }
        if !(0.0..1.0).contains(&h.adam_beta1)
            || !(0.0..1.0).contains(&h.adam_beta2)
            || h.adam_eps.is_nan()
            || h.adam_eps <= 0.0
        {
            return bad("adam betas must lie in [0, 1) and eps be positive".into());
        }
        for (what, f) in [
            ("lr_warmup_frac", h.lr_warmup_frac),
            ("lr_decay_frac", h.lr_decay_frac),
            ("l1_warmup_frac", h.l1_warmup_frac),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return bad(format!("{what} = {f} must lie in [0, 1]"));
            }
        }
        let arch = self.arch;
        if arch.uses_k() {
            match h.k {
                Some(k) if k >= 1 && k <= self.d_sae => {}
                k => {
                    return bad(format!(
                        "{arch} needs 1 <= k <= d_sae = {}, got {k:?}",
                        self.d_sae
                    ));
                }
            }
        } else if h.k.is_some() {
            return bad(format!("{arch} takes no k (only topk and batchtopk do)"));
        }
        if arch.uses_l1() {
            match h.l1 {
                Some(l1) if l1.is_finite() && l1 >= 0.0 => {}
                l1 => {
                    return bad(format!(
                        "{arch} needs a non-negative l1 coefficient, got {l1:?}"
                    ));
                }
            }
        } else if h.l1.is_some() {
            return bad(format!(
                "{arch} takes no l1 coefficient (only relu-l1-faithful and relu-l1 do)"
            ));
        }
        if arch == Arch::JumpRelu {
            match h.l0_coefficient {
                Some(c) if c.is_finite() && c >= 0.0 => {}
                c => {
                    return bad(format!(
                        "{arch} needs a non-negative l0_coefficient, got {c:?}"
                    ));
                }
            }
            match h.bandwidth {
                Some(e) if e.is_finite() && e > 0.0 => {}
                e => return bad(format!("{arch} needs a positive bandwidth, got {e:?}")),
            }
            match h.init_threshold {
                None => {}
                Some(t) if t.is_finite() && t > 0.0 && (t as f32) > 0.0 => {}
                Some(t) => {
                    return bad(format!(
                        "{arch} needs a positive initial threshold, got {t}"
                    ));
                }
            }
        } else if h.l0_coefficient.is_some() || h.bandwidth.is_some() || h.init_threshold.is_some()
        {
            return bad(format!(
                "{arch} takes no l0_coefficient, bandwidth or initial threshold (only jumprelu \
                 does)"
            ));
        }
        if !(self.input_scale.is_finite() && self.input_scale > 0.0) {
            return bad(format!(
                "input_scale = {} must be positive and finite",
                self.input_scale
            ));
        }
        if !(h.auxk_alpha.is_finite() && h.auxk_alpha >= 0.0) {
            return bad(format!(
                "auxk_alpha = {} must be non-negative",
                h.auxk_alpha
            ));
        }
        Ok(())
    }
}

/// JumpReLU's default L0 coefficient, in this crate's units (the MSE is a mean over the
/// `d_in` elements of a row, where SAELens sums them: SAELens's coefficient `c` on
/// activations scaled to norm `sqrt(d_in)` is `c / d_in` here). docs/TRAINING.md says how it
/// was chosen.
pub const JUMPRELU_L0_COEFFICIENT: f64 = 1e-3;

/// JumpReLU's default kernel width and initial threshold (SAELens's defaults).
pub const JUMPRELU_BANDWIDTH: f64 = 1e-3;
pub const JUMPRELU_INIT_THRESHOLD: f64 = 1e-3;

/// Options of a training run (not of one SAE).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptions {
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// The planned number of steps; enables lr and L1 schedules.
    pub total_steps: Option<u64>,
    /// Where periodic checkpoints go (one folder, replaced atomically each time).
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Checkpoint after every this many steps (0: only when asked).
    pub checkpoint_every: u64,
    /// Record a point of the training curve every this many steps (at least 1).
    pub curve_every: u64,
    /// A loss above this factor times the larger of the SAE's first loss and the first
    /// batch's mean square value (or a non-finite loss) is divergence.
    pub divergence_factor: f64,
    /// On the CPU, codes with at most this share of active entries run the sparse decoder
    /// kernels instead of dense GEMMs (0 turns them off). Results agree to rounding.
    #[serde(default = "default_sparse_max_density")]
    pub sparse_max_density: f64,
    /// The element type of the large matrix products (parameters, Adam state and sums stay
    /// f32).
    #[serde(default)]
    pub compute_dtype: ComputeDtype,
    /// Steps after which every SAE is also saved as `snapshot_dir/<step>/<name>/` (a whole
    /// SAELens folder; see [`snapshot_steps`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshot_steps: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_dir: Option<std::path::PathBuf>,
}

/// The element type of training's large matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeDtype {
    /// Everything in f32.
    #[default]
    F32,
    /// The products' operands rounded to bfloat16 (AMX and tensor cores run them 8-10x
    /// faster), accumulated in f32 and rounded to bfloat16 again on output (libtorch's CPU
    /// has no bf16 x bf16 -> f32 product); weights, gradients' sums and Adam stay f32.
    Bf16,
}

impl FromStr for ComputeDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<ComputeDtype> {
        match s {
            "f32" | "float32" => Ok(ComputeDtype::F32),
            "bf16" | "bfloat16" => Ok(ComputeDtype::Bf16),
            _ => Err(Error::InvalidSpec {
                sae: String::new(),
                reason: format!("unknown compute dtype {s:?} (expected f32 or bf16)"),
            }),
        }
    }
}

pub use concord_core::snapshots::snapshot_steps;

/// Measured crossover (docs/TRAINING.md, "Speed"): the sparse kernels match four GEMMs at
/// ~13 % (1:32) to ~17 % (1:4) active entries on a 2-thread Sapphire Rapids CPU.
fn default_sparse_max_density() -> f64 {
    0.15
}

/// The crossover with bf16 products (docs/TRAINING.md, "Speed").
const BF16_SPARSE_MAX_DENSITY: f64 = 0.05;

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            device: "cpu".into(),
            total_steps: None,
            checkpoint_dir: None,
            checkpoint_every: 0,
            curve_every: 10,
            divergence_factor: 1e4,
            sparse_max_density: default_sparse_max_density(),
            compute_dtype: ComputeDtype::F32,
            snapshot_steps: Vec::new(),
            snapshot_dir: None,
        }
    }
}

impl TrainOptions {
    /// The default [`TrainOptions::sparse_max_density`] for products of `compute` type: the
    /// sparse kernels run in f32, so bf16's faster dense products move the crossover down.
    pub fn default_sparse_max_density(compute: ComputeDtype) -> f64 {
        match compute {
            ComputeDtype::F32 => default_sparse_max_density(),
            ComputeDtype::Bf16 => BF16_SPARSE_MAX_DENSITY,
        }
    }

    /// The libtorch device of [`TrainOptions::device`]; a CUDA device libtorch does not see
    /// is an error.
    pub fn tch_device(&self) -> Result<tch::Device> {
        let device = parse_device(&self.device)?;
        if let tch::Device::Cuda(i) = device {
            let reason = if !tch::Cuda::is_available() {
                Some("libtorch sees no CUDA device")
            } else if i >= tch::Cuda::device_count() as usize {
                Some("no such CUDA device")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::InvalidSpec {
                    sae: String::new(),
                    reason: format!("device {:?} is not available ({reason})", self.device),
                });
            }
        }
        Ok(device)
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<tch::Device> {
    let bad = || Error::InvalidSpec {
        sae: String::new(),
        reason: format!("unknown device {s:?} (expected cpu, cuda or cuda:N)"),
    };
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" => Ok(tch::Device::Cuda(0)),
        _ => {
            let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
            n.parse::<usize>().map(tch::Device::Cuda).map_err(|_| bad())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_round_trip_and_unknown_is_named() {
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
        }
        let err = "gated".parse::<Arch>().unwrap_err().to_string();
        assert!(
            err.contains("\"gated\"") && err.contains("batchtopk"),
            "{err}"
        );
    }

    #[test]
    fn defaults_validate_and_bad_specs_are_refused() {
        for a in Arch::ALL {
            SaeSpec::new(a, 0, "blocks.0.hook_mlp_out", "m", 16, 4)
                .validate()
                .unwrap();
        }
        let mut s = SaeSpec::new(Arch::TopK, 0, "blocks.0.hook_mlp_out", "m", 16, 4);
        s.hyper.k = Some(65);
        assert!(s.validate().unwrap_err().to_string().contains("k <= d_sae"));
        let mut s = SaeSpec::new(Arch::JumpRelu, 0, "h", "m", 16, 4);
        s.hyper.bandwidth = Some(0.0);
        assert!(s.validate().unwrap_err().to_string().contains("bandwidth"));
        for bad in [0.0, -0.01, f64::NAN, 1e-50] {
            let mut s = SaeSpec::new(Arch::JumpRelu, 0, "h", "m", 16, 4);
            s.hyper.init_threshold = Some(bad);
            assert!(
                s.validate()
                    .unwrap_err()
                    .to_string()
                    .contains("initial threshold"),
                "{bad}"
            );
        }
        let mut s = SaeSpec::new(Arch::JumpRelu, 0, "h", "m", 16, 4);
        s.hyper.init_threshold = Some(0.01);
        s.validate().unwrap();
        assert_eq!(
            crate::init::init_weights(&s).threshold,
            Some(vec![0.01f32; 64])
        );
        let mut s = SaeSpec::new(Arch::TopK, 0, "h", "m", 16, 4);
        s.hyper.init_threshold = Some(0.01);
        assert!(s.validate().is_err());
        let mut s = SaeSpec::new(Arch::ReluL1, 0, "h", "m", 16, 4);
        s.hyper.l0_coefficient = Some(1.0);
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("l0_coefficient")
        );
        let mut s = SaeSpec::new(Arch::ReluL1, 0, "h", "m", 16, 4);
        s.name = "../x".into();
        assert!(s.validate().is_err());
        assert_eq!(
            SaeSpec::new(Arch::TopK, 0, "h", "m", 8, 4).name,
            "h/topk-r4-k32-i0-d0"
        );
    }

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("cpu").unwrap(), tch::Device::Cpu);
        assert_eq!(parse_device("cuda:1").unwrap(), tch::Device::Cuda(1));
        assert!(parse_device("tpu").is_err());
    }
}

/// How a grid orders its rows: one seed for every SAE, or the study's confound (each SAE's
/// data order seeded by its init seed: `--data-seed same`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataSeed {
    Fixed(u64),
    SameAsInit,
}

/// One input stream of a grid: a hook read in one row order. The caller opens one reader per
/// stream and passes its batches as [`crate::Batch`]es with this `stream` index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridStream {
    pub stream: usize,
    pub hook_name: String,
    pub d_in: usize,
    pub data_seed: u64,
}

/// The SAEs of a grid (hooks x ratios x init seeds, one architecture) with default
/// hyperparameters, and the streams that feed them. Streams are numbered in order of first
/// use; hooks are `(hook name, d_in)`. Adjust `hyper` (k, l1, lr) on the returned specs.
pub fn grid(
    arch: Arch,
    model_name: &str,
    hooks: &[(String, usize)],
    ratios: &[usize],
    init_seeds: &[u64],
    data_seed: DataSeed,
) -> (Vec<SaeSpec>, Vec<GridStream>) {
    let mut specs = Vec::new();
    let mut streams: Vec<GridStream> = Vec::new();
    for (hook, d_in) in hooks {
        for &ratio in ratios {
            for &seed in init_seeds {
                let ds = match data_seed {
                    DataSeed::Fixed(s) => s,
                    DataSeed::SameAsInit => seed,
                };
                let stream = match streams
                    .iter()
                    .find(|s| &s.hook_name == hook && s.data_seed == ds)
                {
                    Some(s) => s.stream,
                    None => {
                        let stream = streams.len();
                        streams.push(GridStream {
                            stream,
                            hook_name: hook.clone(),
                            d_in: *d_in,
                            data_seed: ds,
                        });
                        stream
                    }
                };
                let mut spec = SaeSpec::new(arch, stream, hook, model_name, *d_in, ratio);
                spec.init_seed = seed;
                spec.data_seed = ds;
                spec.name = spec.default_name();
                specs.push(spec);
            }
        }
    }
    (specs, streams)
}

#[cfg(test)]
mod grid_tests {
    use super::*;

    #[test]
    fn grid_shares_streams_unless_the_data_seed_follows_the_init_seed() {
        let hooks = [
            ("blocks.0.hook_mlp_out".to_owned(), 8),
            ("blocks.1.hook_mlp_out".to_owned(), 8),
        ];
        let (specs, streams) = grid(
            Arch::TopK,
            "m",
            &hooks,
            &[2, 4],
            &[0, 1],
            DataSeed::Fixed(3),
        );
        assert_eq!((specs.len(), streams.len()), (8, 2));
        assert!(specs.iter().all(|s| s.data_seed == 3));
        assert_eq!(specs[4].stream, 1);
        let (specs, streams) = grid(Arch::TopK, "m", &hooks, &[2], &[0, 1], DataSeed::SameAsInit);
        assert_eq!(streams.len(), 4);
        assert_eq!(
            (specs[1].init_seed, specs[1].data_seed, specs[1].stream),
            (1, 1, 1)
        );
        let names: std::collections::BTreeSet<_> = specs.iter().map(|s| &s.name).collect();
        assert_eq!(names.len(), specs.len());
    }
}
