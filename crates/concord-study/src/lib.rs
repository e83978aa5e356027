//! Studies as data. A study file (`data/studies/*.toml`) names models, hooks, a corpus and
//! grids of SAEs; [`plan`] turns it into a graph of steps (harvest, train, eval, null, align),
//! each keyed by a hash of everything that determines its output; an [`exec::Executor`] runs
//! the steps as `concord` commands; [`assemble`] reads their outputs and builds the report.
//!
//! The crate links no libtorch and reads no parquet: steps are processes, so the same graph can
//! run on this machine or, through another executor, on a cluster.

pub mod assemble;
pub mod convergence;
mod error;
pub mod exec;
pub mod plan;
pub mod spec;

pub use error::{Error, Result};
pub use plan::{Plan, Step, StepKind};
pub use spec::Study;
