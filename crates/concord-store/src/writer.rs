//! Writing hook datasets: [`HookWriter`] for one hook, [`StoreWriter`] for the several hooks
//! one harvest fills with identical context windows.
//!
//! A dataset is a folder `OUT/<hook name>/` with `part-NNNNN.parquet` shards and a
//! `manifest.json`. Shards hold whole context windows, one parquet row group per window, and a
//! shard is closed at the first window boundary at which it holds `rows_per_shard` rows or
//! more. Each shard is written under a temporary name, hashed while it is written, synced and
//! renamed into place; only then is the manifest (also written atomically) updated to list it.
//! Memory is bounded by one window: every window is flushed to disk as its own row group.
//!
//! Resuming is therefore simple: a killed run leaves a manifest listing the finished shards
//! (and maybe a temporary file or a renamed shard the manifest does not list yet, both
//! removed on reopening); the harvest starts again at [`HookWriter::next_seq`], the first
//! window of the first unfinished shard. Since shard boundaries depend only on the rows, the
//! resumed dataset is byte-identical to an uninterrupted one.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use concord_core::fsutil::{self, DirLock, LOCK_FILE};
use concord_core::manifest::{MANIFEST_FILE, Packing, ShardInfo};
use concord_core::{Dtype, HookName, StoreManifest};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::schema::{self, RowMeta};
use crate::{Error, Result};

/// Everything that defines a hook's dataset, as the harvest knows it before writing a row.
///
/// The store hashes all of it (with `settings`) into the manifest's `settings_hash`; reopening
/// a dataset with a different hash is refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSpec {
    /// The model's name as the user gave it.
    pub model: String,
    pub hook: HookName,
    /// Width of one activation row.
    pub d: usize,
    /// The dtype activations are stored in (the writer converts from f32).
    pub dtype: Dtype,
    /// Tokenizer name and the sha256 of its serialised form.
    pub tokenizer: String,
    pub tokenizer_sha256: String,
    /// The corpus file's sha256 ([`crate::Corpus::sha256`]).
    pub corpus_sha256: String,
    pub context_len: usize,
    pub packing: Packing,
    /// Target rows per shard (see [`default_rows_per_shard`]); shards close at the first
    /// window boundary at or past it.
    pub rows_per_shard: u64,
    /// Further settings that determine the rows (token or document bounds, compute dtype,
    /// model file digest, ...): any JSON; hashed with key order normalised.
    pub settings: serde_json::Value,
}

impl ManifestSpec {
    /// The sha256 (hex) of the canonical JSON of every field but `model`: the name a model
    /// was reached by (`m`, `m/`, an absolute path) does not change the rows, while what it
    /// is made of does, so a harvest puts the model's digest in `settings`.
    pub fn settings_hash(&self) -> String {
        let mut value = serde_json::to_value(self).expect("a spec always serialises to JSON");
        if let Some(map) = value.as_object_mut() {
            map.remove("model");
        }
        let mut text = String::new();
        canonical_json(&value, &mut text);
        fsutil::sha256_bytes(text.as_bytes())
    }

