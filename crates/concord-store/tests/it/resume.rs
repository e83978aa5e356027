//! Resuming after a kill ends byte-identical to an uninterrupted write; other settings are
//! refused.

use std::fs;
use std::path::Path;

use concord_core::fsutil;
use concord_store::{Dataset, Dtype, Error, HookWriter, Packing, StoreManifest, StoreWriter};

use crate::support::{self, spec, window};

fn shas(m: &StoreManifest) -> Vec<(String, String)> {
    m.shards
        .iter()
        .map(|s| (s.file.clone(), s.sha256.clone()))
        .collect()
}

/// Pushes windows `from..to` and "kills" the writer: it is leaked, so its open shard stays
/// behind as a temporary file, as after SIGKILL.
fn push_and_kill(dir: &Path, s: &concord_store::ManifestSpec, to: u64) {
    let mut w = HookWriter::open(dir, s).unwrap();
    for seq in w.next_seq()..to {
        let (rows, xs) = window(seq, s.context_len, s.packing, s.d, 0);
        w.push_window(&rows, &xs).unwrap();
    }
    std::mem::forget(w);
}

#[test]
fn resume_after_kill_is_identical_to_an_uninterrupted_write() {
    for packing in [Packing::Packed, Packing::PerDocument] {
        let s = spec("blocks.4.hook_mlp_out", 7, Dtype::F16, 4, packing, 12);
        let whole = support::tmp();
        let reference = support::write(whole.path(), &s, 20, 0);

        let dir = support::tmp();
        push_and_kill(dir.path(), &s, 8);
        let names = support::files(dir.path());
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(".part-") && n.contains(".tmp-")),
            "{names:?}"
        );
        let m = StoreManifest::read(dir.path()).unwrap();
        assert!(!m.complete);
        // Killed again later, and the manifest update after the last rename was lost: the
        // renamed shard is on disk but not listed.
        push_and_kill(dir.path(), &s, 14);
        let mut m = StoreManifest::read(dir.path()).unwrap();
        let dropped = m.shards.pop().unwrap();
        m.write(dir.path()).unwrap();
        assert!(dir.path().join(&dropped.file).exists());
        fs::write(
            dir.path().join(".part-00009.parquet.tmp-1"),
            b"half a shard",
        )
        .unwrap();

        let w = HookWriter::open(dir.path(), &s).unwrap();
        assert_eq!(w.next_seq(), dropped.first_seq);
        let last = w.last_row().unwrap();
        assert_eq!(last.seq, dropped.first_seq - 1);
        drop(w);
        let resumed = support::write(dir.path(), &s, 20, 0);
        assert_eq!(shas(&resumed), shas(&reference), "{packing:?}");
        assert_eq!(resumed, reference);
        assert_eq!(support::files(dir.path()), support::files(whole.path()));
        Dataset::open(dir.path()).unwrap().verify().unwrap();
    }
}

#[test]
fn store_writer_resumes_hooks_that_stopped_at_different_windows() {
    let specs = vec![
        spec(
            "blocks.0.hook_mlp_out",
            3,
            Dtype::F32,
            4,
            Packing::Packed,
            8,
        ),
        spec(
            "blocks.5.hook_resid_post",
            5,
            Dtype::Bf16,
            4,
            Packing::Packed,
            8,
        ),
    ];
    let run = |out: &Path, stop: Option<u64>| {
        let mut w = StoreWriter::open(out, specs.clone()).unwrap();
        for seq in w.next_seq()..9 {
            if stop == Some(seq) {
                std::mem::forget(w);
                return;
            }
            let (rows, a) = window(seq, 4, Packing::Packed, 3, 0);
            let (_, b) = window(seq, 4, Packing::Packed, 5, 1);
            w.push_window(&rows, &[&a, &b]).unwrap();
        }
        w.finish().unwrap();
    };
    let whole = support::tmp();
    run(whole.path(), None);
    let out = support::tmp();
    run(out.path(), Some(7));
    // The second hook lost its last shard: the hooks now stand at windows 6 and 4.
    let hook1 = out.path().join("blocks.5.hook_resid_post");
    let mut m = StoreManifest::read(&hook1).unwrap();
    m.shards.pop();
    m.write(&hook1).unwrap();
    let w = StoreWriter::open(out.path(), specs.clone()).unwrap();
    let stands: Vec<u64> = w.hooks().iter().map(HookWriter::next_seq).collect();
    assert_eq!(stands, [6, 4]);
    assert_eq!(w.next_seq(), 4);
    drop(w);
    run(out.path(), None);
    for hook in ["blocks.0.hook_mlp_out", "blocks.5.hook_resid_post"] {
        let a = StoreManifest::read(&whole.path().join(hook)).unwrap();
        let b = StoreManifest::read(&out.path().join(hook)).unwrap();
        assert_eq!(shas(&a), shas(&b), "{hook}");
        assert!(b.complete);
    }
    // Reopening a finished store changes nothing.
    let w = StoreWriter::open(out.path(), specs).unwrap();
    assert!(w.is_complete());
    w.finish().unwrap();
}

