//! Batch orders: stored order, the study's shuffled windows, and shuffled rows; seeded,
//! resumable at any batch, shared by single-dataset and lockstep reading.
//!
//! An epoch is a permutation of the dataset's rows, cut into batches of `batch_rows`:
//! - [`Order::Sequential`]: stored order.
//! - [`Order::Windows`]: whole context windows in a seeded random order, their rows
//!   concatenated (the study's order: a batch of 2,048 rows is 8 windows of 256).
//! - [`Order::Rows`]: the same window order, then every block of `buffer_rows` consecutive
//!   rows of that stream is permuted as a whole (a block shuffle through an in-memory buffer
//!   of `buffer_rows` rows). A batch mixes rows of about `buffer_rows / context_len` windows
//!   drawn from the whole dataset.
//!
//! Every batch is a pure function of (seed, epoch, batch index), so starting at batch N costs
//! one permutation of the window list (and, for `Rows`, loading one buffer), not N batches.
//! Randomness: ChaCha8 keyed by sha256 of the seed and a stream label, Fisher-Yates with
//! rejection sampling of bounded integers: the same seed gives the same order on any machine
//! and with any version of `rand`.

use std::ops::Range;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::dataset::Dataset;
use crate::schema::RowMeta;
use crate::{Error, Result};

/// The order batches come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Stored order; the seed is ignored.
    Sequential,
    /// Whole context windows, shuffled (the study's order).
    Windows,
    /// Single rows: shuffled windows, then blocks of `buffer_rows` rows shuffled in memory.
    Rows { buffer_rows: usize },
}

/// What to read and in which order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadConfig {
    /// Rows per batch (the last batch of an epoch may be shorter unless `drop_last`).
    pub batch_rows: usize,
    pub order: Order,
    /// The data-order seed.
    pub seed: u64,
    /// Number of passes over the data; each epoch has its own permutation.
    pub epochs: u64,
    /// The first batch to produce, counted over all epochs (to resume training).
    pub start_batch: u64,
    /// Drop each epoch's last batch when it is shorter than `batch_rows`.
    pub drop_last: bool,
}

impl ReadConfig {
    /// One pass in stored order.
    pub fn sequential(batch_rows: usize) -> ReadConfig {
        ReadConfig {
            batch_rows,
            order: Order::Sequential,
            seed: 0,
            epochs: 1,
            start_batch: 0,
            drop_last: false,
        }
    }

    /// The study's order: one epoch of shuffled whole windows, batches of 2,048 rows, the last
    /// short batch kept (as PyTorch's `DataLoader` does by default).
    pub fn study(seed: u64) -> ReadConfig {
        ReadConfig {
            batch_rows: 2048,
            order: Order::Windows,
            seed,
            epochs: 1,
            start_batch: 0,
            drop_last: false,
        }
    }

    /// Number of batches per epoch for a dataset of `rows` rows.
    pub fn batches_per_epoch(&self, rows: u64) -> u64 {
        let b = self.batch_rows.max(1) as u64;
        if self.drop_last {
            rows / b
        } else {
            rows.div_ceil(b)
        }
    }
}

/// A random generator for one stream of one seed.
fn rng_for(seed: u64, label: &str, parts: &[u64]) -> ChaCha8Rng {
    let mut bytes = format!("concord-store/{label}").into_bytes();
    bytes.extend(seed.to_le_bytes());
    for p in parts {
        bytes.extend(p.to_le_bytes());
    }
    ChaCha8Rng::from_seed(Sha256::digest(&bytes).into())
}

/// A uniform integer in `0..n` (`n > 0`), by rejection: unbiased and defined by the
/// generator's output alone.
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX - n + 1) % n;
    loop {
        let x = rng.next_u64();
        if x <= zone {
            return x % n;
        }
    }
}

/// A seeded permutation of `0..n` (Fisher-Yates from the end).
pub(crate) fn permutation(n: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = below(rng, i as u64 + 1) as usize;
        p.swap(i, j);
    }
    p
}

/// Rows read from several datasets in lockstep: shared metadata, one activation buffer per
/// dataset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LockstepBatch {
    /// The batch's number in its [`ReadConfig`]'s order.
    pub index: u64,
    pub rows: Vec<RowMeta>,
    /// `xs[h]` is `(rows, ds[h])` for the h-th dataset.
    pub xs: Vec<Vec<f32>>,
    pub ds: Vec<usize>,
}

/// The window order of one epoch.
#[derive(Debug)]
struct Epoch {
    epoch: u64,
    /// Window ids in epoch order.
    perm: Vec<usize>,
    /// Row offsets in the epoch stream of each permuted window, plus the total.
    offsets: Vec<u64>,
}

/// The in-memory buffer of [`Order::Rows`]: one block of the window stream and its
/// permutation.
#[derive(Debug)]
struct Block {
    epoch: u64,
    index: u64,
    data: LockstepBatch,
    perm: Vec<usize>,
}

