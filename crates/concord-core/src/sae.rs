//! The SAE file format: a SAELens-layout folder with `cfg.json` and `sae_weights.safetensors`.
//!
//! Weights follow SAELens: `W_enc (d_in, d_sae)`, `b_enc (d_sae)`, `W_dec (d_sae, d_in)`,
//! `b_dec (d_in)`, and `threshold (d_sae)` for JumpReLU SAEs. Readers need only `d_in`,
//! `d_sae` and `architecture` in `cfg.json`, read `hook_name` and `model_name` (also under
//! SAELens 6's `metadata` object) when they are there, and keep keys they do not know, so a
//! folder read and written again loses nothing. Tensors may be stored as F32, F16 or BF16; in memory they are `f32`; folders are
//! written in F32 with `"dtype": "float32"`, the key SAELens 6 needs.
//!
//! SAELens 6 loads every folder written here as it is: `standard`, `topk` and `jumprelu`.
//! BatchTopK SAEs are written as SAELens 6 saves its own for inference, `jumprelu` with the
//! batch threshold in every feature's `threshold` (and `concord_architecture: "batchtopk"`);
//! older folders that say `batchtopk` still load here. Other packages' files
//! (sparsify, dictionary_learning) are read and written by [`crate::interop`].

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::{Dtype as StDtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result, fsutil};

pub const CFG_FILE: &str = "cfg.json";
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";
/// The `cfg.json` key SAELens 6 needs for the weights' type, and its value for ours (F32).
pub const SAELENS_DTYPE_KEY: &str = "dtype";
pub const SAELENS_DTYPE: &str = "float32";

/// `cfg.json` of an SAE folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaeConfig {
    pub d_in: usize,
    pub d_sae: usize,
    /// SAELens's architecture name: `standard` (ReLU), `topk`, `batchtopk`, `jumprelu`.
    pub architecture: String,
    /// Empty when the file does not say (a SAELens 6 folder made without metadata).
    #[serde(default)]
    pub hook_name: String,
    #[serde(default)]
    pub model_name: String,
    /// This project's variant (`relu-l1-faithful`, `relu-l1`, `topk`, `batchtopk`,
    /// `jumprelu`), when the SAE was trained here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concord_architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l1_coefficient: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_tokens: Option<u64>,
    /// Whether the encoder subtracts `b_dec` from its input (SAELens's default is true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_b_dec_to_input: Option<bool>,
    /// Keys this project does not interpret, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SaeConfig {
    /// Parses a `cfg.json` text; `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<SaeConfig> {
        let mut value: Value = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_owned(),
            source,
        })?;
        // SAELens 6 keeps hook and model names under `metadata`; lift them when absent above.
        if let Value::Object(top) = &mut value
            && let Some(Value::Object(meta)) = top.get("metadata").cloned()
        {
            for key in ["hook_name", "model_name"] {
                if !top.contains_key(key)
                    && let Some(v @ Value::String(_)) = meta.get(key)
                {
                    top.insert(key.to_owned(), v.clone());
                }
            }
        }
        let mut cfg: SaeConfig = serde_json::from_value(value).map_err(|source| Error::Json {
            path: path.to_owned(),
            source,
        })?;
        // The stored type of the weights describes the file, not the SAE (weights are `f32` in
        // memory); `Sae::save` writes the type it writes.
        cfg.extra.remove(SAELENS_DTYPE_KEY);
        Ok(cfg)
    }

    /// Whether the encoder subtracts `b_dec` before encoding (true unless the file says not).
    pub fn subtracts_b_dec(&self) -> bool {
        self.apply_b_dec_to_input.unwrap_or(true)
    }
}

/// The weights of an SAE, row-major `f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct SaeWeights {
    pub d_in: usize,
    pub d_sae: usize,
    /// `(d_in, d_sae)`.
    pub w_enc: Vec<f32>,
    /// `(d_sae)`.
    pub b_enc: Vec<f32>,
    /// `(d_sae, d_in)`: row `i` is feature `i`'s decoder direction.
    pub w_dec: Vec<f32>,
    /// `(d_in)`.
    pub b_dec: Vec<f32>,
    /// `(d_sae)`: JumpReLU thresholds, when the SAE has them.
    pub threshold: Option<Vec<f32>>,
}

