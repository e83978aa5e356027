//! Reading one hook's dataset: [`Dataset::open`] validates the manifest and every shard's
//! footer, then rows are read by range, by window, or in batches ([`crate::ReadConfig`]).

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use concord_core::manifest::{MANIFEST_FILE, Packing};
use concord_core::{Dtype, HookName, StoreManifest, fsutil};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::file::metadata::ParquetStatisticsPolicy;

use crate::order::{Batches, ReadConfig};
use crate::schema::{self, RowMeta};
use crate::{Error, Result};

/// Rows read from one dataset: metadata and activations `xs` `(rows, d)` as f32.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// The batch's number in its [`ReadConfig`]'s order (0 for direct reads).
    pub index: u64,
    pub rows: Vec<RowMeta>,
    /// `(rows, d)`, row-major.
    pub xs: Vec<f32>,
    pub d: usize,
}

impl Batch {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `i`'s activation, `(d,)`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.xs[i * self.d..(i + 1) * self.d]
    }
}

/// How [`Dataset::open_with`] checks a dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Hash every shard and compare with the manifest (reads the whole dataset once).
    pub verify_sha256: bool,
    /// Accept a dataset whose harvest has not finished (its finished shards only).
    pub allow_incomplete: bool,
    /// Which shard footers stay in memory.
    pub footers: FooterCache,
}

/// Which parsed shard footers an opened dataset keeps (about 2.4 KB of memory per window).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FooterCache {
    /// All of them up to [`FooterCache::AUTO_LIMIT`] windows, else the 16 most recently used.
    #[default]
    Auto,
    /// Every footer: no footer is parsed twice.
    All,
    /// The footers of the `n` most recently read shards (at least 1); others are parsed again
    /// when read. Stored order hits the cache; shuffled windows of a large store mostly miss.
    Shards(usize),
}

impl FooterCache {
    /// The number of windows up to which [`FooterCache::Auto`] keeps every footer (~160 MB).
    pub const AUTO_LIMIT: u64 = 65_536;
}

/// The footers of an opened dataset.
#[derive(Debug)]
enum Footers {
    All(Vec<ArrowReaderMetadata>),
    Recent {
        cap: usize,
        recent: Mutex<VecDeque<(usize, ArrowReaderMetadata)>>,
    },
}