    fn validate(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::InvalidSpec { reason });
        if self.d == 0 || self.d > i32::MAX as usize {
            return invalid(format!(
                "{}: width d = {} is out of range",
                self.hook, self.d
            ));
        }
        if self.context_len == 0 {
            return invalid(format!("{}: context length is 0", self.hook));
        }
        if self.rows_per_shard == 0 {
            return invalid(format!("{}: rows per shard is 0", self.hook));
        }
        Ok(())
    }

    fn new_manifest(&self) -> StoreManifest {
        StoreManifest {
            format_version: StoreManifest::FORMAT_VERSION,
            model: self.model.clone(),
            hook: self.hook,
            d: self.d,
            dtype: self.dtype,
            tokenizer: self.tokenizer.clone(),
            tokenizer_sha256: self.tokenizer_sha256.clone(),
            corpus_sha256: self.corpus_sha256.clone(),
            context_len: self.context_len,
            packing: self.packing,
            rows_per_shard: self.rows_per_shard,
            settings_hash: self.settings_hash(),
            settings: self.settings.clone(),
            shards: Vec::new(),
            complete: false,
        }
    }

    /// Names the fields in which `m` differs from this spec, for the refusal message.
    fn differences(&self, m: &StoreManifest) -> String {
        let mut out = Vec::new();
        let mut cmp = |name: &str, ours: String, theirs: String| {
            if ours != theirs {
                out.push(format!("{name}: stored {theirs}, requested {ours}"));
            }
        };
        cmp(
            "format_version",
            StoreManifest::FORMAT_VERSION.to_string(),
            m.format_version.to_string(),
        );
        cmp(
            "model",
            format!("{:?}", self.model),
            format!("{:?}", m.model),
        );
        cmp("hook", self.hook.to_string(), m.hook.to_string());
        cmp("d", self.d.to_string(), m.d.to_string());
        cmp("dtype", self.dtype.name().into(), m.dtype.name().into());
        cmp(
            "tokenizer",
            format!("{:?}", self.tokenizer),
            format!("{:?}", m.tokenizer),
        );
        cmp(
            "tokenizer_sha256",
            self.tokenizer_sha256.clone(),
            m.tokenizer_sha256.clone(),
        );
        cmp(
            "corpus_sha256",
            self.corpus_sha256.clone(),
            m.corpus_sha256.clone(),
        );
        cmp(
            "context_len",
            self.context_len.to_string(),
            m.context_len.to_string(),
        );
        cmp(
            "packing",
            format!("{:?}", self.packing),
            format!("{:?}", m.packing),
        );
        cmp(
            "rows_per_shard",
            self.rows_per_shard.to_string(),
            m.rows_per_shard.to_string(),
        );
        cmp(
            "settings",
            self.settings.to_string(),
            m.settings.to_string(),
        );
        if out.is_empty() {
            out.push(format!(
                "settings_hash: stored {}, requested {}",
                m.settings_hash,
                self.settings_hash()
            ));
        }
        out.join("; ")
    }
}

/// Writes `v` as JSON with object keys sorted at every level, so the hash of a spec does not
/// depend on how serde_json orders maps.
fn canonical_json(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A rows-per-shard target of about 64 MiB of activations, rounded up to whole windows of
/// `context_len` rows: small enough that a killed harvest loses little, large enough that a
/// store has few files.
pub fn default_rows_per_shard(d: usize, dtype: Dtype, context_len: usize) -> u64 {
    let row_bytes = (d.max(1) * dtype.size_bytes()) as u64;
    let rows = (64u64 << 20).div_ceil(row_bytes);
    let window = context_len.max(1) as u64;
    rows.div_ceil(window) * window
}

/// The file name of shard `index`.
pub fn shard_file_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

/// The parquet writer settings of every shard: snappy for the metadata columns; for the
/// activations no dictionary and no statistics (floats do not repeat; min/max of a window's
/// activations help no query) and no compression for f32 and f16.
///
/// bf16 bit patterns are an Arrow UInt16 column, which parquet stores as INT32 (4 bytes a
/// value); the BYTE_STREAM_SPLIT encoding puts the two always-zero high bytes of every value
/// in streams of their own, which snappy squeezes to almost nothing, so a bf16 store takes
/// about 2 bytes a value on disk, like f16.
fn writer_properties(dtype: Dtype) -> WriterProperties {
    let act = ColumnPath::new(vec!["act".into(), "list".into(), "item".into()]);
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_column_dictionary_enabled(act.clone(), false)
        .set_column_statistics_enabled(act.clone(), EnabledStatistics::None);
    builder = if dtype == Dtype::Bf16 {
        builder.set_column_encoding(act, Encoding::BYTE_STREAM_SPLIT)
    } else {
        // Snappy saves about 3 % on plain f32/f16 activations and costs a fifth of the
        // write and read time.
        builder.set_column_compression(act, Compression::UNCOMPRESSED)
    };
    builder.build()
}

/// A file writer that hashes what passes through it.
struct HashingWriter {
    out: BufWriter<File>,
    hasher: Sha256,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The shard being written.
struct OpenShard {
    writer: ArrowWriter<HashingWriter>,
    tmp: PathBuf,
    file: String,
    rows: u64,
    windows: u64,
    first_seq: u64,
}

/// Writes one hook's dataset, window by window; see the module docs for the layout.
///
/// ```no_run
/// # fn main() -> concord_store::Result<()> {
/// use concord_store::{HookWriter, ManifestSpec, RowMeta};
/// # let spec: ManifestSpec = todo!();
/// let mut w = HookWriter::open("store/blocks.3.hook_mlp_out".as_ref(), &spec)?;
/// let start = w.next_seq(); // 0 for a new dataset, later when resuming
/// # let windows: Vec<(Vec<RowMeta>, Vec<f32>)> = vec![];
/// for (rows, acts) in windows.iter().skip(start as usize) {
///     w.push_window(rows, acts)?; // acts: (rows, d) f32
/// }
/// w.finish()?;
/// # Ok(()) }
/// ```
pub struct HookWriter {
    dir: PathBuf,
    manifest: StoreManifest,
    schema: SchemaRef,
    props: WriterProperties,
    current: Option<OpenShard>,
    next_seq: u64,
    last_row: Option<RowMeta>,
    /// Whether this writer started the dataset (no manifest before), and made its folder.
    created: bool,
    made_dir: bool,
    /// Held until the writer is dropped (after [`HookWriter::finish`] or on an error).
    _lock: DirLock,
}

impl std::fmt::Debug for HookWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookWriter")
            .field("dir", &self.dir)
            .field("hook", &self.manifest.hook)
            .field("next_seq", &self.next_seq)
            .field("shards", &self.manifest.shards.len())
            .finish_non_exhaustive()
    }
}

fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Refuses to add hooks to a store whose other datasets come from another harvest (another
/// model, tokenizer, corpus, context, packing or bounds): the hooks of a store are read in
/// lockstep, row for row. Per-hook settings (width, dtype, shard size) may differ.
fn check_siblings(out: &Path, first: &ManifestSpec, specs: &[ManifestSpec]) -> Result<()> {
    let Ok(entries) = fs::read_dir(out) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if specs.iter().any(|s| s.hook.to_string() == name) || !dir.join(MANIFEST_FILE).is_file() {
            continue;
        }
        let m = StoreManifest::read(&dir)?;
        let probe = ManifestSpec {
            hook: m.hook,
            d: m.d,
            dtype: m.dtype,
            rows_per_shard: m.rows_per_shard,
            ..first.clone()
        };
        if probe.settings_hash() != m.settings_hash
            || m.format_version != StoreManifest::FORMAT_VERSION
        {
            return Err(Error::OtherHarvest {
                out: out.to_owned(),
                hook: name,
                differences: probe.differences(&m),
            });
        }
    }
    Ok(())
}

/// Checks every shard `m` lists against its sha256. From the first one missing or damaged
/// on, the shards are removed and the manifest forgets them (the dataset is then incomplete),
/// so the harvest writes them again, identically, instead of trusting or keeping bad bytes.
fn redo_damaged_shards(dir: &Path, mut m: StoreManifest) -> Result<StoreManifest> {
    let damaged = m.shards.iter().position(|s| {
        let path = dir.join(&s.file);
        let problem = match fsutil::sha256_file(&path) {
            Ok(got) if got == s.sha256 => return false,
            Ok(got) => format!("its sha256 is {got}, the manifest says {}", s.sha256),
            Err(e) => e.to_string(),
        };
        tracing::warn!(
            "{}: {problem}; writing it and the shards after it again",
            path.display()
        );
        true
    });
    let Some(first) = damaged else {
        return Ok(m);
    };
    for s in m.shards.drain(first..) {
        fsutil::remove_file_if_present(&dir.join(&s.file))?;
    }
    m.complete = false;
    m.write(dir)?;
    Ok(m)
}

