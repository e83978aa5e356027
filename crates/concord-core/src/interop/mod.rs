//! The field's other SAE files, read and written in pure Rust (no libtorch), so that any
//! program (the CLI, the Python wheel) reads them as [`Sae`]s with the codes their own
//! packages compute:
//!
//! - SAELens folders (`cfg.json` + `sae_weights.safetensors`): [`Sae::load`], [`Sae::save`];
//! - sparsify (PyPI `eai-sparsify`) per-hook folders (`cfg.json` + `sae.safetensors`),
//!   what `Sae.load_from_disk` reads and `Sae.save_to_disk` writes: [`sparsify`];
//! - dictionary_learning (PyPI `dictionary-learning`) `ae.pt` state dicts, with the
//!   `config.json` its training writes beside them: [`dictionary_learning`].
//!
//! [`load`] tells them apart by what the path holds; [`export`] writes an SAE in another
//! package's format, refusing the architectures that package has no class for with a one-line
//! error naming the ones it has.

pub mod dictionary_learning;
pub mod sparsify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::sae::{CFG_FILE, Sae, WEIGHTS_FILE};
use crate::{Error, Result};

/// A format [`export`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A sparsify folder: TopK SAEs.
    Sparsify,
    /// A dictionary_learning folder (`ae.pt` + `config.json`): ReLU, TopK, BatchTopK and
    /// JumpReLU SAEs.
    DictionaryLearning,
}

impl Format {
    pub const NAMES: &'static str = "sparsify, dictionary-learning";

    pub fn name(self) -> &'static str {
        match self {
            Format::Sparsify => "sparsify",
            Format::DictionaryLearning => "dictionary-learning",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Format, String> {
        match s {
            "sparsify" => Ok(Format::Sparsify),
            "dictionary-learning" | "dictionary_learning" => Ok(Format::DictionaryLearning),
            other => Err(format!(
                "unknown format {other:?} (expected {})",
                Format::NAMES
            )),
        }
    }
}

/// Writes `sae` (read from `from`, named in errors) as a folder `out` of `format`, atomically
/// (a temporary sibling folder renamed into place).
pub fn export(sae: &Sae, from: &Path, format: Format, out: &Path) -> Result<()> {
    match format {
        Format::Sparsify => sparsify::write(sae, from, out),
        Format::DictionaryLearning => dictionary_learning::write(sae, from, out),
    }
}

/// Reads the SAE at `path`, whatever package wrote it:
///
/// - a folder with `sae_weights.safetensors`: SAELens (and this project's `train`);
/// - a folder with `sae.safetensors`: one sparsify hook; a folder of such folders (what
///   sparsify's training writes, one per hook point) must be narrowed to one of them, and the
///   error lists them;
/// - a file, or a folder with `ae.pt`: dictionary_learning.
///
/// `hook_name` and `model_name` name SAEs whose files do not (sparsify, dictionary_learning);
/// empty strings leave them as the file has them (a sparsify folder is then named after its
/// hook point folder).
pub fn load(path: &Path, hook_name: &str, model_name: &str) -> Result<Sae> {
    if path.is_file() {
        return dictionary_learning::load(path, hook_name, model_name);
    }
    if path.join(WEIGHTS_FILE).is_file() {
        let mut sae = Sae::load(path)?;
        // SAELens 6 keeps the names in `metadata`, and only when they were set.
        for (name, given) in [
            (&mut sae.cfg.hook_name, hook_name),
            (&mut sae.cfg.model_name, model_name),
        ] {
            if name.is_empty() {
                given.clone_into(name);
            }
        }
        return Ok(sae);
    }
    if path.join(sparsify::WEIGHTS_FILE).is_file() {
        return sparsify::load(path, hook_name, model_name);
    }
    if path.join(dictionary_learning::AE_FILE).is_file() {
        return dictionary_learning::load(
            &path.join(dictionary_learning::AE_FILE),
            hook_name,
            model_name,
        );
    }
    if !path.is_dir() {
        return Err(Error::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        });
    }
    let hooks = sparsify::hook_folders(path);
    let reason = if hooks.is_empty() {
        format!(
            "not an SAE: no {WEIGHTS_FILE} (SAELens), {} (sparsify) or {} (dictionary_learning), \
             and no sparsify hook folders",
            sparsify::WEIGHTS_FILE,
            dictionary_learning::AE_FILE
        )
    } else {
        let names: Vec<String> = hooks.iter().map(|h| display_name(h)).collect();
        format!(
            "a sparsify run with one SAE per hook point ({}): name one, such as {}",
            names.join(", "),
            hooks[0].display()
        )
    };
    Err(Error::Invalid {
        path: path.to_owned(),
        reason,
    })
}