/// The hook datasets of a store: the subfolders of `store` that hold a `manifest.json`,
/// as `(hook, folder)` sorted by layer, then by the order a forward pass meets the hooks.
pub fn hook_datasets(store: &Path) -> Result<Vec<(HookName, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(store).map_err(|e| Error::io(store, e))? {
        let dir = entry.map_err(|e| Error::io(store, e))?.path();
        if !dir.join(MANIFEST_FILE).is_file() {
            continue;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hook = name.parse::<HookName>()?;
        out.push((hook, dir));
    }
    out.sort_by_key(|(h, _)| {
        (
            h.layer,
            concord_core::HookKind::ALL
                .iter()
                .position(|k| *k == h.kind),
        )
    });
    Ok(out)
}

/// One shard as opened: where its rows sit.
#[derive(Debug)]
struct Shard {
    path: PathBuf,
    /// Global index of the shard's first row.
    first_row: u64,
    /// Row offsets of the shard's row groups (= windows) within the shard, plus its row count.
    group_offsets: Vec<u64>,
}

/// An opened hook dataset (`STORE/<hook name>/`).
///
/// Rows are numbered globally in stored order (`0..rows()`), windows likewise
/// (`0..windows()`, equal to their `seq`). Every shard footer is parsed and checked at
/// open; which stay in memory is [`OpenOptions::footers`].
#[derive(Debug)]
pub struct Dataset {
    dir: PathBuf,
    manifest: StoreManifest,
    shards: Vec<Shard>,
    footers: Footers,
    /// Global row offset of every window, plus the row count: `windows() + 1` entries.
    window_offsets: Vec<u64>,
}

impl Dataset {
    /// Opens a complete dataset, checking that the manifest is readable and every shard
    /// exists, is a parquet file with the expected schema and holds the rows and windows the
    /// manifest lists. Does not hash the shards (see [`Dataset::verify`]).
    pub fn open(dir: &Path) -> Result<Dataset> {
        Dataset::open_with(dir, &OpenOptions::default())
    }

    /// [`Dataset::open`] with options.
    pub fn open_with(dir: &Path, opts: &OpenOptions) -> Result<Dataset> {
        if !dir.join(MANIFEST_FILE).is_file() {
            return Err(Error::MissingManifest {
                dir: dir.to_owned(),
            });
        }
        let manifest = StoreManifest::read(dir)?;
        let invalid = |reason: String| {
            Error::Core(concord_core::Error::Invalid {
                path: dir.join(MANIFEST_FILE),
                reason,
            })
        };
        if manifest.format_version != StoreManifest::FORMAT_VERSION {
            return Err(invalid(format!(
                "format version {} (this build reads {})",
                manifest.format_version,
                StoreManifest::FORMAT_VERSION
            )));
        }
        if !manifest.complete && !opts.allow_incomplete {
            return Err(Error::Incomplete {
                dir: dir.to_owned(),
                shards: manifest.shards.len(),
                rows: manifest.rows(),
            });
        }
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut metas = Vec::with_capacity(manifest.shards.len());
        let mut window_offsets = vec![0u64];
        let mut first_row = 0u64;
        for info in &manifest.shards {
            let path = dir.join(&info.file);
            if info.first_seq != window_offsets.len() as u64 - 1 {
                return Err(invalid(format!(
                    "shard {} starts at window {}, expected {}",
                    info.file,
                    info.first_seq,
                    window_offsets.len() - 1
                )));
            }
            let (shard, meta) = open_shard(&path, &manifest, info.rows, info.windows, first_row)?;
            for w in shard.group_offsets.windows(2) {
                window_offsets.push(first_row + w[1]);
            }
            first_row += info.rows;
            shards.push(shard);
            metas.push(meta);
        }
        let windows = window_offsets.len() as u64 - 1;
        let footers = match opts.footers {
            FooterCache::All => Footers::All(metas),
            FooterCache::Auto if windows <= FooterCache::AUTO_LIMIT => Footers::All(metas),
            FooterCache::Auto => Footers::Recent {
                cap: 16,
                recent: Mutex::default(),
            },
            FooterCache::Shards(n) => Footers::Recent {
                cap: n.max(1),
                recent: Mutex::default(),
            },
        };
        let dataset = Dataset {
            dir: dir.to_owned(),
            manifest,
            shards,
            footers,
            window_offsets,
        };
        if opts.verify_sha256 {
            dataset.verify()?;
        }
        Ok(dataset)
    }

    /// The parsed footer of shard `s`, from the cache or the file.
    fn footer(&self, s: usize) -> Result<ArrowReaderMetadata> {
        let (cap, recent) = match &self.footers {
            Footers::All(metas) => return Ok(metas[s].clone()),
            Footers::Recent { cap, recent } => (*cap, recent),
        };
        let lock = || recent.lock().unwrap_or_else(PoisonError::into_inner);
        {
            let mut r = lock();
            if let Some(i) = r.iter().position(|(k, _)| *k == s) {
                let entry = r.remove(i).expect("the position is in range");
                let meta = entry.1.clone();
                r.push_back(entry);
                return Ok(meta);
            }
        }
        let path = &self.shards[s].path;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = ArrowReaderMetadata::load(&file, reader_options()).map_err(|e| {
            Error::CorruptShard {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        let mut r = lock();
        r.push_back((s, meta.clone()));
        while r.len() > cap {
            r.pop_front();
        }
        Ok(meta)
    }

    /// Hashes every shard and compares with the manifest's sha256.
    pub fn verify(&self) -> Result<()> {
        for (shard, info) in self.shards.iter().zip(&self.manifest.shards) {
            let got = fsutil::sha256_file(&shard.path)?;
            if got != info.sha256 {
                return Err(Error::ShaMismatch {
                    path: shard.path.clone(),
                    expected: info.sha256.clone(),
                    got,
                });
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &StoreManifest {
        &self.manifest
    }

    pub fn hook(&self) -> HookName {
        self.manifest.hook
    }

    /// Width of a row.
    pub fn d(&self) -> usize {
        self.manifest.d
    }

    /// The stored dtype (reads always return f32).
    pub fn dtype(&self) -> Dtype {
        self.manifest.dtype
    }

    /// Number of rows.
    pub fn rows(&self) -> u64 {
        *self
            .window_offsets
            .last()
            .expect("window offsets start with 0")
    }

    /// Number of context windows.
    pub fn windows(&self) -> u64 {
        self.window_offsets.len() as u64 - 1
    }

    /// The global rows of window `seq`.
    pub fn window_rows(&self, seq: u64) -> Option<Range<u64>> {
        let i = usize::try_from(seq).ok()?;
        Some(*self.window_offsets.get(i)?..*self.window_offsets.get(i + 1)?)
    }

    /// Global row offsets of all windows, `windows() + 1` entries.
    pub(crate) fn window_offsets(&self) -> &[u64] {
        &self.window_offsets
    }

    /// The shard holding global row `row`, and the row's index in it.
    pub fn locate(&self, row: u64) -> Option<(&Path, u64)> {
        if row >= self.rows() {
            return None;
        }
        let s = self.shard_of(row);
        Some((&self.shards[s].path, row - self.shards[s].first_row))
    }

    /// The index of the shard holding global row `row` (< `rows()`).
    fn shard_of(&self, row: u64) -> usize {
        self.shards.partition_point(|sh| sh.first_row <= row) - 1
    }

    /// Reads the rows `range` (global row numbers, in stored order).
    pub fn read_rows(&self, range: Range<u64>) -> Result<Batch> {
        self.check_range(&range)?;
        let mut batch = Batch {
            d: self.d(),
            ..Batch::default()
        };
        self.read_span(
            range.start,
            range.end,
            Some(&mut batch.rows),
            Some(&mut batch.xs),
        )?;
        Ok(batch)
    }

    /// The row metadata of rows `range`, without decoding activations (to align the rows of
    /// two datasets by document and byte span, say).
    pub fn read_meta(&self, range: Range<u64>) -> Result<Vec<RowMeta>> {
        self.check_range(&range)?;
        let mut rows = Vec::with_capacity((range.end - range.start) as usize);
        self.read_span(range.start, range.end, Some(&mut rows), None)?;
        Ok(rows)
    }

    fn check_range(&self, range: &Range<u64>) -> Result<()> {
        if range.start > range.end || range.end > self.rows() {
            return Err(Error::RowRange {
                dir: self.dir.clone(),
                start: range.start,
                end: range.end,
                rows: self.rows(),
            });
        }
        Ok(())
    }

    /// Reads context window `seq`.
    pub fn read_window(&self, seq: u64) -> Result<Batch> {
        let range = self.window_rows(seq).ok_or_else(|| Error::RowRange {
            dir: self.dir.clone(),
            start: seq,
            end: seq + 1,
            rows: self.rows(),
        })?;
        self.read_rows(range)
    }

    /// Batches in the order `cfg` describes: stored order, shuffled windows (the study's) or
    /// shuffled rows. See [`ReadConfig`].
    pub fn batches(&self, cfg: &ReadConfig) -> Result<DatasetBatches<'_>> {
        self.batches_of_windows(cfg, 0..self.windows())
    }

    /// [`Dataset::batches`] over the context windows `windows` only, e.g. one half of the
    /// corpus (`0..n / 2` and `n / 2..n`: disjoint rows). An epoch is a permutation of those
    /// windows' rows; a proper subset has its own random stream.
    pub fn batches_of_windows(
        &self,
        cfg: &ReadConfig,
        windows: Range<u64>,
    ) -> Result<DatasetBatches<'_>> {
        Ok(DatasetBatches {
            inner: Batches::new(vec![self], cfg, windows)?,
        })
    }

    /// All rows in stored order, `batch_rows` at a time (the last batch may be shorter).
    pub fn stream(&self, batch_rows: usize) -> Result<DatasetBatches<'_>> {
        self.batches(&ReadConfig::sequential(batch_rows))
    }

    /// Appends the rows `start..end` to `rows` (when given) and their activations to `xs`.
    pub(crate) fn read_span(
        &self,
        start: u64,
        end: u64,
        mut rows: Option<&mut Vec<RowMeta>>,
        mut xs: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let mut at = start;
        while at < end {
            let s = self.shard_of(at);
            let shard = &self.shards[s];
            let shard_rows = *shard.group_offsets.last().expect("offsets start with 0");
            let a = at - shard.first_row;
            let b = (end - shard.first_row).min(shard_rows);
            let meta = self.footer(s)?;
            read_shard(
                shard,
                &meta,
                self.manifest.dtype,
                a,
                b,
                rows.as_deref_mut(),
                xs.as_deref_mut(),
            )?;
            at = shard.first_row + b;
        }
        Ok(())
    }
}

fn open_shard(
    path: &Path,
    m: &StoreManifest,
    rows: u64,
    windows: u64,
    first_row: u64,
) -> Result<(Shard, ArrowReaderMetadata)> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingShard {
            path: path.to_owned(),
        },
        _ => Error::io(path, e),
    })?;
    let corrupt = |reason: String| Error::CorruptShard {
        path: path.to_owned(),
        reason,
    };
    let meta =
        ArrowReaderMetadata::load(&file, reader_options()).map_err(|e| corrupt(e.to_string()))?;
    schema::check_schema(path, meta.schema(), m.d, m.dtype)?;
    let pq = meta.metadata();
    let got_rows = pq.file_metadata().num_rows() as u64;
    if got_rows != rows || pq.num_row_groups() as u64 != windows {
        return Err(corrupt(format!(
            "{got_rows} rows in {} row groups, the manifest lists {rows} rows in {windows} windows",
            pq.num_row_groups()
        )));
    }
    let mut group_offsets = Vec::with_capacity(pq.num_row_groups() + 1);
    group_offsets.push(0u64);
    for (g, rg) in pq.row_groups().iter().enumerate() {
        let n = rg.num_rows() as u64;
        let ok = match m.packing {
            Packing::Packed => n == m.context_len as u64,
            Packing::PerDocument => n >= 1 && n <= m.context_len as u64,
        };
        if !ok {
            return Err(corrupt(format!(
                "window {g} has {n} rows (context length {})",
                m.context_len
            )));
        }
        group_offsets.push(group_offsets[g] + n);
    }
    let shard = Shard {
        path: path.to_owned(),
        first_row,
        group_offsets,
    };
    Ok((shard, meta))
}

/// Footer parsing options: statistics are not needed to read windows, and not decoding them
/// keeps the footers that stay in memory small.
fn reader_options() -> ArrowReaderOptions {
    ArrowReaderOptions::new()
        .with_column_stats_policy(ParquetStatisticsPolicy::SkipAll)
        .with_size_stats_policy(ParquetStatisticsPolicy::SkipAll)
        .with_encoding_stats_as_mask(true)
}

/// Reads rows `a..b` of one shard (shard-local numbers), one row group (window) at a time:
/// parquet-rs decodes a single row group per reader much faster than a reader spanning
/// several (measured: 2-2.5x on 2,048-row spans of 8 windows).
fn read_shard(
    shard: &Shard,
    meta: &ArrowReaderMetadata,
    dtype: Dtype,
    a: u64,
    b: u64,
    mut rows: Option<&mut Vec<RowMeta>>,
    mut xs: Option<&mut Vec<f32>>,
) -> Result<()> {
    let offs = &shard.group_offsets;
    let first = offs.partition_point(|&o| o <= a) - 1;
    let mut g = first;
    while g + 1 < offs.len() && offs[g] < b {
        let (lo, hi) = (a.max(offs[g]), b.min(offs[g + 1]));
        read_group(
            shard,
            meta,
            dtype,
            g,
            lo - offs[g]..hi - offs[g],
            rows.as_deref_mut(),
            xs.as_deref_mut(),
        )?;
        g += 1;
    }
    Ok(())
}

/// Reads rows `a..b` of row group `g` (group-local numbers).
fn read_group(
    shard: &Shard,
    meta: &ArrowReaderMetadata,
    dtype: Dtype,
    g: usize,
    Range { start: a, end: b }: Range<u64>,
    mut rows: Option<&mut Vec<RowMeta>>,
    mut xs: Option<&mut Vec<f32>>,
) -> Result<()> {
    let path = &shard.path;
    let group_rows = shard.group_offsets[g + 1] - shard.group_offsets[g];
    let corrupt = |reason: String| Error::CorruptShard {
        path: path.clone(),
        reason,
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let act = schema::COLUMNS.len() - 1;
    let mask = match (rows.is_some(), xs.is_some()) {
        (true, true) => ProjectionMask::all(),
        (true, false) => ProjectionMask::roots(meta.parquet_schema(), 0..act),
        (false, _) => ProjectionMask::roots(meta.parquet_schema(), [act]),
    };
    let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, meta.clone())
        .with_row_groups(vec![g])
        .with_projection(mask)
        .with_batch_size(group_rows as usize);
    if a > 0 || b < group_rows {
        let mut selectors = Vec::with_capacity(3);
        if a > 0 {
            selectors.push(RowSelector::skip(a as usize));
        }
        selectors.push(RowSelector::select((b - a) as usize));
        if b < group_rows {
            selectors.push(RowSelector::skip((group_rows - b) as usize));
        }
        builder = builder.with_row_selection(RowSelection::from(selectors));
    }
    let reader = builder.build().map_err(|e| corrupt(e.to_string()))?;
    let mut got = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(e.to_string()))?;
        got += batch.num_rows() as u64;
        if let Some(rows) = rows.as_deref_mut() {
            schema::decode_meta(path, &batch, rows)?;
        }
        if let Some(xs) = xs.as_deref_mut() {
            schema::decode_acts(path, &batch, dtype, xs)?;
        }
    }
    if got != b - a {
        return Err(corrupt(format!(
            "read {got} rows of window {g}, expected {}",
            b - a
        )));
    }
    Ok(())
}