#[test]
fn other_settings_are_refused_and_nothing_is_touched() {
    let dir = support::tmp();
    let s = spec(
        "blocks.1.hook_mlp_out",
        4,
        Dtype::F32,
        4,
        Packing::Packed,
        8,
    );
    support::write(dir.path(), &s, 3, 0);
    let before: Vec<(String, String)> = support::files(dir.path())
        .into_iter()
        .map(|f| {
            let sha = fsutil::sha256_file(&dir.path().join(&f)).unwrap();
            (f, sha)
        })
        .collect();
    let mut other_dtype = s.clone();
    other_dtype.dtype = Dtype::Bf16;
    let mut other_bound = s.clone();
    other_bound.settings = serde_json::json!({"tokens": 2000, "compute_dtype": "f32"});
    let mut other_corpus = s.clone();
    other_corpus.corpus_sha256 = "22".repeat(32);
    for (other, field) in [
        (other_dtype, "dtype"),
        (other_bound, "settings"),
        (other_corpus, "corpus_sha256"),
    ] {
        let err = HookWriter::open(dir.path(), &other).unwrap_err();
        assert!(matches!(err, Error::SettingsMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(field) && msg.contains(&dir.path().display().to_string()),
            "{msg}"
        );
    }
    let after: Vec<(String, String)> = support::files(dir.path())
        .into_iter()
        .map(|f| {
            let sha = fsutil::sha256_file(&dir.path().join(&f)).unwrap();
            (f, sha)
        })
        .collect();
    assert_eq!(before, after);

    // A complete dataset with the same settings opens as complete and takes no more rows.
    let mut w = HookWriter::open(dir.path(), &s).unwrap();
    assert!(w.is_complete());
    assert_eq!(w.next_seq(), 3);
    let (rows, xs) = window(3, 4, Packing::Packed, 4, 0);
    assert!(matches!(
        w.push_window(&rows, &xs),
        Err(Error::AlreadyComplete { .. })
    ));

    // A folder with foreign files is not written into.
    let foreign = support::tmp();
    fs::write(foreign.path().join("notes.txt"), b"mine").unwrap();
    let err = HookWriter::open(foreign.path(), &s).unwrap_err();
    assert!(
        matches!(err, Error::NotADataset { .. }) && err.to_string().contains("notes.txt"),
        "{err}"
    );
}

#[test]
fn malformed_windows_are_refused() {
    let dir = support::tmp();
    let s = spec(
        "blocks.1.hook_mlp_out",
        2,
        Dtype::F32,
        4,
        Packing::Packed,
        8,
    );
    let mut w = HookWriter::open(dir.path(), &s).unwrap();
    let (rows, xs) = window(0, 4, Packing::Packed, 2, 0);
    let check = |r: Result<(), Error>, needle: &str| {
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains(needle), "{msg}");
    };
    check(w.push_window(&rows[..3], &xs[..6]), "needs 4 rows");
    check(w.push_window(&rows, &xs[..7]), "7 activation values");
    let (later, later_xs) = window(1, 4, Packing::Packed, 2, 0);
    check(w.push_window(&later, &later_xs), "seq 1");
    check(w.push_window(&[], &[]), "no rows");
    w.push_window(&rows, &xs).unwrap();
    assert_eq!(w.next_seq(), 1);
}

