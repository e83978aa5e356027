//! The error type of the alignment crate.

/// Errors from comparing dictionaries and activations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: slice of length {len} is not a ({rows}, {cols}) matrix")]
    BadShape {
        what: &'static str,
        len: usize,
        rows: usize,
        cols: usize,
    },
    #[error("dimension mismatch: {a} has d = {d_a}, {b} has d = {d_b}")]
    DimensionMismatch {
        a: &'static str,
        b: &'static str,
        d_a: usize,
        d_b: usize,
    },
    #[error("{what} is empty ({rows} rows of width {cols})")]
    Empty {
        what: &'static str,
        rows: usize,
        cols: usize,
    },
    #[error("{what}: non-finite value at row {row}, column {col}")]
    NonFinite {
        what: &'static str,
        row: usize,
        col: usize,
    },
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("activation batch {batch}: {a_tokens} tokens for a but {b_tokens} for b")]
    TokenCountMismatch {
        batch: usize,
        a_tokens: usize,
        b_tokens: usize,
    },
    #[error("activation batch {batch}, token {token}: feature {feature} out of range (n = {n})")]
    FeatureOutOfRange {
        batch: usize,
        token: usize,
        feature: u32,
        n: usize,
    },
}

/// The result type of the alignment crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
