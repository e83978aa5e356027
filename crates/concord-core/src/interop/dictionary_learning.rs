//! dictionary_learning (PyPI `dictionary-learning`) SAEs: `ae.pt`, a `torch.save`d state dict,
//! with the `config.json` its training writes beside it (`{"trainer": {"dict_class": ...}}`).
//!
//! The dictionary classes it has and how they map onto SAELens's architectures:
//!
//! | class | state dict | encode |
//! |---|---|---|
//! | `AutoEncoder` | `encoder.weight (d_sae, d_in)`, `encoder.bias`, `decoder.weight (d_in, d_sae)`, `bias (d_in)` | `relu(encoder(x - bias))`: `standard` |
//! | `AutoEncoderTopK` | `encoder.*`, `decoder.weight`, `b_dec`, `k` (int), `threshold` (scalar) | the `k` largest of `relu(encoder(x - b_dec))`: `topk` |
//! | `BatchTopKSAE` | as `AutoEncoderTopK` | `relu(..) * (relu(..) > threshold)`: `jumprelu` with the threshold in every feature |
//! | `JumpReluAutoEncoder` | `W_enc (d_in, d_sae)`, `b_enc`, `W_dec (d_sae, d_in)`, `b_dec`, `threshold (d_sae)` | `relu(pre * (pre > threshold))`, `pre = x W_enc + b_enc` (no `b_dec` subtracted): `jumprelu` |
//!
//! `AutoEncoderTopK` and `BatchTopKSAE` hold the same tensors; `config.json`'s
//! `trainer.dict_class` tells them apart. Codes read here are those of the saved module:
//! `AutoEncoder.from_pretrained` by default rescales features to unit decoder norms when they
//! are not (`normalize_decoder=True`), which changes code magnitudes (not their directions,
//! the reconstruction, L0 or correlations); SAEs trained here have unit-norm decoders, so
//! their exports load with the same codes either way.

use std::fs;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::{Encoder, b_enc_for, cfg_path, encoder, transpose};
use crate::sae::{Sae, SaeConfig, SaeWeights, check_finite, write_dir_atomic};
use crate::torch_file::{StateTensor, read_state_dict, write_state_dict};
use crate::{Error, Result};

/// The state dict's file name in a dictionary_learning folder.
pub const AE_FILE: &str = "ae.pt";
/// The training config beside it.
pub const CONFIG_FILE: &str = "config.json";

/// The dictionary classes this module reads and writes.
pub const CLASSES: &str = "AutoEncoder, AutoEncoderTopK, BatchTopKSAE, JumpReluAutoEncoder";

/// Reads the `ae.pt` at `path` (and the `config.json` beside it, when there is one).
/// `hook_name` and `model_name` name the SAE (the state dict does not).
pub fn load(path: &Path, hook_name: &str, model_name: &str) -> Result<Sae> {
    let bytes = fs::read(path).map_err(|e| Error::Io {
        path: path.to_owned(),
        source: e,
    })?;
    let tensors = read_state_dict(&bytes).map_err(|reason| Error::Invalid {
        path: path.to_owned(),
        reason: format!("not a torch.save'd state dict: {reason}"),
    })?;
    from_state_dict(
        &tensors,
        dict_class(path)?.as_deref(),
        path,
        hook_name,
        model_name,
    )
}

/// `trainer.dict_class` of the `config.json` beside `ae_path`, when there is one.
pub fn dict_class(ae_path: &Path) -> Result<Option<String>> {
    let cfg = ae_path.with_file_name(CONFIG_FILE);
    if !cfg.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(&cfg).map_err(|e| Error::Io {
        path: cfg.clone(),
        source: e,
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: cfg.clone(),
        source,
    })?;
    Ok(value
        .pointer("/trainer/dict_class")
        .and_then(Value::as_str)
        .map(str::to_owned))
}

