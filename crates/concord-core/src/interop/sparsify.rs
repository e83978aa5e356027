//! sparsify (PyPI `eai-sparsify`) SAE folders: one per hook point, `cfg.json` +
//! `sae.safetensors`, as `SparseCoder.save_to_disk` writes them and `load_from_disk` reads them.
//!
//! `cfg.json` holds `d_in`, `k`, `activation` (`topk`; `groupmax` is not read), `num_latents`
//! (0: `d_in * expansion_factor`), `skip_connection` and `transcode` (both refused: neither
//! is an SAE's encode and decode). The weights are `encoder.weight (d_sae, d_in)`,
//! `encoder.bias (d_sae)`, `W_dec (d_sae, d_in)` and `b_dec (d_in)`, in any of F32, F16, BF16.
//! sparsify encodes `topk(relu((x - b_dec) W_enc^T + b_enc), k)` and decodes
//! `codes W_dec + b_dec`: SAELens's `topk` with `apply_b_dec_to_input`.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use super::{Encoder, Format, b_enc_for, cfg_path, encoder, transpose, unsupported};
use crate::sae::{
    CFG_FILE, Sae, SaeConfig, SaeWeights, open_safetensors, safetensors_f32, tensor_f32,
    write_dir_atomic,
};
use crate::{Error, Result};

/// sparsify's weights file.
pub const WEIGHTS_FILE: &str = "sae.safetensors";

/// The sub-folders of `dir` that hold a sparsify SAE, sorted by name.
pub fn hook_folders(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(WEIGHTS_FILE).is_file() && p.join(CFG_FILE).is_file())
        .collect();
    out.sort();
    out
}

/// Reads the sparsify folder `dir` (one hook point) as a `topk` SAE. `hook_name` and
/// `model_name` name it (sparsify's files do not); an empty `hook_name` takes the folder's
/// name, sparsify's hook point.
pub fn load(dir: &Path, hook_name: &str, model_name: &str) -> Result<Sae> {
    let cfg_file = cfg_path(dir);
    let text = fs::read_to_string(&cfg_file).map_err(|e| Error::Io {
        path: cfg_file.clone(),
        source: e,
    })?;
    let raw: Map<String, Value> = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: cfg_file.clone(),
        source,
    })?;
    let bad = |reason: String| Error::Invalid {
        path: cfg_file.clone(),
        reason,
    };
    let count = |key: &str| -> Result<Option<usize>> {
        match raw.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| bad(format!("{key} = {v} is not a count"))),
        }
    };
    let flag = |key: &str| raw.get(key).and_then(Value::as_bool).unwrap_or(false);
    let d_in = count("d_in")?.ok_or_else(|| bad("no d_in".into()))?;
    let k = count("k")?.unwrap_or(32);
    let d_sae = match count("num_latents")? {
        Some(n) if n > 0 => n,
        _ => d_in * count("expansion_factor")?.unwrap_or(32),
    };
    let activation = raw
        .get("activation")
        .and_then(Value::as_str)
        .unwrap_or("topk");
    if activation != "topk" {
        return Err(bad(format!(
            "activation {activation:?} is not supported (only topk)"
        )));
    }
    for key in ["transcode", "skip_connection"] {
        if flag(key) {
            return Err(bad(format!(
                "{key} is true: not an SAE that encodes and decodes the same activations"
            )));
        }
    }
    if d_in == 0 || d_sae == 0 || k == 0 || k > d_sae {
        return Err(bad(format!(
            "d_in = {d_in}, num_latents = {d_sae}, k = {k}: expected k in 1..=num_latents"
        )));
    }
    let path = dir.join(WEIGHTS_FILE);
    let bytes = fs::read(&path).map_err(|e| Error::Io {
        path: path.clone(),
        source: e,
    })?;
    let st = open_safetensors(&bytes, &path)?;
    let req = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
        tensor_f32(&st, &path, name, shape)?.ok_or_else(|| Error::MissingTensor {
            path: path.clone(),
            name: name.into(),
        })
    };
    let enc = req("encoder.weight", &[d_sae, d_in])?;
    let weights = SaeWeights {
        d_in,
        d_sae,
        w_enc: transpose(&enc, d_sae, d_in),
        b_enc: req("encoder.bias", &[d_sae])?,
        w_dec: req("W_dec", &[d_sae, d_in])?,
        b_dec: req("b_dec", &[d_in])?,
        threshold: None,
    };
    let folder = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut extra = Map::new();
    extra.insert("source".into(), Value::from("sparsify"));
    extra.insert("source_path".into(), Value::from(dir.display().to_string()));
    let cfg = SaeConfig {
        d_in,
        d_sae,
        architecture: "topk".into(),
        hook_name: if hook_name.is_empty() {
            folder
        } else {
            hook_name.to_owned()
        },
        model_name: model_name.to_owned(),
        concord_architecture: None,
        k: Some(k),
        l1_coefficient: None,
        init_seed: None,
        data_seed: None,
        training_tokens: None,
        apply_b_dec_to_input: Some(true),
        extra,
    };
    Ok(Sae { cfg, weights })
}

