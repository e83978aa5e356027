//! Measures the store's write and read throughput on synthetic activations (d 576, windows of
//! 256 rows, the study's batches of 2,048 rows) and prints one line per measurement.
//!
//! `CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo run -p concord-store --example store_speed -- DIR [WINDOWS]`

use std::path::{Path, PathBuf};
use std::time::Instant;

use concord_store::{
    Dataset, Dtype, FooterCache, Lockstep, ManifestSpec, OpenOptions, Order, Packing, ReadConfig,
    RowMeta, StoreWriter, default_rows_per_shard,
};

const D: usize = 576;
const CONTEXT: usize = 256;

fn spec(hook: &str, dtype: Dtype) -> ManifestSpec {
    ManifestSpec {
        model: "synthetic".into(),
        hook: hook.parse().expect("a valid hook name"),
        d: D,
        dtype,
        tokenizer: "synthetic".into(),
        tokenizer_sha256: String::new(),
        corpus_sha256: String::new(),
        context_len: CONTEXT,
        packing: Packing::Packed,
        rows_per_shard: default_rows_per_shard(D, dtype, CONTEXT),
        settings: serde_json::Value::Null,
    }
}

/// This process's CPU time in seconds (Linux), which other load on a shared machine
/// disturbs less than wall time.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Wall and CPU seconds since `start`.
struct Clock(Instant, f64);

impl Clock {
    fn start() -> Clock {
        Clock(Instant::now(), cpu_secs())
    }

    fn secs(&self) -> (f64, f64) {
        (self.0.elapsed().as_secs_f64(), cpu_secs() - self.1)
    }
}

fn report(what: &str, rows: u64, d: usize, bytes_per: usize, (wall, cpu): (f64, f64)) {
    let mb = rows as f64 * (d * bytes_per) as f64 / 1e6;
    println!(
        "{what:<48} {:>8.0} rows/s wall {:>8.0} rows/CPU-s {:>7.1} MB/CPU-s ({rows} rows, {wall:.2} s wall, {cpu:.2} s CPU)",
        rows as f64 / wall,
        rows as f64 / cpu,
        mb / cpu
    );
}

fn write(out: &Path, hooks: &[&str], dtype: Dtype, windows: u64) -> (f64, f64) {
    let specs = hooks.iter().map(|h| spec(h, dtype)).collect();
    let mut w = StoreWriter::open(out, specs).expect("open");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut xs = vec![0f32; CONTEXT * D];
    let mut gen_cpu = 0.0;
    let t = Clock::start();
    for seq in w.next_seq()..windows {
        let g = cpu_secs();
        // Cheap pseudo-random values, so compression sees realistic (incompressible) floats.
        for x in &mut xs {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *x = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        }
        let rows: Vec<RowMeta> = (0..CONTEXT as u32)
            .map(|pos| RowMeta {
                doc: seq,
                pos,
                seq,
                token: pos,
                byte_start: pos,
                byte_end: pos + 1,
            })
            .collect();
        gen_cpu += cpu_secs() - g;
        let acts: Vec<&[f32]> = hooks.iter().map(|_| xs.as_slice()).collect();
        w.push_window(&rows, &acts).expect("push");
    }
    w.finish().expect("finish");
    let (wall, cpu) = t.secs();
    (wall, cpu - gen_cpu)
}

