#!/usr/bin/env python3
"""Reads every activation shard in a directory with safetensors.numpy and checks
it against the synthetic formula of tests/support/mod.rs (kept in step by hand).

usage: check_shards.py DIR [SPLIT=ROWS ...]   prints OK and exits 0, or says what is wrong and exits 1
"""
import json
import pathlib
import struct
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def salt(split):
    return sum(split.encode()) % 97


def expected_layer(split, row_start, rows, width, layer):
    row = np.arange(row_start, row_start + rows, dtype=np.int64)[:, None]
    unit = np.arange(width, dtype=np.int64)[None, :]
    k = (row * 131 + unit * 7 + layer * 1009 + salt(split) * 17) % 4099
    return k.astype(np.float32) * np.float32(0.25) - np.float32(500.0)


def check_alignment(path):
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    data_start = 8 + header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] in ("F32", "U32") and (data_start + info["data_offsets"][0]) % 4:
            raise AssertionError(f"{path.name}: tensor {name} is not 4-byte aligned")


def check(directory, expected_rows):
    shards = sorted(pathlib.Path(directory).glob("*.safetensors"))
    if not shards:
        raise AssertionError(f"no shards in {directory}")
    covered = {}
    for path in shards:
        check_alignment(path)
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        split = meta["split"]
        start, end = int(meta["row_start"]), int(meta["row_end"])
        rows = end - start
        layers = meta["layers"].split(",")
        if set(tensors) != set(layers) | {"labels", "index"}:
            raise AssertionError(f"{path.name}: tensors {sorted(tensors)} do not match layers {layers}")
        for layer_id, name in enumerate(layers):
            x = tensors[name]
            if x.dtype != np.float32 or x.ndim != 2 or x.shape[0] != rows:
                raise AssertionError(f"{path.name}: {name} has dtype {x.dtype} shape {x.shape}")
            if not np.array_equal(x, expected_layer(split, start, rows, x.shape[1], layer_id)):
                raise AssertionError(f"{path.name}: values of {name} differ from the formula")
        row = np.arange(start, end, dtype=np.int64)
        labels, index = tensors["labels"], tensors["index"]
        if labels.dtype != np.uint8 or not np.array_equal(labels, (row * 7 + 3) % 10):
            raise AssertionError(f"{path.name}: labels differ ({labels.dtype})")
        if index.dtype != np.uint32 or not np.array_equal(index, row * 3 + 1):
            raise AssertionError(f"{path.name}: index differs ({index.dtype})")
        covered.setdefault(split, []).append((start, end))
    for split, ranges in covered.items():
        ranges.sort()
        position = 0
        for start, end in ranges:
            if start != position:
                raise AssertionError(f"split {split}: rows jump from {position} to {start}")
            position = end
        if split in expected_rows and expected_rows[split] != position:
            raise AssertionError(f"split {split}: {position} rows, expected {expected_rows[split]}")
    missing = set(expected_rows) - set(covered)
    if missing:
        raise AssertionError(f"splits {sorted(missing)} have no shards")
    summary = ", ".join(f"{s}={r[-1][1]}" for s, r in sorted(covered.items()))
    print(f"OK {len(shards)} shards ({summary})")


if __name__ == "__main__":
    expected = dict((k, int(v)) for k, v in (arg.split("=") for arg in sys.argv[2:]))
    try:
        check(sys.argv[1], expected)
    except AssertionError as problem:
        print(f"FAIL {problem}")
        sys.exit(1)