/// Writes `sae` (read from `from`) as the sparsify folder `out`, which
/// `sparsify.Sae.load_from_disk(out)` loads with the same codes. TopK SAEs only: sparsify
/// has no other encoder.
pub fn write(sae: &Sae, from: &Path, out: &Path) -> Result<()> {
    let Encoder::TopK(k) = encoder(sae, from)? else {
        return Err(unsupported(from, sae, Format::Sparsify, "topk SAEs only"));
    };
    let w = &sae.weights;
    // sparsify always subtracts b_dec before encoding.
    let b_enc = b_enc_for(sae, true);
    let enc = transpose(&w.w_enc, w.d_in, w.d_sae);
    let weights = safetensors_f32(&[
        ("encoder.weight", vec![w.d_sae, w.d_in], &enc),
        ("encoder.bias", vec![w.d_sae], &b_enc),
        ("W_dec", vec![w.d_sae, w.d_in], &w.w_dec),
        ("b_dec", vec![w.d_in], &w.b_dec),
    ]);
    let cfg = json!({
        "activation": "topk",
        "expansion_factor": (w.d_sae / w.d_in).max(1),
        "normalize_decoder": true,
        "num_latents": w.d_sae,
        "k": k,
        "multi_topk": false,
        "skip_connection": false,
        "transcode": false,
        "d_in": w.d_in,
    });
    let cfg = serde_json::to_vec_pretty(&cfg).map_err(|source| Error::Json {
        path: cfg_path(out),
        source,
    })?;
    write_dir_atomic(out, &[(CFG_FILE, &cfg), (WEIGHTS_FILE, &weights)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interop::tests::tiny;

    #[test]
    fn topk_round_trips_and_other_encoders_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let mut sae = tiny("topk", Some(2), false);
        let out = root.path().join("blocks.0.hook_resid_post");
        write(&sae, Path::new("in"), &out).unwrap();
        let back = load(&out, "", "m").unwrap();
        assert_eq!(back.weights, sae.weights);
        assert_eq!(
            (back.cfg.k, back.cfg.hook_name.as_str()),
            (Some(2), "blocks.0.hook_resid_post")
        );
        // An encoder that does not subtract b_dec is folded into b_enc.
        sae.cfg.apply_b_dec_to_input = Some(false);
        write(&sae, Path::new("in"), &out).unwrap();
        assert_eq!(
            load(&out, "h", "m").unwrap().weights.b_enc,
            b_enc_for(&sae, true)
        );
        for (arch, k, th) in [("standard", None, false), ("jumprelu", None, true)] {
            let err = write(&tiny(arch, k, th), Path::new("in"), &out)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("a {arch} SAE cannot be exported to sparsify"))
                    && err.contains("topk SAEs only"),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_configs_are_named() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("layers.0");
        write(&tiny("topk", Some(2), false), Path::new("in"), &dir).unwrap();
        let check = |cfg: &str, expected: &str| {
            fs::write(dir.join(CFG_FILE), cfg).unwrap();
            let err = load(&dir, "", "").unwrap_err().to_string();
            assert!(err.contains(expected) && err.contains("cfg.json"), "{err}");
        };
        check(
            r#"{"d_in": 3, "num_latents": 5, "k": 2, "activation": "groupmax"}"#,
            "groupmax",
        );
        check(
            r#"{"d_in": 3, "num_latents": 5, "k": 2, "transcode": true}"#,
            "transcode",
        );
        check(r#"{"d_in": 3, "num_latents": 5, "k": 9}"#, "k = 9");
        check(r#"{"num_latents": 5}"#, "no d_in");
        fs::write(
            dir.join(CFG_FILE),
            r#"{"d_in": 4, "num_latents": 5, "k": 2}"#,
        )
        .unwrap();
        let err = load(&dir, "", "").unwrap_err().to_string();
        assert!(
            err.contains("encoder.weight") && err.contains("[5, 4]"),
            "{err}"
        );
    }
}