/// The last row of a shard file (for resuming a writer).
pub(crate) fn last_row(path: &Path) -> Result<Option<RowMeta>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let corrupt = |e: parquet::errors::ParquetError| Error::CorruptShard {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(corrupt)?;
    let groups = builder.metadata().num_row_groups();
    if groups == 0 {
        return Ok(None);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), 0..schema::COLUMNS.len() - 1);
    let reader = builder
        .with_row_groups(vec![groups - 1])
        .with_projection(mask)
        .build()
        .map_err(corrupt)?;
    let mut rows = Vec::new();
    for batch in reader {
        schema::decode_meta(path, &batch.map_err(|e| Error::arrow(path, e))?, &mut rows)?;
    }
    Ok(rows.last().copied())
}

/// Batches of one dataset; see [`Dataset::batches`].
#[derive(Debug)]
pub struct DatasetBatches<'a> {
    inner: Batches<'a>,
}

impl DatasetBatches<'_> {
    /// Number of batches still to come.
    pub fn remaining(&self) -> u64 {
        self.inner.remaining()
    }
}

impl Iterator for DatasetBatches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.inner.next()?.map(|mut b| Batch {
            index: b.index,
            rows: b.rows,
            xs: b.xs.pop().expect("one dataset gives one activation buffer"),
            d: b.ds[0],
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}
