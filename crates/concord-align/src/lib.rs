//! Feature alignment between SAEs: MMCS, exact matching, activation correlation, nulls.
//!
//! Pure Rust numerics (no libtorch, no parquet): functions take row-major slices and
//! iterators and return serde records. The entry point for two SAE folders is [`compare`];
//! the pieces are public for finer use:
//! - [`Dict`]: a dictionary of unit feature directions `(n, d)`;
//! - [`scan()`]: the fused blocked pass (MMCS both ways, top-k candidates);
//! - [`match_dicts`]: exact maximum-weight matching with an optimality [`Certificate`];
//! - [`metrics`]: mean matched cosine, shared fraction, PW-MCC, match records, families;
//! - [`nulls`]: isotropic and `rand_like` random dictionaries, the analytic max-cosine
//!   expectation, seed intervals;
//! - [`corr`]: streamed activation correlation and token alignment by byte spans;
//! - [`synth`]: a seeded generator of SAE-like dictionary pairs;
//! - [`output`]: the weight-space part of `concord align`'s JSON record.

mod compare;
pub mod corr;
mod dict;
mod error;
mod kernel;
mod lap;
mod matching;
pub mod metrics;
pub mod nulls;
pub mod output;
mod scan;
pub mod synth;

pub use compare::{
    CompareOptions, Comparison, CorrelationReport, DirectionPair, DirectionPairIntervals, Matches,
    MatchingReport, MmcsReport, NullReport, NullScores, ZeroFeatures, compare, compare_dicts,
};
pub use dict::Dict;
pub use error::{Error, Result};
pub use matching::{Certificate, MatchOptions, Matching, Method, Pair, match_dicts, match_weights};
pub use scan::{Blocking, Scan, ScanOptions, TopK, scan, similarity_matrix};
