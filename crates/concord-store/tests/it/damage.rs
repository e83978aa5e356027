//! Damaged, missing and unfinished datasets give clear errors naming the file.

use std::fs;

use concord_store::{Dataset, Dtype, Error, HookWriter, OpenOptions, Packing, StoreManifest};

use crate::support::{self, spec, window};

fn dataset() -> (tempfile::TempDir, StoreManifest) {
    let dir = support::tmp();
    let m = support::write(
        dir.path(),
        &spec(
            "blocks.0.hook_mlp_out",
            16,
            Dtype::F32,
            8,
            Packing::Packed,
            16,
        ),
        5,
        0,
    );
    (dir, m)
}

#[test]
fn truncated_shard_is_a_clear_error() {
    let (dir, m) = dataset();
    let path = dir.path().join(&m.shards[1].file);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::CorruptShard { .. }), "{err}");
    assert!(err.to_string().contains("part-00001.parquet"), "{err}");
}

#[test]
fn flipped_bytes_fail_verification_or_decoding() {
    let (dir, m) = dataset();
    let path = dir.path().join(&m.shards[0].file);
    let mut bytes = fs::read(&path).unwrap();
    // Damage the middle of the first row group: the page header or data of some column.
    for b in &mut bytes[40..600] {
        *b ^= 0x5a;
    }
    fs::write(&path, &bytes).unwrap();
    let ds = Dataset::open(dir.path()).unwrap();
    let err = ds.verify().unwrap_err();
    assert!(
        matches!(err, Error::ShaMismatch { .. }) && err.to_string().contains("part-00000.parquet"),
        "{err}"
    );
    let err = Dataset::open_with(
        dir.path(),
        &OpenOptions {
            verify_sha256: true,
            ..OpenOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::ShaMismatch { .. }), "{err}");
    // Reading the damaged window either fails naming the file or returns other values;
    // it never panics.
    match ds.read_window(0) {
        Err(e) => assert!(e.to_string().contains("part-00000.parquet"), "{e}"),
        Ok(b) => assert_ne!(b.xs, window(0, 8, Packing::Packed, 16, 0).1),
    }
}

#[test]
fn missing_shard_and_missing_manifest() {
    let (dir, m) = dataset();
    fs::remove_file(dir.path().join(&m.shards[2].file)).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::MissingShard { .. }) && err.to_string().contains("part-00002.parquet"),
        "{err}"
    );
    let empty = support::tmp();
    let err = Dataset::open(empty.path()).unwrap_err();
    assert!(matches!(err, Error::MissingManifest { .. }), "{err}");
}

#[test]
fn manifest_disagreeing_with_the_shard_is_an_error() {
    let (dir, mut m) = dataset();
    m.shards[0].rows += 8;
    m.shards[0].windows += 1;
    m.write(dir.path()).unwrap();
    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("the manifest lists"), "{err}");
}

#[test]
fn unfinished_dataset_needs_allow_incomplete() {
    let dir = support::tmp();
    let s = spec(
        "blocks.0.hook_mlp_out",
        4,
        Dtype::F32,
        8,
        Packing::Packed,
        16,
    );
    let mut w = HookWriter::open(dir.path(), &s).unwrap();
    for seq in 0..5 {
        let (rows, xs) = window(seq, 8, Packing::Packed, 4, 0);
        w.push_window(&rows, &xs).unwrap();
    }
    drop(w); // an error path: the open shard is removed, finished shards stay
    assert!(
        support::files(dir.path())
            .iter()
            .all(|f| !f.contains(".tmp-"))
    );
    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Incomplete {
                shards: 2,
                rows: 32,
                ..
            }
        ),
        "{err}"
    );
    let ds = Dataset::open_with(
        dir.path(),
        &OpenOptions {
            verify_sha256: true,
            allow_incomplete: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert_eq!(ds.rows(), 32);
}