/// An SAE from the tensors of a dictionary_learning state dict read from `path` (named in
/// errors); `dict_class` is `config.json`'s `trainer.dict_class`, needed only to tell
/// `AutoEncoderTopK` from `BatchTopKSAE`. Tensor names may use `|` for `.` (libtorch's
/// reader spells them so).
pub fn from_state_dict(
    tensors: &[(String, StateTensor)],
    dict_class: Option<&str>,
    path: &Path,
    hook_name: &str,
    model_name: &str,
) -> Result<Sae> {
    let bad = |reason: String| Error::Invalid {
        path: path.to_owned(),
        reason,
    };
    let find = |name: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == name || n.replace('|', ".") == name)
            .map(|(_, t)| t)
    };
    let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        let t = find(name).ok_or_else(|| Error::MissingTensor {
            path: path.to_owned(),
            name: name.into(),
        })?;
        if t.shape != shape {
            return Err(Error::ShapeMismatch {
                path: path.to_owned(),
                name: name.into(),
                expected: shape.to_vec(),
                got: t.shape.clone(),
            });
        }
        check_finite(&t.data, path, name)?;
        Ok(t.data.clone())
    };
    let class = if find("r_mag").is_some() || find("gate_bias").is_some() {
        return Err(bad(format!(
            "a GatedAutoEncoder: not supported (supported: {CLASSES})"
        )));
    } else if find("W_enc").is_some() {
        "JumpReluAutoEncoder"
    } else if find("bias").is_some() {
        "AutoEncoder"
    } else if find("k").is_some() {
        match dict_class {
            Some(c @ ("AutoEncoderTopK" | "BatchTopKSAE")) => c,
            Some(other) => {
                return Err(bad(format!(
                    "config.json names dict_class {other:?}, not supported (supported: {CLASSES})"
                )));
            }
            None => {
                return Err(bad(format!(
                    "holds k and threshold, as AutoEncoderTopK and BatchTopKSAE do: the {CONFIG_FILE} \
                     dictionary_learning writes beside it names which (trainer.dict_class), and \
                     there is none"
                )));
            }
        }
    } else {
        return Err(Error::MissingTensor {
            path: path.to_owned(),
            name: "encoder.weight".into(),
        });
    };
    let (d_in, d_sae) = match (class, find("W_enc"), find("encoder.weight")) {
        ("JumpReluAutoEncoder", Some(t), _) if t.shape.len() == 2 => (t.shape[0], t.shape[1]),
        (_, _, Some(t)) if t.shape.len() == 2 => (t.shape[1], t.shape[0]),
        _ => {
            return Err(bad(
                "the encoder weight is not a matrix (d_sae, d_in)".into()
            ));
        }
    };
    let scalar = |name: &str| -> Result<f32> {
        let v = get(name, &[])?;
        Ok(v[0])
    };
    let mut arch = "standard";
    let mut k = None;
    let mut subtracts = true;
    let weights = if class == "JumpReluAutoEncoder" {
        arch = "jumprelu";
        subtracts = false;
        SaeWeights {
            d_in,
            d_sae,
            w_enc: get("W_enc", &[d_in, d_sae])?,
            b_enc: get("b_enc", &[d_sae])?,
            w_dec: get("W_dec", &[d_sae, d_in])?,
            b_dec: get("b_dec", &[d_in])?,
            threshold: Some(get("threshold", &[d_sae])?),
        }
    } else {
        let b_dec_name = if class == "AutoEncoder" {
            "bias"
        } else {
            "b_dec"
        };
        let mut threshold = None;
        if class != "AutoEncoder" {
            let kv = scalar("k")?;
            if kv < 1.0 || kv.fract() != 0.0 || kv as usize > d_sae {
                return Err(bad(format!("k = {kv} outside 1..={d_sae}")));
            }
            k = Some(kv as usize);
            if class == "AutoEncoderTopK" {
                arch = "topk";
            } else {
                arch = "jumprelu";
                threshold = Some(vec![scalar("threshold")?; d_sae]);
            }
        }
        SaeWeights {
            d_in,
            d_sae,
            w_enc: transpose(&get("encoder.weight", &[d_sae, d_in])?, d_sae, d_in),
            b_enc: get("encoder.bias", &[d_sae])?,
            w_dec: transpose(&get("decoder.weight", &[d_in, d_sae])?, d_in, d_sae),
            b_dec: get(b_dec_name, &[d_in])?,
            threshold,
        }
    };
    let mut extra = Map::new();
    extra.insert("source".into(), Value::from("dictionary_learning"));
    extra.insert(
        "source_path".into(),
        Value::from(path.display().to_string()),
    );
    extra.insert("dict_class".into(), Value::from(class));
    let cfg = SaeConfig {
        d_in,
        d_sae,
        architecture: arch.into(),
        hook_name: hook_name.to_owned(),
        model_name: model_name.to_owned(),
        concord_architecture: None,
        k,
        l1_coefficient: None,
        init_seed: None,
        data_seed: None,
        training_tokens: None,
        apply_b_dec_to_input: Some(subtracts),
        extra,
    };
    Ok(Sae { cfg, weights })
}

