//! Imports of the field's SAE files: SAELens folders, sparsify hook folders and
//! dictionary_learning `ae.pt` (read by `concord_core::interop`, in pure Rust), with
//! libtorch's own reader as the fallback for `.pt` archives that reader does not parse.

use std::path::Path;

use tch::{Kind, Tensor};

use concord_core::interop::{self, dictionary_learning};
use concord_core::sae::Sae;
use concord_core::torch_file::{StateTensor, TorchDtype, read_state_dict};

use crate::trainer::to_vec;
use crate::{Error, Result};

/// Reads a SAELens-layout folder (any `cfg.json` with at least `d_in`, `d_sae`,
/// `architecture`, `hook_name`, `model_name`; unknown keys kept).
pub fn load_saelens(dir: &Path) -> Result<Sae> {
    Ok(Sae::load(dir)?)
}

/// Reads an SAE whatever package wrote it (see `concord_core::interop::load`): a SAELens
/// folder, a sparsify hook folder, or a dictionary_learning `ae.pt` (or a folder holding
/// one). `hook_name` and `model_name` name SAEs whose files do not.
pub fn load_sae(path: &Path, hook_name: &str, model_name: &str) -> Result<Sae> {
    let ae = path.join(dictionary_learning::AE_FILE);
    if path.is_file() {
        load_dictionary_learning(path, hook_name, model_name)
    } else if !path.join(concord_core::sae::WEIGHTS_FILE).is_file() && ae.is_file() {
        load_dictionary_learning(&ae, hook_name, model_name)
    } else {
        Ok(interop::load(path, hook_name, model_name)?)
    }
}

/// Reads a dictionary_learning state dict saved with `torch.save` (a plain dict or
/// `nn.Module.state_dict()`'s `OrderedDict`) as an SAE in our layout; the classes and how they
/// map are in `concord_core::interop::dictionary_learning` (`AutoEncoder`: `standard`, the
/// `config.json` beside it tells `AutoEncoderTopK` from `BatchTopKSAE`).
pub fn load_dictionary_learning(path: &Path, hook_name: &str, model_name: &str) -> Result<Sae> {
    let bad = |reason: String| Error::Import {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    let tensors = match read_state_dict(&bytes) {
        Ok(t) => t,
        // libtorch's unpickler stays as the fallback for layouts the pure-Rust reader does not
        // parse (it reads `OrderedDict`s as `None`, so not the other way round).
        Err(reason) => Tensor::loadz_multi(path)
            .map_err(|_| bad(format!("not a torch.save'd state dict: {reason}")))?
            .into_iter()
            .map(|(name, t)| {
                let shape = t.size().iter().map(|&s| s as usize).collect();
                let data = to_vec(&t.f_to_kind(Kind::Float)?)?;
                Ok((
                    name,
                    StateTensor {
                        dtype: TorchDtype::F32,
                        shape,
                        data,
                    },
                ))
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let class = dictionary_learning::dict_class(path)?;
    Ok(dictionary_learning::from_state_dict(
        &tensors,
        class.as_deref(),
        path,
        hook_name,
        model_name,
    )?)
}
