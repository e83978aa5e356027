//! Batch orders: coverage, determinism, whole windows, resuming at a batch, epochs.

use std::collections::BTreeSet;

use concord_store::{Batch, Dataset, Dtype, Order, Packing, ReadConfig, RowMeta};

use crate::support::{self, spec, value};

fn dataset(packing: Packing, windows: u64) -> (tempfile::TempDir, Dataset) {
    let dir = support::tmp();
    support::write(
        dir.path(),
        &spec("blocks.0.hook_mlp_out", 3, Dtype::F32, 8, packing, 24),
        windows,
        0,
    );
    let ds = Dataset::open(dir.path()).unwrap();
    (dir, ds)
}

fn read(ds: &Dataset, cfg: &ReadConfig) -> Vec<Batch> {
    ds.batches(cfg).unwrap().map(Result::unwrap).collect()
}

fn key(r: &RowMeta) -> (u64, u32) {
    (r.seq, r.pos)
}

/// Every row exactly once, each with its own activation.
fn check_epoch(ds: &Dataset, batches: &[Batch]) {
    let mut seen = BTreeSet::new();
    for b in batches {
        for (i, r) in b.rows.iter().enumerate() {
            assert!(seen.insert(key(r)), "row {:?} twice", key(r));
            let want: Vec<f32> = (0..3).map(|j| value(r.seq, r.pos, j, 0)).collect();
            assert_eq!(b.row(i), want);
        }
    }
    assert_eq!(seen.len() as u64, ds.rows());
}

fn cfg(order: Order, seed: u64) -> ReadConfig {
    ReadConfig {
        batch_rows: 16,
        order,
        seed,
        epochs: 1,
        start_batch: 0,
        drop_last: false,
    }
}

#[test]
fn every_order_covers_every_row_once_per_epoch() {
    for packing in [Packing::Packed, Packing::PerDocument] {
        let (_dir, ds) = dataset(packing, 13);
        for order in [
            Order::Sequential,
            Order::Windows,
            Order::Rows { buffer_rows: 20 },
            Order::Rows { buffer_rows: 1000 },
        ] {
            let batches = read(&ds, &cfg(order, 7));
            assert_eq!(
                batches.len() as u64,
                ds.rows().div_ceil(16),
                "{packing:?} {order:?}"
            );
            assert!(batches.iter().rev().skip(1).all(|b| b.len() == 16));
            let idx: Vec<u64> = batches.iter().map(|b| b.index).collect();
            assert_eq!(idx, (0..batches.len() as u64).collect::<Vec<_>>());
            check_epoch(&ds, &batches);
        }
    }
}

#[test]
fn sequential_order_is_stored_order() {
    let (_dir, ds) = dataset(Packing::PerDocument, 9);
    let all = ds.read_rows(0..ds.rows()).unwrap();
    let rows: Vec<RowMeta> = read(&ds, &cfg(Order::Sequential, 0))
        .into_iter()
        .flat_map(|b| b.rows)
        .collect();
    assert_eq!(rows, all.rows);
}

#[test]
fn window_order_is_whole_shuffled_windows() {
    let (_dir, ds) = dataset(Packing::Packed, 40);
    let batches = read(&ds, &cfg(Order::Windows, 3));
    let mut seqs = Vec::new();
    for b in &batches {
        assert_eq!(b.len(), 16);
        for w in b.rows.chunks(8) {
            assert!(w.iter().all(|r| r.seq == w[0].seq));
            assert_eq!(
                w.iter().map(|r| r.pos).collect::<Vec<_>>(),
                (0..8).collect::<Vec<_>>()
            );
            seqs.push(w[0].seq);
        }
    }
    assert_ne!(seqs, (0..40).collect::<Vec<_>>(), "not shuffled");
    // The study's batches: 2,048 rows = 8 windows of 256.
    let study = ReadConfig::study(0);
    assert_eq!(
        (study.batch_rows, study.order, study.drop_last),
        (2048, Order::Windows, false)
    );
}