impl SaeWeights {
    /// The decoder directions, `(d_sae, d_in)` (a view of `W_dec`).
    pub fn decoder_rows(&self) -> &[f32] {
        &self.w_dec
    }

    /// The encoder directions as rows, `(d_sae, d_in)`: the transpose of `W_enc`.
    pub fn encoder_rows(&self) -> Vec<f32> {
        let (d_in, d_sae) = (self.d_in, self.d_sae);
        let mut out = vec![0.0; d_in * d_sae];
        for i in 0..d_in {
            let row = &self.w_enc[i * d_sae..(i + 1) * d_sae];
            for (j, &v) in row.iter().enumerate() {
                out[j * d_in + i] = v;
            }
        }
        out
    }

    /// Reads a safetensors file holding `W_enc`, `b_enc`, `W_dec`, `b_dec` (and optionally
    /// `threshold`) with the shapes implied by `d_in` and `d_sae`.
    pub fn read_safetensors(path: &Path, d_in: usize, d_sae: usize) -> Result<SaeWeights> {
        let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = open_safetensors(&bytes, path)?;
        let req = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            tensor_f32(&st, path, name, shape)?.ok_or_else(|| Error::MissingTensor {
                path: path.to_owned(),
                name: name.into(),
            })
        };
        Ok(SaeWeights {
            d_in,
            d_sae,
            w_enc: req("W_enc", &[d_in, d_sae])?,
            b_enc: req("b_enc", &[d_sae])?,
            w_dec: req("W_dec", &[d_sae, d_in])?,
            b_dec: req("b_dec", &[d_in])?,
            threshold: tensor_f32(&st, path, "threshold", &[d_sae])?,
        })
    }

    /// The safetensors bytes of these weights, all F32.
    pub fn to_safetensors(&self) -> Vec<u8> {
        let mut tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![
            ("W_enc", vec![self.d_in, self.d_sae], &self.w_enc),
            ("b_enc", vec![self.d_sae], &self.b_enc),
            ("W_dec", vec![self.d_sae, self.d_in], &self.w_dec),
            ("b_dec", vec![self.d_in], &self.b_dec),
        ];
        if let Some(t) = &self.threshold {
            tensors.push(("threshold", vec![self.d_sae], t));
        }
        safetensors_f32(&tensors)
    }
}

/// Parses safetensors `bytes` read from `path` (named in errors).
pub(crate) fn open_safetensors<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Tensor `name` of `st` as `f32`, when present: an error when its shape is not `shape`, its
/// dtype not F32, F16 or BF16, or a value not finite.
pub(crate) fn tensor_f32(
    st: &SafeTensors<'_>,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Option<Vec<f32>>> {
    let Ok(view) = st.tensor(name) else {
        return Ok(None);
    };
    if view.shape() != shape {
        return Err(Error::ShapeMismatch {
            path: path.to_owned(),
            name: name.into(),
            expected: shape.to_vec(),
            got: view.shape().to_vec(),
        });
    }
    let values = to_f32(view.dtype(), view.data()).ok_or_else(|| Error::UnsupportedDtype {
        path: path.to_owned(),
        name: name.into(),
        dtype: format!("{:?}", view.dtype()),
    })?;
    check_finite(&values, path, name)?;
    Ok(Some(values))
}

/// An error naming the first non-finite value of tensor `name` of `path`.
pub(crate) fn check_finite(values: &[f32], path: &Path, name: &str) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            path: path.to_owned(),
            name: name.into(),
            index,
        }),
        None => Ok(()),
    }
}

