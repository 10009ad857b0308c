"""Loads an SAE folder written by the `sae` crate with SAELens and compares
SAELens' own encode/decode with saelab's metrics.

Usage: check_saelens.py DIR... Each DIR is an SAE folder plus x.f32 (inputs, raw
little-endian f32 [rows, d_in]), for a transcoder y.f32 (its targets [rows,
d_out]), and expected.json (saelab's `explained_variance` and `l0` on them,
and the SAELens class name expected).
Exit 0: for every DIR, SAELens' `SAE.load_from_disk(DIR)` gives the expected
class and its explained variance and L0 match within 1e-4; 1: one does not;
3: sae_lens is missing. (One process for all folders: importing torch takes
seconds.)
"""
import json
import sys
from pathlib import Path

try:
    import numpy as np
    import torch
    from sae_lens import SAE
except ImportError as e:
    print(f"missing python package ({e}); pip install sae-lens")
    sys.exit(3)


def check(root: Path) -> bool:
    expected = json.loads((root / "expected.json").read_text())
    sae = SAE.load_from_disk(str(root), device="cpu")
    x = torch.from_numpy(np.fromfile(root / "x.f32", dtype="<f4").reshape(-1, sae.cfg.d_in).copy())
    transcoder = (root / "y.f32").exists()
    with torch.no_grad():
        f = sae.encode(x)
        # A transcoder's output (with a skip transcoder's W_skip @ x) is its forward.
        x_hat = sae(x) if transcoder else sae.decode(f)
    if transcoder:
        x = torch.from_numpy(np.fromfile(root / "y.f32", dtype="<f4").reshape(-1, sae.cfg.d_out).copy())
    x64, x_hat64 = x.double(), x_hat.double()
    residual = ((x64 - x_hat64) ** 2).sum()
    total = ((x64 - x64.mean(0)) ** 2).sum()
    ev = float(1.0 - residual / total)
    l0 = float((f > 0).double().sum(-1).mean())
    name = type(sae).__name__
    print(
        f"{name} (expected {expected['class']}): EV {ev:.6f} vs saelab {expected['explained_variance']:.6f}, "
        f"L0 {l0:.4f} vs saelab {expected['l0']:.4f}"
    )
    ok = (
        name == expected["class"]
        and abs(ev - expected["explained_variance"]) <= 1e-4
        and abs(l0 - expected["l0"]) <= 1e-4
    )
    return ok


def main() -> int:
    results = [check(Path(arg)) for arg in sys.argv[1:]]
    return 0 if results and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
