//! Several hooks of one store read in lockstep.

use concord_store::{Dataset, Dtype, Error, Lockstep, Order, Packing, ReadConfig, StoreWriter};

use crate::support::{self, spec, window};

const HOOKS: [&str; 3] = [
    "blocks.0.hook_mlp_out",
    "blocks.1.hook_mlp_out",
    "blocks.2.mlp.hook_post",
];
const DS: [usize; 3] = [3, 3, 6];

fn harvest(out: &std::path::Path, packing: Packing, windows: u64) {
    let specs = HOOKS
        .iter()
        .zip(DS)
        .map(|(h, d)| {
            spec(
                h,
                d,
                if d == 6 { Dtype::Bf16 } else { Dtype::F32 },
                8,
                packing,
                20,
            )
        })
        .collect();
    let mut w = StoreWriter::open(out, specs).unwrap();
    for seq in 0..windows {
        let parts: Vec<(Vec<concord_store::RowMeta>, Vec<f32>)> = DS
            .iter()
            .enumerate()
            .map(|(h, &d)| window(seq, 8, packing, d, h as u64))
            .collect();
        let acts: Vec<&[f32]> = parts.iter().map(|p| p.1.as_slice()).collect();
        w.push_window(&parts[0].0, &acts).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn lockstep_batches_match_each_hook_read_alone() {
    for packing in [Packing::Packed, Packing::PerDocument] {
        let out = support::tmp();
        harvest(out.path(), packing, 11);
        let dirs: Vec<_> = HOOKS.iter().map(|h| out.path().join(h)).collect();
        let found = concord_store::hook_datasets(out.path()).unwrap();
        assert_eq!(found.iter().map(|f| f.1.clone()).collect::<Vec<_>>(), dirs);
        assert_eq!(found[2].0.to_string(), HOOKS[2]);
        let lock = Lockstep::open(&dirs).unwrap();
        let singles: Vec<Dataset> = dirs.iter().map(|d| Dataset::open(d).unwrap()).collect();
        for order in [Order::Windows, Order::Rows { buffer_rows: 30 }] {
            let cfg = ReadConfig {
                batch_rows: 12,
                order,
                seed: 4,
                epochs: 1,
                start_batch: 0,
                drop_last: false,
            };
            let batches: Vec<_> = lock.batches(&cfg).unwrap().map(Result::unwrap).collect();
            let mut total = 0;
            for (h, ds) in singles.iter().enumerate() {
                let alone: Vec<_> = ds.batches(&cfg).unwrap().map(Result::unwrap).collect();
                assert_eq!(alone.len(), batches.len());
                for (a, b) in alone.iter().zip(&batches) {
                    assert_eq!(a.rows, b.rows);
                    assert_eq!(a.xs, b.xs[h]);
                    assert_eq!(b.ds[h], DS[h]);
                }
            }
            for b in &batches {
                total += b.rows.len();
            }
            assert_eq!(total as u64, lock.rows());
        }
    }
}

#[test]
fn datasets_with_other_rows_are_refused() {
    let a = support::tmp();
    let b = support::tmp();
    harvest(a.path(), Packing::Packed, 6);
    harvest(b.path(), Packing::Packed, 7);
    let err = Lockstep::open(&[a.path().join(HOOKS[0]), b.path().join(HOOKS[0])]).unwrap_err();
    assert!(
        matches!(err, Error::Lockstep { .. }) && err.to_string().contains("row count"),
        "{err}"
    );

    // Same layout and settings, other tokens: found when the rows are read.
    let c = support::tmp();
    let s = spec(HOOKS[0], 3, Dtype::F32, 8, Packing::Packed, 20);
    let mut w = concord_store::HookWriter::open(c.path(), &s).unwrap();
    for seq in 0..6 {
        let (mut rows, xs) = window(seq, 8, Packing::Packed, 3, 0);
        rows[3].token += 1;
        w.push_window(&rows, &xs).unwrap();
    }
    w.finish().unwrap();
    let lock = Lockstep::open(&[a.path().join(HOOKS[0]), c.path().to_owned()]).unwrap();
    let err = lock
        .batches(&ReadConfig::sequential(8))
        .unwrap()
        .find_map(Result::err)
        .unwrap();
    assert!(err.to_string().contains("rows differ"), "{err}");

    let other = support::tmp();
    harvest(other.path(), Packing::PerDocument, 6);
    let err = Lockstep::open(&[a.path().join(HOOKS[0]), other.path().join(HOOKS[0])]).unwrap_err();
    assert!(err.to_string().contains("packing"), "{err}");
}