/// The safetensors bytes of named F32 tensors `(name, shape, values)`; `values` holds the
/// product of `shape` elements.
pub fn safetensors_f32(tensors: &[(&str, Vec<usize>, &[f32])]) -> Vec<u8> {
    let bytes: Vec<(&str, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            (
                *n,
                s.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            let view = TensorView::new(StDtype::F32, s.clone(), b)
                .expect("shape and byte length agree by construction");
            (*n, view)
        })
        .collect();
    safetensors::serialize(views, None::<HashMap<String, String>>)
        .expect("serialising in-memory F32 tensors cannot fail")
}

fn to_f32(dtype: StDtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        StDtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        StDtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        StDtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// An SAE folder: its config and weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Sae {
    pub cfg: SaeConfig,
    pub weights: SaeWeights,
}

impl Sae {
    /// Reads a SAELens-layout folder.
    pub fn load(dir: &Path) -> Result<Sae> {
        let cfg_path = dir.join(CFG_FILE);
        let text = fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg = SaeConfig::from_json(&text, &cfg_path)?;
        if cfg.d_in == 0 || cfg.d_sae == 0 {
            return Err(Error::Invalid {
                path: cfg_path,
                reason: format!("empty SAE: d_in = {}, d_sae = {}", cfg.d_in, cfg.d_sae),
            });
        }
        let weights = SaeWeights::read_safetensors(&dir.join(WEIGHTS_FILE), cfg.d_in, cfg.d_sae)?;
        Ok(Sae { cfg, weights })
    }

    /// Writes the folder atomically: files go to a temporary sibling folder that is renamed
    /// onto `dir` (replacing an older one) only when complete.
    pub fn save(&self, dir: &Path, extra_files: &[(&str, &[u8])]) -> Result<()> {
        let json_err = |source| Error::Json {
            path: dir.join(CFG_FILE),
            source,
        };
        let mut cfg = serde_json::to_value(&self.cfg).map_err(json_err)?;
        // SAELens 6 reads `dtype` before anything else (`KeyError: 'dtype'` without it); it
        // names the weights' type as written, which is always F32.
        cfg[SAELENS_DTYPE_KEY] = Value::from(SAELENS_DTYPE);
        let cfg = serde_json::to_vec_pretty(&cfg).map_err(json_err)?;
        let weights = self.weights.to_safetensors();
        let mut files: Vec<(&str, &[u8])> = vec![(CFG_FILE, &cfg), (WEIGHTS_FILE, &weights)];
        files.extend_from_slice(extra_files);
        write_dir_atomic(dir, &files)
    }
}

/// Writes a folder of files atomically (see [`Sae::save`]).
pub fn write_dir_atomic(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    recover_dir(dir)?;
    let tmp: PathBuf = fsutil::temp_path(dir);
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for (name, bytes) in files {
        let path = tmp.join(name);
        fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    }
    if !dir.exists() {
        return fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e));
    }
    // Move the old folder aside before the new one takes its name, and delete it only then:
    // a crash leaves the old folder (under its aside name) or the new one, never neither.
    let old = fsutil::temp_path(dir).with_extension("old");
    let _ = fs::remove_dir_all(&old);
    fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))
}

