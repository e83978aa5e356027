//! Language models through libtorch with explicit hook points: GPT-NeoX, Llama, BERT, GPT-2.
//!
//! Load a model by name ([`resolve`] then [`Model::load`]), tokenize and pack text into
//! context windows ([`pack`]), and run it: [`Model::run_with_cache`] returns the activations of
//! the hooks asked for (TransformerLens names, [`HookName`]); [`Model::splice`] replaces one
//! hook's value and returns logits and per-token loss. Parameter names mirror the upstream
//! checkpoints; GGUF files are dequantized and renamed to them as transformers does.
//!
//! ```no_run
//! # fn main() -> concord_models::Result<()> {
//! use concord_models::{HookName, LoadOptions, Model, PackOptions, Packing, pack, resolve, to_batch};
//! let source = resolve("smollm2-135m", std::path::Path::new("data"))?;
//! let model = Model::load(&source, LoadOptions::default())?;
//! let hooks = HookName::parse_list("blocks.6.hook_mlp_out").expect("valid names");
//! let docs = vec![(0u64, "To be, or not to be".to_owned())].into_iter();
//! let opts = PackOptions { context_len: 4, packing: Packing::Packed };
//! let windows: Vec<_> = pack(&model.tokenizer, model.info.is_causal, docs, opts)?.collect::<Result<_, _>>()?;
//! let (ids, mask) = to_batch(&windows, model.info.pad.unwrap_or(0))?;
//! let acts = model.run_with_cache(&ids, &mask, &hooks)?; // (batch, seq, d_model) per hook
//! # let _ = acts; Ok(()) }
//! ```

mod arch;
pub mod config;
mod error;
pub mod gguf;
mod kernels;
mod model;
pub mod pack;
pub mod resolve;
pub mod tokenizer;
pub mod weights;

pub use arch::Replacement;
pub use concord_core::manifest::Packing;
pub use concord_core::{HookKind, HookName};
pub use config::{Architecture, ModelConfig};
pub use error::{Error, Result};
pub use model::{ComputeDtype, LmOutput, LoadOptions, Model, ModelInfo, ModelSource, parse_device};
pub use pack::{NO_POS, PackOptions, Packer, TokenRow, Window, gather_rows, pack, to_batch};
pub use resolve::resolve;
pub use tokenizer::{Encoded, SpecialTokens, TextTokenizer};

/// Re-exported so callers need no direct `tch` dependency for tensors and devices.
pub use tch;