/// The batch iterator behind [`Dataset::batches`] and [`crate::Lockstep::batches`].
#[derive(Debug)]
pub(crate) struct Batches<'a> {
    datasets: Vec<&'a Dataset>,
    cfg: ReadConfig,
    /// Rows in the windows read.
    rows: u64,
    /// The windows read.
    windows: Range<usize>,
    /// Whether `windows` is the whole dataset.
    all: bool,
    per_epoch: u64,
    next: u64,
    end: u64,
    epoch: Option<Epoch>,
    block: Option<Block>,
}

impl<'a> Batches<'a> {
    /// Datasets must have identical windows (checked by the callers).
    /// Reads windows `windows` only (all of them: `0..Dataset::windows()`).
    pub(crate) fn new(
        datasets: Vec<&'a Dataset>,
        cfg: &ReadConfig,
        windows: Range<u64>,
    ) -> Result<Batches<'a>> {
        if cfg.batch_rows == 0 {
            return Err(Error::InvalidRead {
                reason: "batch size is 0 rows".into(),
            });
        }
        if let Order::Rows { buffer_rows: 0 } = cfg.order {
            return Err(Error::InvalidRead {
                reason: "the shuffle buffer holds 0 rows".into(),
            });
        }
        let offsets = datasets[0].window_offsets();
        let all = offsets.len() as u64 - 1;
        if windows.start > windows.end || windows.end > all {
            return Err(Error::InvalidRead {
                reason: format!(
                    "windows {}..{} are out of range (the dataset has {all})",
                    windows.start, windows.end
                ),
            });
        }
        let rows = offsets[windows.end as usize] - offsets[windows.start as usize];
        let per_epoch = cfg.batches_per_epoch(rows);
        let end = per_epoch.saturating_mul(cfg.epochs);
        Ok(Batches {
            datasets,
            cfg: *cfg,
            rows,
            windows: windows.start as usize..windows.end as usize,
            all: windows.start == 0 && windows.end == all,
            per_epoch,
            next: cfg.start_batch.min(end),
            end,
            epoch: None,
            block: None,
        })
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.end - self.next
    }

    fn epoch(&mut self, epoch: u64) -> &Epoch {
        if self.epoch.as_ref().is_none_or(|e| e.epoch != epoch) {
            let offsets_all = self.datasets[0].window_offsets();
            let (lo, hi) = (self.windows.start, self.windows.end);
            let perm = match self.cfg.order {
                Order::Sequential => (lo..hi).collect(),
                Order::Windows | Order::Rows { .. } => {
                    // A subset of the windows has its own stream, so that two halves are not
                    // shuffled alike.
                    let mut rng = if self.all {
                        rng_for(self.cfg.seed, "windows", &[epoch])
                    } else {
                        rng_for(
                            self.cfg.seed,
                            "window-range",
                            &[epoch, lo as u64, hi as u64],
                        )
                    };
                    let mut perm = permutation(hi - lo, &mut rng);
                    perm.iter_mut().for_each(|w| *w += lo);
                    perm
                }
            };
            let n = perm.len();
            let mut offsets = Vec::with_capacity(n + 1);
            offsets.push(0u64);
            for &w in &perm {
                let len = offsets_all[w + 1] - offsets_all[w];
                offsets.push(offsets.last().expect("starts with 0") + len);
            }
            self.epoch = Some(Epoch {
                epoch,
                perm,
                offsets,
            });
        }
        self.epoch.as_ref().expect("just set")
    }

    /// The global row spans holding epoch-stream rows `p0..p1`, merged where contiguous.
    fn spans(&mut self, epoch: u64, p0: u64, p1: u64) -> Vec<(u64, u64)> {
        let first: &'a Dataset = self.datasets[0];
        let offsets_all = first.window_offsets();
        let e = self.epoch(epoch);
        let mut spans: Vec<(u64, u64)> = Vec::new();
        let mut i = e.offsets.partition_point(|&o| o <= p0) - 1;
        let mut p = p0;
        while p < p1 {
            let w = e.perm[i];
            let a = offsets_all[w] + (p - e.offsets[i]);
            let take = (e.offsets[i + 1] - p).min(p1 - p);
            match spans.last_mut() {
                Some(last) if last.1 == a => last.1 += take,
                _ => spans.push((a, a + take)),
            }
            p += take;
            i += 1;
        }
        spans
    }

    /// Reads global row spans from every dataset, checking that their metadata agree.
    fn fetch(&self, spans: &[(u64, u64)]) -> Result<LockstepBatch> {
        let read = |ds: &Dataset| -> Result<(Vec<RowMeta>, Vec<f32>)> {
            let n: u64 = spans.iter().map(|s| s.1 - s.0).sum();
            let mut rows = Vec::with_capacity(n as usize);
            let mut xs = Vec::with_capacity(n as usize * ds.d());
            for &(a, b) in spans {
                ds.read_span(a, b, Some(&mut rows), Some(&mut xs))?;
            }
            Ok((rows, xs))
        };
        let parts: Vec<Result<(Vec<RowMeta>, Vec<f32>)>> = if self.datasets.len() == 1 {
            vec![read(self.datasets[0])]
        } else {
            // Hooks decode in parallel: parquet decoding is the reader's main cost.
            std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .datasets
                    .iter()
                    .map(|ds| s.spawn(move || read(ds)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a reader thread panicked"))
                    .collect()
            })
        };
        let mut out = LockstepBatch {
            ds: self.datasets.iter().map(|d| d.d()).collect(),
            ..LockstepBatch::default()
        };
        for (h, part) in parts.into_iter().enumerate() {
            let (rows, xs) = part?;
            if h == 0 {
                out.rows = rows;
            } else if rows != out.rows {
                let i = rows
                    .iter()
                    .zip(&out.rows)
                    .position(|(a, b)| a != b)
                    .unwrap_or(rows.len().min(out.rows.len()));
                return Err(Error::Lockstep {
                    a: self.datasets[0].dir().to_owned(),
                    b: self.datasets[h].dir().to_owned(),
                    reason: format!(
                        "rows differ at batch position {i}: {:?} vs {:?}",
                        out.rows.get(i),
                        rows.get(i)
                    ),
                });
            }
            out.xs.push(xs);
        }
        Ok(out)
    }

    fn load_block(&mut self, epoch: u64, index: u64, buffer_rows: u64) -> Result<()> {
        if self
            .block
            .as_ref()
            .is_some_and(|b| b.epoch == epoch && b.index == index)
        {
            return Ok(());
        }
        self.block = None;
        let p0 = index * buffer_rows;
        let p1 = (p0 + buffer_rows).min(self.rows);
        let spans = self.spans(epoch, p0, p1);
        let data = self.fetch(&spans)?;
        let perm = permutation(
            (p1 - p0) as usize,
            &mut rng_for(self.cfg.seed, "rows", &[epoch, index]),
        );
        self.block = Some(Block {
            epoch,
            index,
            data,
            perm,
        });
        Ok(())
    }

    fn batch(&mut self, k: u64) -> Result<LockstepBatch> {
        let epoch = k / self.per_epoch;
        let b = k % self.per_epoch;
        let p0 = b * self.cfg.batch_rows as u64;
        let p1 = (p0 + self.cfg.batch_rows as u64).min(self.rows);
        let mut out = match self.cfg.order {
            Order::Sequential | Order::Windows => {
                let spans = self.spans(epoch, p0, p1);
                self.fetch(&spans)?
            }
            Order::Rows { buffer_rows } => {
                let buf = buffer_rows as u64;
                let ds: Vec<usize> = self.datasets.iter().map(|d| d.d()).collect();
                let mut out = LockstepBatch {
                    xs: ds
                        .iter()
                        .map(|&d| Vec::with_capacity((p1 - p0) as usize * d))
                        .collect(),
                    ds,
                    ..LockstepBatch::default()
                };
                let mut p = p0;
                while p < p1 {
                    let index = p / buf;
                    self.load_block(epoch, index, buf)?;
                    let block = self.block.as_ref().expect("just loaded");
                    let stop = p1.min((index + 1) * buf);
                    for q in p..stop {
                        let r = block.perm[(q - index * buf) as usize];
                        out.rows.push(block.data.rows[r]);
                        for (h, xs) in out.xs.iter_mut().enumerate() {
                            let d = out.ds[h];
                            xs.extend_from_slice(&block.data.xs[h][r * d..(r + 1) * d]);
                        }
                    }
                    p = stop;
                }
                out
            }
        };
        out.index = k;
        Ok(out)
    }
}

impl Iterator for Batches<'_> {
    type Item = Result<LockstepBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let k = self.next;
        self.next += 1;
        let out = self.batch(k);
        if out.is_err() {
            // An error ends the iteration; the caller decides whether to reopen.
            self.next = self.end;
        }
        Some(out)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::try_from(self.remaining()).unwrap_or(usize::MAX);
        (n, Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_pinned_and_complete() {
        // Pinned: a change here changes every training order; only change it on purpose.
        let p = permutation(10, &mut rng_for(0, "windows", &[0]));
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(p, PINNED);
        assert_ne!(p, permutation(10, &mut rng_for(1, "windows", &[0])));
        assert_ne!(p, permutation(10, &mut rng_for(0, "windows", &[1])));
    }

    const PINNED: [usize; 10] = [8, 4, 7, 3, 5, 2, 0, 1, 6, 9];

    #[test]
    fn below_is_in_range_and_roughly_uniform() {
        let mut rng = rng_for(3, "test", &[]);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[below(&mut rng, 3) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (900..1100).contains(&c)),
            "{counts:?}"
        );
    }
}