impl HookWriter {
    /// Opens the dataset in `dir`: creates it when `dir` is missing or empty, resumes it when
    /// its manifest has the same settings hash, and refuses anything else (a dataset with
    /// other settings, or a folder with files and no manifest). A complete dataset with the
    /// same settings opens with [`HookWriter::is_complete`] true. Shards that fail their
    /// sha256 are written again (see `redo_damaged_shards`).
    pub fn open(dir: &Path, spec: &ManifestSpec) -> Result<HookWriter> {
        spec.validate()?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let made_dir = !dir.exists();
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = DirLock::acquire(dir).map_err(|e| match e {
            concord_core::Error::Locked { dir, pid } => Error::Locked { dir, pid },
            other => other.into(),
        })?;
        let mut entries: Vec<String> = fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.as_ref().map_or(true, |n| n != LOCK_FILE))
            .collect::<io::Result<_>>()
            .map_err(|e| Error::io(dir, e))?;
        entries.sort();
        let created = !manifest_path.exists();
        let manifest = if !created {
            let m = StoreManifest::read(dir)?;
            if m.settings_hash != spec.settings_hash()
                || m.format_version != StoreManifest::FORMAT_VERSION
            {
                return Err(Error::SettingsMismatch {
                    dir: dir.to_owned(),
                    differences: spec.differences(&m),
                });
            }
            // Leftovers of a killed run: temporary files, and shards renamed into place whose
            // manifest update did not happen. Both are rewritten identically.
            let listed: Vec<&str> = m.shards.iter().map(|s| s.file.as_str()).collect();
            for name in &entries {
                let stale_shard = name.starts_with("part-") && !listed.contains(&name.as_str());
                if is_temp_name(name) || stale_shard {
                    let path = dir.join(name);
                    tracing::info!(path = %path.display(), "removing a leftover of an interrupted write");
                    fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                }
            }
            redo_damaged_shards(dir, m)?
        } else {
            if let Some(name) = entries.iter().find(|n| !is_temp_name(n)) {
                return Err(Error::NotADataset {
                    dir: dir.to_owned(),
                    example: name.clone(),
                });
            }
            for name in &entries {
                let path = dir.join(name);
                fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
            let m = spec.new_manifest();
            m.write(dir)?;
            m
        };
        let next_seq = manifest
            .shards
            .last()
            .map_or(0, |s| s.first_seq + s.windows);
        let last_row = match manifest.shards.last() {
            Some(s) => crate::dataset::last_row(&dir.join(&s.file))?,
            None => None,
        };
        Ok(HookWriter {
            dir: dir.to_owned(),
            schema: schema::schema(spec.d, spec.dtype),
            manifest,
            props: writer_properties(spec.dtype),
            current: None,
            next_seq,
            last_row,
            created,
            made_dir,
            _lock: lock,
        })
    }

