"""Loads every SAE folder of a saelab store with SAELens and checks that
SAELens' own encode/decode reproduce the train-split explained variance and
L0 that saelab wrote in the folder's metrics.json. A transcoder
(`metadata.hook_name_out`) is measured by its forward pass, skip included,
against its output layer.

Usage: check_saelens_store.py STORE. Exit 0: every SAE agrees within 1e-4;
1: one does not (or there are none); 3: sae_lens is missing.
"""
import json
import sys
from pathlib import Path

try:
    import numpy as np
    import torch
    from safetensors.numpy import load_file
    from sae_lens import SAE
except ImportError as e:
    print(f"missing python package ({e}); pip install sae-lens")
    sys.exit(3)


def train_rows(store: Path, layer: str) -> np.ndarray:
    """The layer's train split, from the one activation cache in the store."""
    (cache,) = [p for p in (store / "activations").iterdir() if (p / "shards.json").exists()]
    shards = [s for s in json.loads((cache / "shards.json").read_text()) if s["split"] == "train"]
    shards.sort(key=lambda s: s["row_start"])
    return np.concatenate([load_file(str(cache / s["file"]))[layer] for s in shards])


def main() -> int:
    store = Path(sys.argv[1])
    folders = sorted(p for p in (store / "sae").iterdir() if (p / "sae_weights.safetensors").exists())
    ok = bool(folders)
    rows = {}
    for folder in folders:
        sae = SAE.load_from_disk(str(folder), device="cpu")
        layer = sae.cfg.metadata.hook_name
        if layer not in rows:
            rows[layer] = torch.from_numpy(train_rows(store, layer))
        x = rows[layer]
        out = getattr(sae.cfg.metadata, "hook_name_out", None)
        with torch.no_grad():
            f = sae.encode(x)
            x_hat = sae(x) if out else sae.decode(f)
        if out:
            if out not in rows:
                rows[out] = torch.from_numpy(train_rows(store, out))
            x = rows[out]
            layer = f"{layer} -> {out}"
        x64, x_hat64 = x.double(), x_hat.double()
        ev = float(1.0 - ((x64 - x_hat64) ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum())
        l0 = float((f > 0).double().sum(-1).mean())
        want = json.loads((folder / "metrics.json").read_text())["train"]
        agree = abs(ev - want["explained_variance"]) <= 1e-4 and abs(l0 - want["l0"]) <= 1e-4
        ok &= agree
        print(
            f"{folder.name} {type(sae).__name__} on {layer}: EV {ev:.6f} vs saelab "
            f"{want['explained_variance']:.6f}, L0 {l0:.4f} vs saelab {want['l0']:.4f}"
            + ("" if agree else "  <-- disagree")
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