fn read_all(batches: impl Iterator<Item = concord_store::Result<usize>>) -> (u64, (f64, f64)) {
    let t = Clock::start();
    let mut rows = 0u64;
    for b in batches {
        rows += b.expect("read") as u64;
    }
    (rows, t.secs())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let root: PathBuf = args
        .next()
        .expect("usage: store_speed DIR [WINDOWS]")
        .into();
    let windows: u64 = args
        .next()
        .map_or(200, |s| s.parse().expect("a number of windows"));
    let rows = windows * CONTEXT as u64;
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let out = root.join(dtype.name());
        let _ = std::fs::remove_dir_all(&out);
        let secs = write(&out, &["blocks.0.hook_mlp_out"], dtype, windows);
        report(
            &format!("write {}, 1 hook", dtype.name()),
            rows,
            D,
            dtype.size_bytes(),
            secs,
        );
        let dir = out.join("blocks.0.hook_mlp_out");
        let t = Instant::now();
        let ds = Dataset::open(&dir).expect("open");
        println!(
            "open {} ({} shards, {} windows): {:.3} s",
            dtype.name(),
            ds.manifest().shards.len(),
            ds.windows(),
            t.elapsed().as_secs_f64()
        );
        let orders = [
            ("sequential", Order::Sequential),
            ("shuffled windows (study)", Order::Windows),
            (
                "shuffled rows, buffer 65536",
                Order::Rows {
                    buffer_rows: 65_536,
                },
            ),
        ];
        for (name, order) in orders {
            let cfg = ReadConfig {
                batch_rows: 2048,
                order,
                seed: 0,
                epochs: 1,
                start_batch: 0,
                drop_last: false,
            };
            let (n, secs) = read_all(
                ds.batches(&cfg)
                    .expect("batches")
                    .map(|b| b.map(|b| b.len())),
            );
            report(
                &format!("read {}, {name}", dtype.name()),
                n,
                D,
                dtype.size_bytes(),
                secs,
            );
            if order == Order::Windows {
                // The same with every footer parsed again for each window read (the worst
                // case of a bounded footer cache on a large store).
                let opts = OpenOptions {
                    footers: FooterCache::Shards(1),
                    ..OpenOptions::default()
                };
                let small = Dataset::open_with(&dir, &opts).expect("open");
                let (n, secs) = read_all(
                    small
                        .batches(&cfg)
                        .expect("batches")
                        .map(|b| b.map(|b| b.len())),
                );
                report(
                    &format!("read {}, {name}, footer cache 1 shard", dtype.name()),
                    n,
                    D,
                    dtype.size_bytes(),
                    secs,
                );
            }
        }
        let t = Clock::start();
        let (mut start, mut n) = (0, 0);
        while start + 2048 <= rows {
            ds.read_rows(start..start + 2048).expect("range");
            start += 2048 * 7;
            n += 2048;
        }
        report(
            &format!("read {}, read_rows of 2048 rows", dtype.name()),
            n,
            D,
            dtype.size_bytes(),
            t.secs(),
        );
    }
    footer_memory(&root.join("footers"));
    let hooks = [
        "blocks.0.hook_mlp_out",
        "blocks.1.hook_mlp_out",
        "blocks.2.hook_mlp_out",
    ];
    let out = root.join("lockstep");
    let _ = std::fs::remove_dir_all(&out);
    let secs = write(&out, &hooks, Dtype::Bf16, windows);
    report("write bf16, 3 hooks (rows x hooks)", rows * 3, D, 2, secs);
    let dirs: Vec<PathBuf> = hooks.iter().map(|h| out.join(h)).collect();
    let lock = Lockstep::open(&dirs).expect("lockstep");
    let (n, secs) = read_all(
        lock.batches(&ReadConfig::study(0))
            .expect("batches")
            .map(|b| b.map(|b| b.rows.len())),
    );
    report(
        "read bf16, 3 hooks lockstep, shuffled windows",
        n * 3,
        D,
        2,
        secs,
    );
}

/// Resident memory of this process in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// The memory an opened dataset holds per window (its parsed shard footers and offsets):
/// 20,000 tiny windows, so the footers dominate.
fn footer_memory(out: &Path) {
    let _ = std::fs::remove_dir_all(out);
    let mut s = spec("blocks.0.hook_mlp_out", Dtype::F32);
    (s.d, s.context_len, s.rows_per_shard) = (4, 16, 16 * 2000);
    let dir = out.join("blocks.0.hook_mlp_out");
    let mut w = concord_store::HookWriter::open(&dir, &s).expect("open");
    let xs = vec![0.5f32; 16 * 4];
    let windows = 20_000u64;
    for seq in 0..windows {
        let rows: Vec<RowMeta> = (0..16)
            .map(|pos| RowMeta {
                doc: seq,
                pos,
                seq,
                ..RowMeta::default()
            })
            .collect();
        w.push_window(&rows, &xs).expect("push");
    }
    w.finish().expect("finish");
    let before = rss();
    let t = Instant::now();
    let ds = Dataset::open(&dir).expect("open");
    let secs = t.elapsed().as_secs_f64();
    let held = rss().saturating_sub(before);
    let disk: u64 = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum();
    println!(
        "open {windows} windows in {} shards: {secs:.2} s, {:.0} bytes of memory per window held, {:.0} bytes of file per window of 16 x 4 f32",
        ds.manifest().shards.len(),
        held as f64 / windows as f64,
        disk as f64 / windows as f64
    );
}
