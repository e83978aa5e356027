"""Checks that pyarrow (and polars, when installed) read a concord store as is.

Usage:
    cargo run -p concord-store --example sample_store -- /tmp/sample-store
    /work/main/.venv/bin/python crates/concord-store/scripts/check_pyarrow.py /tmp/sample-store

For every hook dataset: the manifest's shards exist with their sha256; the schema is exactly
doc u64, pos u32, seq u64, token u32, byte_start u32, byte_end u32, act fixed_size_list<d> of
float32 / float16 / uint16 with field metadata {"concord.dtype": ...}, all non-nullable; one
row group per window; seq contiguous; and the activations equal the formula the sample writer
used (bf16 decoded from its bit patterns).
"""

import glob
import hashlib
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

VALUE_TYPES = {"f32": pa.float32(), "f16": pa.float16(), "bf16": pa.uint16()}


def value(seq, pos, j, h):
    return ((seq * 31 + pos * 7 + j * 3 + h * 11) % 64) / 8.0 - 4.0


def decode(act, dtype, d):
    flat = act.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    if dtype == "bf16":
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    return flat.astype(np.float32).reshape(-1, d)


def check_hook(folder, h):
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    d, dtype, ctx = manifest["d"], manifest["dtype"], manifest["context_len"]
    assert manifest["complete"], folder
    files = [os.path.join(folder, s["file"]) for s in manifest["shards"]]
    assert sorted(glob.glob(os.path.join(folder, "part-*.parquet"))) == files, files
    for s, f in zip(manifest["shards"], files):
        assert hashlib.sha256(open(f, "rb").read()).hexdigest() == s["sha256"], f
        meta = pq.ParquetFile(f).metadata
        assert meta.num_rows == s["rows"] and meta.num_row_groups == s["windows"], f
        assert all(meta.row_group(g).num_rows == ctx for g in range(meta.num_row_groups))
    expected = pa.schema(
        [
            pa.field("doc", pa.uint64(), nullable=False),
            pa.field("pos", pa.uint32(), nullable=False),
            pa.field("seq", pa.uint64(), nullable=False),
            pa.field("token", pa.uint32(), nullable=False),
            pa.field("byte_start", pa.uint32(), nullable=False),
            pa.field("byte_end", pa.uint32(), nullable=False),
            pa.field(
                "act",
                pa.list_(pa.field("item", VALUE_TYPES[dtype], nullable=False), d),
                nullable=False,
                metadata={"concord.dtype": dtype},
            ),
        ]
    )
    table = pq.read_table(files)
    got = table.schema.remove_metadata()
    assert got.equals(expected, check_metadata=True), f"{folder}:\n{got}\n!=\n{expected}"
    # The dataset API over the shard files gives the same table.
    assert pads.dataset(files, format="parquet").to_table().equals(table)
    seq = table["seq"].to_numpy()
    pos = table["pos"].to_numpy()
    assert (seq == np.repeat(np.arange(len(seq) // ctx), ctx)).all()
    xs = decode(table["act"], dtype, d)
    want = np.array([[value(s, p, j, h) for j in range(d)] for s, p in zip(seq, pos)], np.float32)
    assert np.array_equal(xs, want), folder
    try:
        import polars as pl
    except ImportError:
        polars = "not installed"
    else:
        df = pl.read_parquet(files)
        assert df.columns == table.column_names
        assert str(df.schema["act"]).startswith("Array"), df.schema
        pxs = np.stack(df["act"].to_numpy())
        if dtype == "bf16":
            pxs = (pxs.astype(np.uint32) << 16).view(np.float32)
        assert np.array_equal(pxs.astype(np.float32), want), folder
        polars = f"polars {pl.__version__} ok ({df.schema['act']})"
    print(f"{os.path.basename(folder)}: {dtype} d={d} rows={table.num_rows} "
          f"shards={len(files)} pyarrow {pa.__version__} ok; {polars}")


def main():
    store = sys.argv[1]
    hooks = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(store, "*", "manifest.json")))
    assert hooks, f"no hook datasets under {store}"
    for h, folder in enumerate(hooks):
        check_hook(folder, h)


if __name__ == "__main__":
    main()
