//! Imports of the field's SAE files: SAELens folders and dictionary_learning `ae.pt`.

use std::path::Path;

use serde_json::{Map, Value};
use tch::{Kind, Tensor};

use concord_core::sae::Sae;
use concord_core::{SaeConfig, SaeWeights};

use crate::init::transpose;
use crate::trainer::to_vec;
use crate::{Error, Result};

/// Reads a SAELens-layout folder (any `cfg.json` with at least `d_in`, `d_sae`,
/// `architecture`, `hook_name`, `model_name`; unknown keys kept).
pub fn load_saelens(dir: &Path) -> Result<Sae> {
    Ok(Sae::load(dir)?)
}

/// Reads a dictionary_learning `AutoEncoder` state dict saved with `torch.save` (a plain
/// dict or `nn.Module.state_dict()`'s `OrderedDict`;
/// `encoder.weight (d_sae, d_in)`, `encoder.bias (d_sae)`, `decoder.weight (d_in, d_sae)`,
/// `bias (d_in)`; `encode(x) = ReLU(encoder(x - bias))`, `decode(c) = decoder(c) + bias`) as
/// an SAE in our layout (`standard`, `apply_b_dec_to_input: true`).
pub fn load_dictionary_learning(path: &Path, hook_name: &str, model_name: &str) -> Result<Sae> {
    let bad = |reason: String| Error::Import {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    // Our reader takes plain dicts and `OrderedDict`s (`nn.Module.state_dict()`, which
    // libtorch's unpickler reads as `None`); libtorch's stays as the fallback for other layouts.
    let tensors = match crate::pickle::read_state_dict(&bytes) {
        Ok(t) => t,
        Err(reason) => Tensor::loadz_multi(path)
            .map_err(|_| bad(format!("not a torch.save'd state dict: {reason}")))?,
    };
    let get = |name: &str| -> Result<&Tensor> {
        tensors
            .iter()
            .find(|(n, _)| n == name || n.replace('|', ".") == name)
            .map(|(_, t)| t)
            .ok_or_else(|| bad(format!("missing tensor {name:?}")))
    };
    let enc = get("encoder.weight")?;
    let size = enc.size();
    let [d_sae, d_in] = size[..] else {
        return Err(bad(format!(
            "encoder.weight has shape {size:?}, expected (d_sae, d_in)"
        )));
    };
    let expect = |name: &str, shape: &[i64]| -> Result<Vec<f32>> {
        let t = get(name)?;
        if t.size() != shape {
            return Err(bad(format!(
                "{name} has shape {:?}, expected {shape:?}",
                t.size()
            )));
        }
        let v = to_vec(&t.f_to_kind(Kind::Float)?)?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!("{name} holds a non-finite value at index {i}")));
        }
        Ok(v)
    };
    let (n, d) = (d_sae as usize, d_in as usize);
    let enc_rows = expect("encoder.weight", &[d_sae, d_in])?;
    let b_enc = expect("encoder.bias", &[d_sae])?;
    let dec = expect("decoder.weight", &[d_in, d_sae])?;
    let b_dec = expect("bias", &[d_in])?;
    let mut extra = Map::new();
    extra.insert("source".into(), Value::from("dictionary_learning"));
    extra.insert(
        "source_path".into(),
        Value::from(path.display().to_string()),
    );
    let cfg = SaeConfig {
        d_in: d,
        d_sae: n,
        architecture: "standard".into(),
        hook_name: hook_name.to_owned(),
        model_name: model_name.to_owned(),
        concord_architecture: None,
        k: None,
        l1_coefficient: None,
        init_seed: None,
        data_seed: None,
        training_tokens: None,
        apply_b_dec_to_input: Some(true),
        extra,
    };
    let weights = SaeWeights {
        d_in: d,
        d_sae: n,
        // encoder.weight (d_sae, d_in) -> W_enc (d_in, d_sae); decoder.weight (d_in, d_sae) ->
        // W_dec (d_sae, d_in).
        w_enc: transpose(&enc_rows, n, d),
        b_enc,
        w_dec: transpose(&dec, d, n),
        b_dec,
        threshold: None,
    };
    Ok(Sae { cfg, weights })
}