/// Repairs what a killed [`write_dir_atomic`] of `dir` left: when `dir` is missing but its
/// previous version was moved aside (`.NAME.tmp-PID.old`), that version takes its name back;
/// then every leftover temporary sibling (`.NAME.tmp-*`, of any process) is removed. Call it
/// before asking whether `dir` exists.
pub fn recover_dir(dir: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Ok(());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(());
    };
    let mut leftovers: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    leftovers.sort();
    if !dir.exists()
        && let Some(old) = leftovers
            .iter()
            .find(|p| p.extension().is_some_and(|x| x == "old"))
    {
        fs::rename(old, dir).map_err(|e| Error::io(dir, e))?;
    }
    for path in leftovers.iter().filter(|p| p.exists()) {
        fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_folder_write_is_repaired() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ckpt");
        write_dir_atomic(&dir, &[("a", b"1")]).unwrap();
        // Killed while writing the next version (its temporary folder left behind), then
        // between the two renames (the old version aside, the new one not yet in place).
        fs::create_dir(root.path().join(".ckpt.tmp-99999")).unwrap();
        fs::rename(&dir, root.path().join(".ckpt.tmp-99998.old")).unwrap();
        recover_dir(&dir).unwrap();
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"1");
        let names: Vec<String> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ckpt"]);
        write_dir_atomic(&dir, &[("a", b"2")]).unwrap();
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"2");
    }

    fn tiny() -> Sae {
        let (d_in, d_sae) = (3, 4);
        let w_enc: Vec<f32> = (0..d_in * d_sae).map(|i| i as f32 * 0.5).collect();
        let cfg = SaeConfig::from_json(
            r#"{"d_in": 3, "d_sae": 4, "architecture": "standard",
                "hook_name": "blocks.0.hook_mlp_out", "model_name": "m", "device": "cpu"}"#,
            Path::new("cfg.json"),
        )
        .unwrap();
        Sae {
            cfg,
            weights: SaeWeights {
                d_in,
                d_sae,
                w_enc,
                b_enc: vec![0.1; d_sae],
                w_dec: (0..d_in * d_sae).map(|i| -(i as f32)).collect(),
                b_dec: vec![1.0, 2.0, 3.0],
                threshold: None,
            },
        }
    }

    #[test]
    fn folder_round_trips_and_keeps_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("concord-core-sae-{}", std::process::id()));
        let sae = tiny();
        sae.save(&dir, &[("metrics.json", b"{}")]).unwrap();
        let back = Sae::load(&dir).unwrap();
        assert_eq!(back, sae);
        assert_eq!(back.cfg.extra["device"], "cpu");
        // SAELens 6 reads `dtype` first; it is the file's, not kept in memory.
        let text = fs::read_to_string(dir.join(CFG_FILE)).unwrap();
        assert!(text.contains(r#""dtype": "float32""#), "{text}");
        assert!(!back.cfg.extra.contains_key(SAELENS_DTYPE_KEY));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn encoder_rows_transpose_w_enc() {
        let sae = tiny();
        let rows = sae.weights.encoder_rows();
        // Feature j's encoder direction is column j of W_enc (d_in = 3, d_sae = 4).
        assert_eq!(&rows[0..3], &[0.0, 2.0, 4.0]);
        assert_eq!(&rows[3..6], &[0.5, 2.5, 4.5]);
    }

    #[test]
    fn saelens6_metadata_is_lifted() {
        let cfg = SaeConfig::from_json(
            r#"{"d_in": 3, "d_sae": 4, "architecture": "topk", "k": 2,
                "metadata": {"hook_name": "blocks.1.hook_resid_post", "model_name": "gpt2"}}"#,
            Path::new("cfg.json"),
        )
        .unwrap();
        assert_eq!(cfg.hook_name, "blocks.1.hook_resid_post");
        assert_eq!(cfg.k, Some(2));
        // What SAELens 6's `save_model` writes for an SAE made without names.
        let cfg = SaeConfig::from_json(
            r#"{"d_in": 3, "d_sae": 4, "architecture": "standard", "dtype": "float32",
                "metadata": {"sae_lens_version": "6.54.12", "hook_name": null}}"#,
            Path::new("cfg.json"),
        )
        .unwrap();
        assert_eq!((cfg.hook_name.as_str(), cfg.model_name.as_str()), ("", ""));
    }

    #[test]
    fn bad_weights_are_named() {
        let dir = std::env::temp_dir().join(format!("concord-core-saebad-{}", std::process::id()));
        let mut sae = tiny();
        sae.weights.w_dec[5] = f32::NAN;
        sae.save(&dir, &[]).unwrap();
        let err = Sae::load(&dir).unwrap_err().to_string();
        assert!(err.contains("W_dec") && err.contains("index 5"), "{err}");
        fs::write(dir.join(WEIGHTS_FILE), b"not a safetensors file").unwrap();
        let err = Sae::load(&dir).unwrap_err().to_string();
        assert!(err.contains(WEIGHTS_FILE), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