    /// Removes the dataset if this writer started it (its shards, its manifest, and its
    /// folder if this writer made it); a resumed dataset is left as it is. For a harvest that
    /// stops on bad input: rows that can never be completed must not block a corrected run.
    pub fn discard(mut self) -> Result<()> {
        if let Some(shard) = self.current.take() {
            drop(shard.writer);
            let _ = fs::remove_file(&shard.tmp);
        }
        if !self.created {
            return Ok(());
        }
        let files = self.manifest.shards.iter().map(|s| s.file.as_str());
        for file in files.chain([MANIFEST_FILE]) {
            fsutil::remove_file_if_present(&self.dir.join(file))?;
        }
        let (dir, made_dir) = (self.dir.clone(), self.made_dir);
        drop(self); // releases the lock
        if made_dir {
            fs::remove_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        Ok(())
    }

    /// The dataset's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest as last written.
    pub fn manifest(&self) -> &StoreManifest {
        &self.manifest
    }

    /// True when the dataset was already complete when opened, or after [`HookWriter::finish`].
    pub fn is_complete(&self) -> bool {
        self.manifest.complete
    }

    /// The `seq` of the next window to push: the first window not yet stored in a finished
    /// shard (windows pushed since then count too).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last row stored (in a finished shard, or pushed since), to find where a resumed
    /// harvest continues in the corpus; `None` for an empty dataset.
    pub fn last_row(&self) -> Option<RowMeta> {
        self.last_row
    }

    /// Appends one context window: `rows` (all with `seq == next_seq()`; exactly
    /// `context_len` of them when packed, 1 to `context_len` per document) and their
    /// activations `acts` `(rows, d)` in f32, converted here to the stored dtype.
    pub fn push_window(&mut self, rows: &[RowMeta], acts: &[f32]) -> Result<()> {
        let seq = self.next_seq;
        let bad = |reason: String| {
            Err(Error::BadWindow {
                dir: self.dir.clone(),
                seq,
                reason,
            })
        };
        if self.manifest.complete {
            return Err(Error::AlreadyComplete {
                dir: self.dir.clone(),
            });
        }
        let (d, context_len) = (self.manifest.d, self.manifest.context_len);
        if rows.is_empty() {
            return bad("the window has no rows".into());
        }
        if rows.len() > context_len {
            return bad(format!(
                "{} rows exceed the context length {context_len}",
                rows.len()
            ));
        }
        if self.manifest.packing == Packing::Packed && rows.len() != context_len {
            return bad(format!(
                "a packed window needs {context_len} rows, got {}",
                rows.len()
            ));
        }
        if acts.len() != rows.len() * d {
            return bad(format!(
                "{} activation values for {} rows of width {d}",
                acts.len(),
                rows.len()
            ));
        }
        if let Some(r) = rows.iter().find(|r| r.seq != seq) {
            return bad(format!(
                "a row has seq {} (windows must be pushed in order)",
                r.seq
            ));
        }
        if self.current.is_none() {
            self.current = Some(self.start_shard()?);
        }
        let shard = self.current.as_mut().expect("a shard was just opened");
        let tmp = shard.tmp.clone();
        let batch = schema::encode(&self.schema, d, self.manifest.dtype, rows, acts)
            .map_err(|e| Error::arrow(&tmp, e))?;
        shard
            .writer
            .write(&batch)
            .map_err(|e| Error::parquet(&tmp, e))?;
        // One row group per window: random access to a window reads exactly its rows, and
        // the writer never holds more than one window.
        shard.writer.flush().map_err(|e| Error::parquet(&tmp, e))?;
        shard.rows += rows.len() as u64;
        shard.windows += 1;
        self.next_seq += 1;
        self.last_row = rows.last().copied();
        if shard.rows >= self.manifest.rows_per_shard {
            self.close_shard()?;
        }
        Ok(())
    }

    fn start_shard(&self) -> Result<OpenShard> {
        let file = shard_file_name(self.manifest.shards.len());
        let tmp = fsutil::temp_path(&self.dir.join(&file));
        let out = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let sink = HashingWriter {
            out: BufWriter::with_capacity(1 << 20, out),
            hasher: Sha256::new(),
        };
        let writer = ArrowWriter::try_new(sink, self.schema.clone(), Some(self.props.clone()))
            .map_err(|e| Error::parquet(&tmp, e))?;
        Ok(OpenShard {
            writer,
            tmp,
            file,
            rows: 0,
            windows: 0,
            first_seq: self.next_seq,
        })
    }

    /// Finishes the open shard: footer, sync, rename, manifest.
    fn close_shard(&mut self) -> Result<()> {
        let Some(shard) = self.current.take() else {
            return Ok(());
        };
        let tmp = shard.tmp;
        let sink = shard
            .writer
            .into_inner()
            .map_err(|e| Error::parquet(&tmp, e))?;
        let sha256 = hex::encode(sink.hasher.finalize());
        let file = sink
            .out
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        let path = self.dir.join(&shard.file);
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        self.manifest.shards.push(ShardInfo {
            file: shard.file,
            rows: shard.rows,
            sha256,
            first_seq: shard.first_seq,
            windows: shard.windows,
        });
        self.manifest.write(&self.dir)?;
        tracing::debug!(path = %path.display(), rows = shard.rows, "shard written");
        Ok(())
    }

    /// Writes the last (partial) shard and marks the dataset complete. Finishing a dataset
    /// that was already complete is a no-op.
    pub fn finish(mut self) -> Result<StoreManifest> {
        if !self.manifest.complete {
            self.close_shard()?;
            self.manifest.complete = true;
            self.manifest.write(&self.dir)?;
        }
        Ok(self.manifest.clone())
    }
}

impl Drop for HookWriter {
    /// A writer dropped without [`HookWriter::finish`] (an error, a panic) removes its
    /// unfinished shard; the manifest still lists only finished shards.
    fn drop(&mut self) {
        if let Some(shard) = self.current.take() {
            drop(shard.writer);
            let _ = fs::remove_file(&shard.tmp);
        }
    }
}

/// Writes the datasets of several hooks of one harvest, `OUT/<hook>/` each, with identical
/// windows (and, for equal `rows_per_shard`, identical shard boundaries).
#[derive(Debug)]
pub struct StoreWriter {
    writers: Vec<HookWriter>,
    out: PathBuf,
    /// Whether `out` did not exist before [`StoreWriter::open`].
    made_out: bool,
}

impl StoreWriter {
    /// Opens (creates or resumes) one [`HookWriter`] per spec under `out`. The specs must
    /// agree on model, tokenizer, corpus, context length and packing, and name distinct hooks;
    /// other datasets already in `out` must come from the same harvest.
    pub fn open(out: &Path, specs: Vec<ManifestSpec>) -> Result<StoreWriter> {
        let Some(first) = specs.first() else {
            return Err(Error::InvalidSpec {
                reason: "no hooks to write".into(),
            });
        };
        for s in &specs {
            let same = s.model == first.model
                && s.tokenizer_sha256 == first.tokenizer_sha256
                && s.corpus_sha256 == first.corpus_sha256
                && s.context_len == first.context_len
                && s.packing == first.packing
                && s.settings == first.settings;
            if !same {
                return Err(Error::InvalidSpec {
                    reason: format!(
                        "{} and {} disagree on the rows' settings",
                        first.hook, s.hook
                    ),
                });
            }
            if specs.iter().filter(|t| t.hook == s.hook).count() > 1 {
                return Err(Error::InvalidSpec {
                    reason: format!("hook {} is listed twice", s.hook),
                });
            }
        }
        check_siblings(out, first, &specs)?;
        let made_out = !out.exists();
        let writers = specs
            .into_iter()
            .map(|s| HookWriter::open(&out.join(s.hook.to_string()), &s))
            .collect::<Result<Vec<_>>>()?;
        Ok(StoreWriter {
            writers,
            out: out.to_owned(),
            made_out,
        })
    }