#[test]
fn a_live_writer_locks_the_dataset_and_a_dead_ones_lock_is_taken_over() {
    let dir = support::tmp();
    let s = spec(
        "blocks.1.hook_mlp_out",
        2,
        Dtype::F32,
        4,
        Packing::Packed,
        8,
    );
    // Process 1 is always alive: its lock holds.
    fs::write(dir.path().join(".lock"), "1").unwrap();
    let err = HookWriter::open(dir.path(), &s).unwrap_err();
    assert!(matches!(err, Error::Locked { pid: 1, .. }), "{err}");
    // A lock left by a process that no longer exists is stale.
    fs::write(dir.path().join(".lock"), "4000000000").unwrap();
    let w = HookWriter::open(dir.path(), &s).unwrap();
    assert_eq!(
        fs::read_to_string(dir.path().join(".lock")).unwrap(),
        std::process::id().to_string()
    );
    w.finish().unwrap();
    assert!(!dir.path().join(".lock").exists());
}

#[test]
fn store_writer_refuses_hooks_that_disagree_on_the_rows() {
    let out = support::tmp();
    let a = spec(
        "blocks.0.hook_mlp_out",
        3,
        Dtype::F32,
        4,
        Packing::Packed,
        8,
    );
    let mut b = spec(
        "blocks.1.hook_mlp_out",
        3,
        Dtype::F32,
        4,
        Packing::Packed,
        8,
    );
    b.context_len = 8;
    let err = StoreWriter::open(out.path(), vec![a.clone(), b]).unwrap_err();
    assert!(err.to_string().contains("disagree"), "{err}");
    let err = StoreWriter::open(out.path(), vec![a.clone(), a.clone()]).unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
    let mut w = StoreWriter::open(out.path(), vec![a]).unwrap();
    let (rows, xs) = window(0, 4, Packing::Packed, 3, 0);
    let err = w.push_window(&rows, &[&xs, &xs]).unwrap_err();
    assert!(
        err.to_string().contains("2 activation buffers for 1 hooks"),
        "{err}"
    );
    assert!(
        support::files(out.path())
            .iter()
            .all(|f| f == "blocks.0.hook_mlp_out")
    );
}

#[test]
fn damaged_or_missing_shards_are_written_again() {
    let s = spec(
        "blocks.2.hook_resid_post",
        5,
        Dtype::F32,
        4,
        Packing::Packed,
        8,
    );
    let whole = support::tmp();
    let reference = support::write(whole.path(), &s, 12, 0);
    assert_eq!(reference.shards.len(), 6);

    // A complete dataset with a truncated shard, and a killed one with a flipped byte.
    for (damage, complete) in [("truncate", true), ("flip", false), ("remove", false)] {
        let dir = support::tmp();
        if complete {
            support::write(dir.path(), &s, 12, 0);
        } else {
            push_and_kill(dir.path(), &s, 9);
        }
        let victim = dir.path().join(&reference.shards[2].file);
        let mut bytes = fs::read(&victim).unwrap();
        match damage {
            "truncate" => fs::write(&victim, &bytes[..100]).unwrap(),
            "flip" => {
                bytes[200] ^= 1;
                fs::write(&victim, &bytes).unwrap();
            }
            _ => fs::remove_file(&victim).unwrap(),
        }
        let w = HookWriter::open(dir.path(), &s).unwrap();
        assert!(!w.is_complete(), "{damage}");
        assert_eq!(w.next_seq(), reference.shards[2].first_seq, "{damage}");
        assert_eq!(w.manifest().shards.len(), 2, "{damage}");
        drop(w);
        let names = support::files(dir.path());
        assert!(
            !names.iter().any(|n| n == &reference.shards[3].file),
            "{damage}: {names:?}"
        );
        let resumed = support::write(dir.path(), &s, 12, 0);
        assert_eq!(resumed, reference, "{damage}");
        assert_eq!(support::files(dir.path()), support::files(whole.path()));
    }
}

