"""Why TopK latents die: for each SAE folder given, on the train rows of its
layer, the per-row top-k cutoff (the k-th largest pre-activation), how far the
dead latents' best pre-activations fall below it, and the encoder column norms
of live and dead latents.

Usage: python3 studies/dead_latents.py STORE SAE_KEY... (keys of `sae` artifacts
in STORE, e.g. from `cargo xtask runs`). Needs numpy and safetensors.
"""
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def train_rows(store: Path, layer: str) -> np.ndarray:
    (cache,) = [p for p in (store / "activations").iterdir() if (p / "shards.json").exists()]
    shards = sorted(
        (s for s in json.loads((cache / "shards.json").read_text()) if s["split"] == "train"),
        key=lambda s: s["row_start"],
    )
    return np.concatenate([load_file(str(cache / s["file"]))[layer] for s in shards]).astype(np.float64)


def main() -> int:
    store = Path(sys.argv[1])
    for key in sys.argv[2:]:
        folder = store / "sae" / key
        cfg = json.loads((folder / "saelab_config.json").read_text())
        lens = json.loads((folder / "cfg.json").read_text())
        t = {k: v.astype(np.float64) for k, v in load_file(str(folder / "sae_weights.safetensors")).items()}
        x = train_rows(store, lens["metadata"]["hook_name"])
        k = cfg["variant"]["k"]
        pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
        cutoff = -np.partition(-pre, k - 1, axis=1)[:, k - 1]
        top = np.argpartition(-pre, k - 1, axis=1)[:, :k]
        fired = np.zeros(pre.shape[1], dtype=bool)
        fired[np.unique(top[np.take_along_axis(pre, top, 1) > 0])] = True
        dead = ~fired
        enc_norm = np.linalg.norm(t["W_enc"], axis=0)
        # How far below each row's cutoff a dead latent's pre-activation sits, at its best row.
        gap = (pre[:, dead] - cutoff[:, None]).max(axis=0) if dead.any() else np.array([0.0])
        curve = json.loads((folder / "curve.json").read_text())["curve"]
        print(
            f"{key} epochs {cfg['epochs']} k {k}: dead {dead.sum()}/{pre.shape[1]}; "
            f"row cutoff mean {cutoff.mean():.3f} (median {np.median(cutoff):.3f}); "
            f"dead latents' best (pre - cutoff): median {np.median(gap):.3f}, max {gap.max():.3f}; "
            f"dead latents positive on {100 * (pre[:, dead] > 0).mean():.1f}% of rows; "
            f"encoder column norm live {enc_norm[fired].mean():.3f} vs dead {enc_norm[dead].mean() if dead.any() else float('nan'):.3f}; "
            f"b_enc live {t['b_enc'][fired].mean():.3f} vs dead {t['b_enc'][dead].mean() if dead.any() else float('nan'):.3f}; "
            f"dead by epoch: {[p['dead'] for p in curve][::max(1, len(curve) // 10)]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