    /// Removes the datasets this harvest started ([`HookWriter::discard`]), and the store's
    /// folder if it made it and nothing else is left there.
    pub fn discard(self) -> Result<()> {
        for w in self.writers {
            w.discard()?;
        }
        if self.made_out {
            let _ = fs::remove_dir(&self.out);
        }
        Ok(())
    }

    /// The hook writers, in the order of the specs.
    pub fn hooks(&self) -> &[HookWriter] {
        &self.writers
    }

    /// True when every hook's dataset is complete.
    pub fn is_complete(&self) -> bool {
        self.writers.iter().all(HookWriter::is_complete)
    }

    /// The first window some hook still needs (hooks may stand at different windows after a
    /// kill; those ahead skip the windows they hold).
    pub fn next_seq(&self) -> u64 {
        self.writers
            .iter()
            .filter(|w| !w.is_complete())
            .map(HookWriter::next_seq)
            .min()
            .unwrap_or_else(|| {
                self.writers
                    .iter()
                    .map(HookWriter::next_seq)
                    .max()
                    .unwrap_or(0)
            })
    }

    /// Appends one window to every hook that needs it: `acts[i]` `(rows, d_i)` belongs to the
    /// i-th spec's hook.
    pub fn push_window(&mut self, rows: &[RowMeta], acts: &[&[f32]]) -> Result<()> {
        if acts.len() != self.writers.len() {
            return Err(Error::InvalidSpec {
                reason: format!(
                    "{} activation buffers for {} hooks",
                    acts.len(),
                    self.writers.len()
                ),
            });
        }
        let seq = rows.first().map_or(self.next_seq(), |r| r.seq);
        let push = |w: &mut HookWriter, xs: &[f32]| -> Result<()> {
            if w.is_complete() || w.next_seq() > seq {
                return Ok(());
            }
            w.push_window(rows, xs)
        };
        // Hooks are encoded on up to `available_parallelism` threads: the harvest calls this
        // between forward passes, while the cores the model used would otherwise idle.
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let per_thread = self.writers.len().div_ceil(threads.max(1));
        if per_thread >= self.writers.len() {
            for (w, xs) in self.writers.iter_mut().zip(acts) {
                push(w, xs)?;
            }
            return Ok(());
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .writers
                .chunks_mut(per_thread)
                .zip(acts.chunks(per_thread))
                .map(|(ws, xss)| {
                    s.spawn(move || ws.iter_mut().zip(xss).try_for_each(|(w, xs)| push(w, xs)))
                })
                .collect();
            handles
                .into_iter()
                .try_for_each(|h| h.join().expect("a writer thread panicked"))
        })
    }

    /// Finishes every hook's dataset and returns their manifests.
    pub fn finish(self) -> Result<Vec<StoreManifest>> {
        self.writers.into_iter().map(HookWriter::finish).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = serde_json::json!({"b": 1, "a": {"d": [1, {"z": 0, "y": "x"}], "c": null}});
        let mut s = String::new();
        canonical_json(&v, &mut s);
        assert_eq!(s, r#"{"a":{"c":null,"d":[1,{"y":"x","z":0}]},"b":1}"#);
    }

    #[test]
    fn default_rows_per_shard_is_whole_windows() {
        assert_eq!(default_rows_per_shard(576, Dtype::F32, 256) % 256, 0);
        assert_eq!(default_rows_per_shard(576, Dtype::F32, 256), 29_184);
        assert_eq!(default_rows_per_shard(1 << 30, Dtype::F32, 256), 256);
    }
}