/// Writes `sae` (read from `from`) as the dictionary_learning folder `out`: `ae.pt`, which the
/// class named in `config.json` loads with `from_pretrained(out/ae.pt)` and the same codes,
/// and `config.json`. ReLU SAEs become `AutoEncoder`, TopK `AutoEncoderTopK`, BatchTopK (a
/// threshold shared by every feature and a `k`) `BatchTopKSAE`, and JumpReLU
/// `JumpReluAutoEncoder` (whose encoder does not subtract `b_dec`: it is folded into `b_enc`,
/// which moves pre-activations by rounding only).
pub fn write(sae: &Sae, from: &Path, out: &Path) -> Result<()> {
    let w = &sae.weights;
    let (d_in, d_sae) = (w.d_in, w.d_sae);
    let enc = || StateTensor::f32(&[d_sae, d_in], transpose(&w.w_enc, d_in, d_sae));
    let dec = || StateTensor::f32(&[d_in, d_sae], transpose(&w.w_dec, d_sae, d_in));
    let vec1 = |v: Vec<f32>| StateTensor::f32(&[v.len()], v);
    let shared_threshold = w
        .threshold
        .as_ref()
        .and_then(|t| t.iter().all(|&v| v == t[0]).then(|| t[0]));
    let (class, tensors): (&str, Vec<(&str, StateTensor)>) = match encoder(sae, from)? {
        Encoder::Relu => (
            "AutoEncoder",
            vec![
                ("bias", vec1(w.b_dec.clone())),
                ("encoder.weight", enc()),
                ("encoder.bias", vec1(b_enc_for(sae, true))),
                ("decoder.weight", dec()),
            ],
        ),
        Encoder::TopK(k) => (
            "AutoEncoderTopK",
            k_tensors(sae, from, k, -1.0, enc(), dec())?,
        ),
        Encoder::Threshold => match (sae.cfg.k, shared_threshold) {
            (Some(k), Some(th)) => ("BatchTopKSAE", k_tensors(sae, from, k, th, enc(), dec())?),
            _ => (
                "JumpReluAutoEncoder",
                vec![
                    ("W_enc", StateTensor::f32(&[d_in, d_sae], w.w_enc.clone())),
                    ("b_enc", vec1(b_enc_for(sae, false))),
                    ("W_dec", StateTensor::f32(&[d_sae, d_in], w.w_dec.clone())),
                    ("b_dec", vec1(w.b_dec.clone())),
                    (
                        "threshold",
                        vec1(w.threshold.clone().expect("a threshold encoder has one")),
                    ),
                ],
            ),
        },
    };
    let named: Vec<(&str, &StateTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let ae = write_state_dict(&named).map_err(|reason| Error::Invalid {
        path: out.join(AE_FILE),
        reason,
    })?;
    let layer = sae
        .cfg
        .hook_name
        .strip_prefix("blocks.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse::<u64>().ok());
    let mut trainer = json!({
        "dict_class": class,
        "trainer_class": "concord export",
        "activation_dim": d_in,
        "dict_size": d_sae,
        "lm_name": sae.cfg.model_name,
        "submodule_name": sae.cfg.hook_name,
        "layer": layer,
    });
    if let Some(k) = sae.cfg.k.filter(|_| class != "AutoEncoder") {
        trainer["k"] = json!(k);
    }
    let config = serde_json::to_vec_pretty(&json!({ "trainer": trainer })).map_err(|source| {
        Error::Json {
            path: out.join(CONFIG_FILE),
            source,
        }
    })?;
    write_dir_atomic(out, &[(AE_FILE, &ae), (CONFIG_FILE, &config)])
}

/// The state dict of `AutoEncoderTopK` and `BatchTopKSAE`.
fn k_tensors(
    sae: &Sae,
    from: &Path,
    k: usize,
    threshold: f32,
    enc: StateTensor,
    dec: StateTensor,
) -> Result<Vec<(&'static str, StateTensor)>> {
    let w = &sae.weights;
    let k = i32::try_from(k).map_err(|_| Error::Invalid {
        path: cfg_path(from),
        reason: format!("k = {k} does not fit an int32"),
    })?;
    Ok(vec![
        ("k", StateTensor::scalar_i32(k)),
        ("threshold", StateTensor::f32(&[], vec![threshold])),
        ("decoder.weight", dec),
        ("encoder.weight", enc),
        (
            "encoder.bias",
            StateTensor::f32(&[w.d_sae], b_enc_for(sae, true)),
        ),
        ("b_dec", StateTensor::f32(&[w.d_in], w.b_dec.clone())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interop::tests::tiny;

    #[test]
    fn every_encoder_round_trips_through_ae_pt() {
        let root = tempfile::tempdir().unwrap();
        let cases = [
            ("standard", None, false, "AutoEncoder", "standard"),
            ("topk", Some(2), false, "AutoEncoderTopK", "topk"),
            ("jumprelu", Some(2), true, "BatchTopKSAE", "jumprelu"),
            // A BatchTopK folder written before SAELens 6's layout.
            ("batchtopk", Some(2), true, "BatchTopKSAE", "jumprelu"),
            ("jumprelu", None, true, "JumpReluAutoEncoder", "jumprelu"),
        ];
        for (arch, k, th, class, back_arch) in cases {
            let sae = tiny(arch, k, th);
            let out = root.path().join(class);
            write(&sae, Path::new("in"), &out).unwrap();
            assert_eq!(
                dict_class(&out.join(AE_FILE)).unwrap().as_deref(),
                Some(class)
            );
            let back = load(&out.join(AE_FILE), "h", "m").unwrap();
            assert_eq!(back.cfg.architecture, back_arch, "{class}");
            assert_eq!(back.cfg.k, k, "{class}");
            let w = &back.weights;
            assert_eq!(
                (&w.w_enc, &w.w_dec, &w.b_dec),
                (&sae.weights.w_enc, &sae.weights.w_dec, &sae.weights.b_dec)
            );
            assert_eq!(w.threshold, sae.weights.threshold, "{class}");
            // JumpReluAutoEncoder does not subtract b_dec: its b_enc carries it.
            let subtracts = class != "JumpReluAutoEncoder";
            assert_eq!(back.cfg.apply_b_dec_to_input, Some(subtracts));
            assert_eq!(w.b_enc, b_enc_for(&sae, subtracts), "{class}");
        }
    }

    #[test]
    fn ambiguous_and_unsupported_state_dicts_are_named() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("t");
        write(&tiny("topk", Some(2), false), Path::new("in"), &out).unwrap();
        fs::remove_file(out.join(CONFIG_FILE)).unwrap();
        let err = load(&out.join(AE_FILE), "", "").unwrap_err().to_string();
        assert!(
            err.contains("trainer.dict_class") && err.contains("ae.pt"),
            "{err}"
        );
        let gated = write_state_dict(&[("r_mag", &StateTensor::f32(&[2], vec![0.0; 2]))]).unwrap();
        fs::write(out.join(AE_FILE), gated).unwrap();
        let err = load(&out.join(AE_FILE), "", "").unwrap_err().to_string();
        assert!(
            err.contains("GatedAutoEncoder") && err.contains(CLASSES),
            "{err}"
        );
        fs::write(out.join(AE_FILE), b"junk").unwrap();
        let err = load(&out.join(AE_FILE), "", "").unwrap_err().to_string();
        assert!(err.contains("not a torch.save'd state dict"), "{err}");
    }
}
