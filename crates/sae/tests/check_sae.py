"""Reconstructs inputs with an SAE checkpoint written by the `sae` crate, in numpy.

Usage: check_sae.py DIR. DIR holds sae_weights.safetensors and
saelab_config.json (the checkpoint), x.f32 (inputs, [rows, d_in]) and x_hat.f32
(Rust's output, [rows, d_out]; d_out = d_in for an SAE), both raw little-endian f32. Exit 0: the numpy reconstruction matches within
1e-5; 1: it does not; 3: numpy or safetensors is missing.
"""
import json
import sys
from pathlib import Path

try:
    import numpy as np
    from safetensors.numpy import load_file
except ImportError as e:
    print(f"missing python package ({e}); pip install safetensors numpy")
    sys.exit(3)


def main() -> int:
    root = Path(sys.argv[1])
    cfg = json.loads((root / "saelab_config.json").read_text())
    t = load_file(str(root / "sae_weights.safetensors"))
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    transcoder = cfg.get("transcoder")
    d_out = transcoder["d_out"] if transcoder else d_in
    assert t["W_enc"].shape == (d_in, d_sae), t["W_enc"].shape
    assert t["W_dec"].shape == (d_sae, d_out), t["W_dec"].shape
    assert t["b_gate" if cfg["architecture"]["kind"] == "Gated" else "b_enc"].shape == (d_sae,)
    assert t["b_dec"].shape == (d_out,)
    gated = cfg["architecture"]["kind"] == "Gated"
    bias = "b_gate" if gated else "b_enc"
    w_enc, w_dec, b_enc, b_dec = (t[k].astype(np.float64) for k in ("W_enc", "W_dec", bias, "b_dec"))
    x = np.fromfile(root / "x.f32", dtype="<f4").reshape(-1, d_in).astype(np.float64)
    rust = np.fromfile(root / "x_hat.f32", dtype="<f4").reshape(-1, d_out).astype(np.float64)

    # A transcoder's b_dec is in the output's space: not subtracted from x.
    pre = (x if transcoder else x - b_dec) @ w_enc + b_enc
    variant = cfg["architecture"]
    if variant["kind"] == "TopK":
        keep = np.argsort(-pre, axis=1, kind="stable")[:, : variant["k"]]
        mask = np.zeros_like(pre)
        np.put_along_axis(mask, keep, 1.0, axis=1)
        pre = pre * mask
    if "threshold" in t:
        pre = pre * (pre > t["threshold"].astype(np.float64))
    if gated:
        magnitude = np.exp(t["r_mag"].astype(np.float64)) * (pre - b_enc) + t["b_mag"].astype(np.float64)
        pre = np.where(pre > 0, magnitude, 0.0)
    acts = np.maximum(pre, 0.0)
    x_hat = acts @ w_dec + b_dec
    if transcoder and transcoder["skip"]:
        assert t["W_skip"].shape == (d_out, d_in), t["W_skip"].shape
        x_hat = x_hat + x @ t["W_skip"].astype(np.float64).T

    gap = float(np.abs(x_hat - rust).max())
    print(f"{x.shape[0]} rows, {variant['kind']}: max |numpy - rust| = {gap:.3e}")
    return 0 if gap <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