#[test]
fn a_store_refuses_hooks_of_another_harvest_but_takes_more_of_its_own() {
    let a = spec(
        "blocks.0.hook_mlp_out",
        3,
        Dtype::F32,
        4,
        Packing::Packed,
        8,
    );
    let out = support::tmp();
    let write = |s: &concord_store::ManifestSpec| {
        let mut w = StoreWriter::open(out.path(), vec![s.clone()])?;
        for seq in w.next_seq()..3 {
            let (rows, xs) = window(seq, 4, Packing::Packed, s.d, 0);
            w.push_window(&rows, &[&xs])?;
        }
        w.finish().map(|_| ())
    };
    write(&a).unwrap();
    // Another hook of the same harvest, in another dtype and width, by another spelling of
    // the model's name: welcome.
    let mut b = spec(
        "blocks.1.hook_resid_post",
        6,
        Dtype::Bf16,
        4,
        Packing::Packed,
        4,
    );
    b.model = "synthetic/".into();
    write(&b).unwrap();
    // Another model's weights (their digest is a setting) or another corpus: refused.
    let mut c = spec(
        "blocks.2.hook_resid_post",
        3,
        Dtype::F32,
        4,
        Packing::Packed,
        8,
    );
    c.settings["model_sha256"] = serde_json::json!("ab".repeat(32));
    let err = write(&c).unwrap_err();
    assert!(matches!(err, Error::OtherHarvest { .. }), "{err}");
    assert!(err.to_string().contains("settings"), "{err}");
    let mut c = spec(
        "blocks.2.hook_resid_post",
        3,
        Dtype::F32,
        4,
        Packing::Packed,
        8,
    );
    c.corpus_sha256 = "22".repeat(32);
    let err = write(&c).unwrap_err();
    assert!(err.to_string().contains("corpus_sha256"), "{err}");
    assert!(!out.path().join("blocks.2.hook_resid_post").exists());
}

#[test]
fn discard_removes_only_what_this_run_started() {
    let parent = support::tmp();
    let out = parent.path().join("store");
    let a = spec(
        "blocks.0.hook_mlp_out",
        3,
        Dtype::F32,
        4,
        Packing::Packed,
        4,
    );
    let b = spec(
        "blocks.1.hook_mlp_out",
        3,
        Dtype::F32,
        4,
        Packing::Packed,
        4,
    );
    // A fresh store, discarded mid-way: nothing is left, not even its folder.
    let mut w = StoreWriter::open(&out, vec![a.clone()]).unwrap();
    for seq in 0..3 {
        let (rows, xs) = window(seq, 4, Packing::Packed, 3, 0);
        w.push_window(&rows, &[&xs]).unwrap();
    }
    w.discard().unwrap();
    assert!(!out.exists());
    // A resumed dataset stays; the one this run started goes.
    push_and_kill(&out.join("blocks.0.hook_mlp_out"), &a, 2);
    let before = support::files(&out.join("blocks.0.hook_mlp_out"));
    let mut w = StoreWriter::open(&out, vec![a.clone(), b.clone()]).unwrap();
    for seq in w.next_seq()..4 {
        let (rows, xs) = window(seq, 4, Packing::Packed, 3, 0);
        w.push_window(&rows, &[&xs, &xs]).unwrap();
    }
    w.discard().unwrap();
    assert_eq!(support::files(&out), ["blocks.0.hook_mlp_out"]);
    let after = support::files(&out.join("blocks.0.hook_mlp_out"));
    assert!(after.iter().all(|f| !f.contains(".tmp-")), "{after:?}");
    assert!(
        before
            .iter()
            .filter(|f| f.starts_with("part-"))
            .all(|f| after.contains(f))
    );
}