fn display_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// `cfg.json` inside `dir`.
fn cfg_path(dir: &Path) -> PathBuf {
    dir.join(CFG_FILE)
}

/// The error for an SAE that `format` has no class for.
fn unsupported(from: &Path, sae: &Sae, format: Format, supported: &str) -> Error {
    let arch = match &sae.cfg.concord_architecture {
        Some(ours) if *ours != sae.cfg.architecture => {
            format!("{} ({ours})", sae.cfg.architecture)
        }
        _ => sae.cfg.architecture.clone(),
    };
    Error::Invalid {
        path: from.to_owned(),
        reason: format!("a {arch} SAE cannot be exported to {format}: it supports {supported}"),
    }
}

/// What an SAE's encoder computes, as far as the exports need to know.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Encoder {
    Relu,
    TopK(usize),
    /// A per-feature threshold (JumpReLU, and BatchTopK at inference).
    Threshold,
}

/// The encoder of `sae` as [`crate::sae`] describes it (`standard`, legacy `standard` with
/// `activation_fn_str: "topk"`, `topk`, `batchtopk`, `jumprelu`).
pub(crate) fn encoder(sae: &Sae, from: &Path) -> Result<Encoder> {
    let cfg = &sae.cfg;
    let k = || {
        cfg.k
            .or_else(|| {
                cfg.extra
                    .get("activation_fn_kwargs")
                    .and_then(|kw| kw.get("k"))
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|k| usize::try_from(k).ok())
            })
            .ok_or_else(|| Error::Invalid {
                path: cfg_path(from),
                reason: format!("a {} SAE without k", cfg.architecture),
            })
    };
    let legacy_topk = cfg
        .extra
        .get("activation_fn_str")
        .and_then(serde_json::Value::as_str)
        == Some("topk");
    Ok(match (cfg.architecture.as_str(), &sae.weights.threshold) {
        ("standard" | "relu", _) if legacy_topk => Encoder::TopK(k()?),
        ("standard" | "relu", _) => Encoder::Relu,
        ("topk", _) => Encoder::TopK(k()?),
        ("batchtopk" | "jumprelu", Some(_)) => Encoder::Threshold,
        ("batchtopk", None) => Encoder::TopK(k()?),
        (other, _) => {
            return Err(Error::Invalid {
                path: cfg_path(from),
                reason: format!(
                    "architecture {other:?} is not one of standard, topk, batchtopk, jumprelu"
                ),
            });
        }
    })
}

/// The `b_enc` that gives a package's encoder `sae`'s pre-activations when that encoder
/// subtracts `b_dec` from its input (`target_subtracts`) or not:
/// `(x - b_dec) W_enc + b_enc = x W_enc + (b_enc - b_dec W_enc)`. Equal up to rounding.
pub(crate) fn b_enc_for(sae: &Sae, target_subtracts: bool) -> Vec<f32> {
    let w = &sae.weights;
    let sign = match (sae.cfg.subtracts_b_dec(), target_subtracts) {
        (true, false) => -1.0,
        (false, true) => 1.0,
        _ => return w.b_enc.clone(),
    };
    let mut b = w.b_enc.clone();
    for (i, &bd) in w.b_dec.iter().enumerate() {
        let row = &w.w_enc[i * w.d_sae..(i + 1) * w.d_sae];
        for (bj, &wij) in b.iter_mut().zip(row) {
            *bj += sign * bd * wij;
        }
    }
    b
}