#[test]
fn same_seed_same_order_other_seed_other_order() {
    let (_dir, ds) = dataset(Packing::Packed, 20);
    for order in [Order::Windows, Order::Rows { buffer_rows: 50 }] {
        let a = read(&ds, &cfg(order, 11));
        let b = read(&ds, &cfg(order, 11));
        let c = read(&ds, &cfg(order, 12));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}

#[test]
fn row_order_mixes_windows_within_a_batch() {
    let (_dir, ds) = dataset(Packing::Packed, 20);
    let batches = read(&ds, &cfg(Order::Rows { buffer_rows: 64 }, 5));
    let distinct: BTreeSet<u64> = batches[0].rows.iter().map(|r| r.seq).collect();
    assert!(distinct.len() >= 4, "{distinct:?}");
}

#[test]
fn starting_at_batch_n_equals_skipping_n_batches() {
    for packing in [Packing::Packed, Packing::PerDocument] {
        let (_dir, ds) = dataset(packing, 17);
        for order in [
            Order::Sequential,
            Order::Windows,
            Order::Rows { buffer_rows: 40 },
        ] {
            let mut c = cfg(order, 9);
            c.epochs = 3;
            let all = read(&ds, &c);
            for start in [
                0,
                1,
                5,
                all.len() as u64 - 1,
                all.len() as u64,
                all.len() as u64 + 4,
            ] {
                c.start_batch = start;
                let tail = read(&ds, &c);
                assert_eq!(
                    tail,
                    all[(start as usize).min(all.len())..],
                    "{packing:?} {order:?} {start}"
                );
                assert_eq!(ds.batches(&c).unwrap().remaining(), tail.len() as u64);
            }
        }
    }
}

#[test]
fn epochs_have_their_own_permutations() {
    let (_dir, ds) = dataset(Packing::Packed, 10);
    let mut c = cfg(Order::Windows, 1);
    c.epochs = 2;
    let all = read(&ds, &c);
    let per = ds.rows().div_ceil(16) as usize;
    assert_eq!(all.len(), 2 * per);
    check_epoch(&ds, &all[..per]);
    check_epoch(&ds, &all[per..]);
    assert_ne!(
        all[..per].iter().map(|b| &b.rows).collect::<Vec<_>>(),
        all[per..].iter().map(|b| &b.rows).collect::<Vec<_>>()
    );
}

#[test]
fn drop_last_drops_each_epochs_short_batch() {
    let (_dir, ds) = dataset(Packing::Packed, 5); // 40 rows: 2 full batches of 16 and one of 8
    let mut c = cfg(Order::Windows, 0);
    c.drop_last = true;
    c.epochs = 2;
    let all = read(&ds, &c);
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|b| b.len() == 16));
}

#[test]
fn invalid_configs_are_errors() {
    let (_dir, ds) = dataset(Packing::Packed, 2);
    assert!(ds.batches(&cfg(Order::Rows { buffer_rows: 0 }, 0)).is_err());
    let mut c = cfg(Order::Windows, 0);
    c.batch_rows = 0;
    assert!(ds.batches(&c).is_err());
}

#[test]
fn a_one_shard_footer_cache_reads_the_same_batches() {
    use concord_store::{FooterCache, OpenOptions};
    let (dir, all) = dataset(Packing::PerDocument, 30);
    assert!(all.manifest().shards.len() >= 5);
    let opts = OpenOptions {
        footers: FooterCache::Shards(1),
        ..OpenOptions::default()
    };
    let small = Dataset::open_with(dir.path(), &opts).unwrap();
    for order in [
        Order::Sequential,
        Order::Windows,
        Order::Rows { buffer_rows: 40 },
    ] {
        assert_eq!(
            read(&small, &cfg(order, 2)),
            read(&all, &cfg(order, 2)),
            "{order:?}"
        );
    }
    assert_eq!(
        small.read_rows(3..90).unwrap(),
        all.read_rows(3..90).unwrap()
    );
}

#[test]
fn window_ranges_read_disjoint_halves() {
    for packing in [Packing::Packed, Packing::PerDocument] {
        let (_dir, ds) = dataset(packing, 15);
        let mid = ds.windows() / 2;
        for order in [
            Order::Sequential,
            Order::Windows,
            Order::Rows { buffer_rows: 20 },
        ] {
            let mut c = cfg(order, 5);
            c.epochs = 2;
            let halves: Vec<Vec<Batch>> = [0..mid, mid..ds.windows()]
                .into_iter()
                .map(|r| {
                    ds.batches_of_windows(&c, r)
                        .unwrap()
                        .map(Result::unwrap)
                        .collect()
                })
                .collect();
            let mut seen = BTreeSet::new();
            for (h, batches) in halves.iter().enumerate() {
                let rows: Vec<&RowMeta> = batches.iter().flat_map(|b| &b.rows).collect();
                assert!(rows.iter().all(|r| (r.seq >= mid) == (h == 1)), "{order:?}");
                let keys: BTreeSet<(u64, u32)> = rows.iter().map(|r| key(r)).collect();
                assert_eq!(keys.len() * 2, rows.len(), "every row once per epoch");
                seen.extend(keys);
                // Resuming inside a half.
                c.start_batch = 3;
                let tail: Vec<Batch> = ds
                    .batches_of_windows(&c, if h == 0 { 0..mid } else { mid..ds.windows() })
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                assert_eq!(tail, batches[3..]);
                c.start_batch = 0;
            }
            assert_eq!(seen.len() as u64, ds.rows());
        }
        // The whole range is the ordinary order.
        let c = cfg(Order::Windows, 5);
        let whole: Vec<Batch> = ds
            .batches_of_windows(&c, 0..ds.windows())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(whole, read(&ds, &c));
        assert!(ds.batches_of_windows(&c, 0..ds.windows() + 1).is_err());
    }
}
