//! Sparse autoencoder training and evaluation on libtorch.
//!
//! - [`Trainer`] trains a grid of SAEs ([`SaeSpec`]: architecture, width, seeds,
//!   hyperparameters) from one pass over batches of rows `(batch, d_in)` that the caller reads
//!   (this crate reads no store); checkpoints resume bitwise on CPU.
//! - [`SaeModel`] encodes and decodes with a saved SAE; [`evaluate`] measures MSE, FVU, L0,
//!   dead and dense features; [`SpliceMeter`] turns three forward passes into loss recovered
//!   and KL.
//! - [`load_sae`] imports the field's SAE files (SAELens, sparsify, dictionary_learning).

mod checkpoint;
mod error;
mod eval;
mod import;
mod init;
mod math;
mod model;
mod sparse;
mod spec;
mod trainer;

pub use error::{Error, Result};
pub use eval::{EvalReport, SpliceMeter, SpliceReport, evaluate};
pub use import::{load_dictionary_learning, load_sae, load_saelens};
pub use init::init_weights;
pub use model::{Activation, SaeModel};
pub use spec::{
    Arch, BDecInit, ComputeDtype, DataSeed, GridStream, Hyper, JUMPRELU_BANDWIDTH,
    JUMPRELU_INIT_THRESHOLD, JUMPRELU_L0_COEFFICIENT, SaeSpec, TrainOptions, grid, input_scale_for,
    parse_device, snapshot_steps,
};
pub use trainer::{Batch, CurvePoint, SaeStepStats, StepStats, Trainer};