/// `(rows, cols)` row-major `m` transposed to `(cols, rows)`.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = m[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SaeConfig;
    use crate::sae::SaeWeights;

    /// A small SAE of `architecture` with distinct weights.
    pub(crate) fn tiny(architecture: &str, k: Option<usize>, threshold: bool) -> Sae {
        let (d_in, d_sae) = (3, 5);
        let cfg = SaeConfig::from_json(
            &format!(
                r#"{{"d_in": {d_in}, "d_sae": {d_sae}, "architecture": "{architecture}",
                    "hook_name": "blocks.0.hook_resid_post", "model_name": "m"}}"#
            ),
            Path::new("cfg.json"),
        )
        .unwrap();
        let val = |n: usize, s: f32| (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * s).collect();
        Sae {
            cfg: SaeConfig { k, ..cfg },
            weights: SaeWeights {
                d_in,
                d_sae,
                w_enc: val(d_in * d_sae, 0.1),
                b_enc: val(d_sae, 0.01),
                w_dec: val(d_sae * d_in, 0.2),
                b_dec: vec![0.5, -0.25, 1.0],
                threshold: threshold.then(|| vec![0.05; d_sae]),
            },
        }
    }

    #[test]
    fn formats_parse_and_bad_names_list_the_good_ones() {
        assert_eq!("sparsify".parse::<Format>(), Ok(Format::Sparsify));
        let err = "npz".parse::<Format>().unwrap_err();
        assert!(err.contains("sparsify, dictionary-learning"), "{err}");
    }

    /// `sae`'s pre-activations of `x`.
    fn pre(sae: &Sae, x: &[f32]) -> Vec<f32> {
        let w = &sae.weights;
        let sub = sae.cfg.subtracts_b_dec();
        (0..w.d_sae)
            .map(|j| {
                (0..w.d_in)
                    .map(|i| (x[i] - if sub { w.b_dec[i] } else { 0.0 }) * w.w_enc[i * w.d_sae + j])
                    .sum::<f32>()
                    + w.b_enc[j]
            })
            .collect()
    }

    #[test]
    fn folding_b_dec_keeps_pre_activations() {
        let x = [0.3f32, -1.0, 2.0];
        for ours in [true, false] {
            for target in [true, false] {
                let mut sae = tiny("standard", None, false);
                sae.cfg.apply_b_dec_to_input = Some(ours);
                let want = pre(&sae, &x);
                sae.weights.b_enc = b_enc_for(&sae, target);
                sae.cfg.apply_b_dec_to_input = Some(target);
                for (g, w) in pre(&sae, &x).iter().zip(&want) {
                    assert!((g - w).abs() < 1e-5, "{ours} {target}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn load_tells_the_layouts_apart_and_names_sparsify_hooks() {
        let root = tempfile::tempdir().unwrap();
        let sae = tiny("topk", Some(2), false);
        let lens = root.path().join("lens");
        sae.save(&lens, &[]).unwrap();
        assert_eq!(load(&lens, "", "").unwrap().weights, sae.weights);
        let run = root.path().join("run");
        export(&sae, &lens, Format::Sparsify, &run.join("layers.1")).unwrap();
        export(&sae, &lens, Format::Sparsify, &run.join("layers.2")).unwrap();
        let one = load(&run.join("layers.2"), "", "").unwrap();
        assert_eq!(one.weights, sae.weights);
        assert_eq!(one.cfg.hook_name, "layers.2");
        let err = load(&run, "", "").unwrap_err().to_string();
        assert!(
            err.contains("(layers.1, layers.2)") && err.contains("run/layers.1"),
            "{err}"
        );
        let err = load(root.path(), "", "").unwrap_err().to_string();
        assert!(err.contains("not an SAE"), "{err}");
    }
}
