//! The shared vocabulary of the workspace: hook names, dtypes, the SAE file format (SAELens
//! layout) and the other packages' SAE files (`interop`: sparsify, dictionary_learning, with a
//! pure-Rust `torch.save` reader and writer in `torch_file`), the activation store's manifest,
//! and small file utilities (atomic writes, sha256).
//!
//! Every other crate depends on this one and it depends on no numeric runtime: no libtorch,
//! no arrow. Types here are what crosses crate boundaries and what lands on disk.

mod error;
pub mod fsutil;
pub mod hook;
pub mod interop;
pub mod manifest;
pub mod outputs;
pub mod sae;
pub mod snapshots;
pub mod torch_file;

pub use error::{Error, Result};
pub use hook::{HookKind, HookName};
pub use manifest::{Dtype, StoreManifest};
pub use sae::{SaeConfig, SaeWeights};
