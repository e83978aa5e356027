//! The parquet activation store: sharded writer, streaming, shuffled and lockstep readers,
//! corpus readers, and small parquet tables.
//!
//! A store is a folder with one dataset per hook, `STORE/<hook name>/`, holding
//! `part-NNNNN.parquet` shards and a `manifest.json` ([`concord_core::StoreManifest`]).
//! Every row is one token: `doc`, `pos`, `seq`, `token`, `byte_start`, `byte_end` and the
//! activation `act` (see [`schema`] and `docs/STORE.md`).
//!
//! - Harvest: [`StoreWriter`] (several hooks, identical windows) or [`HookWriter`] (one hook),
//!   reading text through [`Corpus`].
//! - Train, eval: [`Dataset`] or [`Lockstep`] with a [`ReadConfig`] (stored order, the study's
//!   shuffled windows, or shuffled rows; seeded, resumable at any batch).
//! - Align: [`Dataset::read_rows`] / [`Dataset::stream`] for activations on shared text,
//!   [`MatchTable`] for per-feature matches; [`Table`] for any small result table.
//!
//! This crate knows nothing of models and does not link libtorch. `docs/STORE.md` describes
//! the format, the orders and the measured speed; `docs/design/store.md` the decisions.
//!
//! ```no_run
//! # fn main() -> concord_store::Result<()> {
//! use concord_store::{Dataset, Lockstep, Order, ReadConfig};
//! // The study's order: shuffled whole windows, 2,048 rows a batch, resumable at any batch.
//! let ds = Dataset::open("store/blocks.3.hook_mlp_out".as_ref())?;
//! let cfg = ReadConfig { start_batch: 100, ..ReadConfig::study(0) };
//! for batch in ds.batches(&cfg)? {
//!     let batch = batch?; // batch.xs: (rows, d) f32, batch.rows: metadata
//! #   let _ = batch;
//! }
//! // Single rows, several hooks in lockstep.
//! let hooks = Lockstep::open(&["store/blocks.0.hook_mlp_out", "store/blocks.3.hook_mlp_out"])?;
//! let cfg = ReadConfig { order: Order::Rows { buffer_rows: 1 << 18 }, ..ReadConfig::study(1) };
//! for batch in hooks.batches(&cfg)? {
//!     let batch = batch?; // batch.xs[h]: (rows, d_h)
//! #   let _ = batch;
//! }
//! # Ok(()) }
//! ```

mod corpus;
mod dataset;
mod error;
mod lockstep;
mod order;
pub mod schema;
mod table;
mod writer;

pub use concord_core::manifest::{Packing, ShardInfo};
pub use concord_core::{Dtype, HookName, StoreManifest};
pub use corpus::{Corpus, CorpusFormat, Document, Documents};
pub use dataset::{Batch, Dataset, DatasetBatches, FooterCache, OpenOptions, hook_datasets};
pub use error::{Error, Result};
pub use lockstep::{Lockstep, LockstepBatches};
pub use order::{LockstepBatch, Order, ReadConfig};
pub use schema::RowMeta;
pub use table::{Column, MatchTable, Table};
pub use writer::{HookWriter, ManifestSpec, StoreWriter, default_rows_per_shard, shard_file_name};
