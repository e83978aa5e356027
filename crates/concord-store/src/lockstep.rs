//! Reading several hook datasets of one store in lockstep: identical rows in identical order,
//! one activation buffer per hook (the study trained six layers' SAEs from one pass).

use std::ops::Range;
use std::path::Path;

use crate::dataset::Dataset;
use crate::order::{Batches, LockstepBatch, ReadConfig};
use crate::{Error, Result};

/// Datasets with identical rows (same tokens, documents, positions and windows), read
/// together.
///
/// ```no_run
/// # fn main() -> concord_store::Result<()> {
/// use concord_store::{Lockstep, ReadConfig};
/// let hooks = Lockstep::open(&["store/blocks.0.hook_mlp_out", "store/blocks.3.hook_mlp_out"])?;
/// for batch in hooks.batches(&ReadConfig::study(0))? {
///     let batch = batch?;
///     let (xs0, xs3) = (&batch.xs[0], &batch.xs[1]); // (rows, d0), (rows, d3)
/// #   let _ = (xs0, xs3);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Lockstep {
    datasets: Vec<Dataset>,
}

impl Lockstep {
    /// Opens every folder as a [`Dataset`] and checks that they can be read in lockstep.
    pub fn open<P: AsRef<Path>>(dirs: &[P]) -> Result<Lockstep> {
        let datasets = dirs
            .iter()
            .map(|d| Dataset::open(d.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Lockstep::new(datasets)
    }

    /// Checks that the datasets share corpus, tokenizer, context length, packing and every
    /// window's length. (The rows themselves are compared as batches are read: a mismatch is
    /// an error naming both datasets.)
    pub fn new(datasets: Vec<Dataset>) -> Result<Lockstep> {
        let Some(first) = datasets.first() else {
            return Err(Error::InvalidRead {
                reason: "no datasets to read in lockstep".into(),
            });
        };
        let a = first.manifest();
        for ds in &datasets[1..] {
            let b = ds.manifest();
            let mismatch = |what: &str, x: String, y: String| {
                Err(Error::Lockstep {
                    a: first.dir().to_owned(),
                    b: ds.dir().to_owned(),
                    reason: format!("{what} differs: {x} vs {y}"),
                })
            };
            if a.corpus_sha256 != b.corpus_sha256 {
                return mismatch("corpus", a.corpus_sha256.clone(), b.corpus_sha256.clone());
            }
            if a.tokenizer_sha256 != b.tokenizer_sha256 {
                return mismatch("tokenizer", a.tokenizer.clone(), b.tokenizer.clone());
            }
            if a.context_len != b.context_len {
                return mismatch(
                    "context length",
                    a.context_len.to_string(),
                    b.context_len.to_string(),
                );
            }
            if a.packing != b.packing {
                return mismatch(
                    "packing",
                    format!("{:?}", a.packing),
                    format!("{:?}", b.packing),
                );
            }
            if first.rows() != ds.rows() {
                return mismatch("row count", first.rows().to_string(), ds.rows().to_string());
            }
            if first.window_offsets() != ds.window_offsets() {
                return mismatch(
                    "window layout",
                    format!("{} windows", first.windows()),
                    format!("{} windows", ds.windows()),
                );
            }
        }
        Ok(Lockstep { datasets })
    }

    /// The datasets, in the order given.
    pub fn datasets(&self) -> &[Dataset] {
        &self.datasets
    }

    /// Number of rows (the same in every dataset).
    pub fn rows(&self) -> u64 {
        self.datasets[0].rows()
    }

    /// Batches in the order `cfg` describes, identical for every dataset; `xs[h]` is the h-th
    /// dataset's `(rows, d_h)` activations.
    pub fn batches(&self, cfg: &ReadConfig) -> Result<LockstepBatches<'_>> {
        self.batches_of_windows(cfg, 0..self.datasets[0].windows())
    }

    /// [`Lockstep::batches`] over the context windows `windows` only (see
    /// [`Dataset::batches_of_windows`]).
    pub fn batches_of_windows(
        &self,
        cfg: &ReadConfig,
        windows: Range<u64>,
    ) -> Result<LockstepBatches<'_>> {
        Ok(LockstepBatches {
            inner: Batches::new(self.datasets.iter().collect(), cfg, windows)?,
        })
    }
}

/// Batches of several datasets; see [`Lockstep::batches`].
#[derive(Debug)]
pub struct LockstepBatches<'a> {
    inner: Batches<'a>,
}

impl LockstepBatches<'_> {
    /// Number of batches still to come.
    pub fn remaining(&self) -> u64 {
        self.inner.remaining()
    }
}

impl Iterator for LockstepBatches<'_> {
    type Item = Result<LockstepBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}
