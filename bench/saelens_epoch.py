"""Times one training epoch of each SAE architecture in SAELens (PyTorch, CPU),
on the same cached fc2.pre rows and settings as `cargo xtask bench sae`
(d_sae 1024, batch 64, Adam lr 1e-3, rows in dataset order), for the ratio.
SAELens 6 has no transcoder trainer, so the transcoders (fc1.post -> fc2.post)
train SAELens' `Transcoder`/`SkipTranscoder` modules with the L1 loss written
here: sum of squared errors per row, mean over rows, plus 3e-3 x sum of
activations.

Usage: python3 bench/saelens_epoch.py STORE [EPOCHS] [--threads N] [--json].
STORE is a saelab store holding one activation cache (`cargo xtask all` makes
one), or an activation cache folder itself (what `cargo xtask bench sae` passes
when it runs this script for its ratio column). Prints seconds per epoch (the
last of EPOCHS, default 2, so the first pays for warm-up) on N threads (default
2); `--json` ends with one line `{"architecture": seconds, ...}` for a program.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file
from sae_lens.saes import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedTrainingSAE,
    GatedTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.saes import SkipTranscoder, SkipTranscoderConfig, Transcoder, TranscoderConfig
from sae_lens.saes.sae import TrainStepInput

D_IN, D_SAE, BATCH = 128, 1024, 64


def train_rows(store: Path, layer: str = "fc2.pre") -> torch.Tensor:
    if (store / "shards.json").exists():
        cache = store
    else:
        (cache,) = [p for p in (store / "activations").iterdir() if (p / "shards.json").exists()]
    shards = sorted(
        (s for s in json.loads((cache / "shards.json").read_text()) if s["split"] == "train"),
        key=lambda s: s["row_start"],
    )
    return torch.from_numpy(np.concatenate([load_file(str(cache / s["file"]))[layer] for s in shards]))


def transcoder_epoch_seconds(cls, cfg, x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    torch.manual_seed(0)
    tc = cls(cfg)
    optimizer = torch.optim.Adam(tc.parameters(), lr=1e-3)
    seconds = 0.0
    for _ in range(epochs):
        started = time.perf_counter()
        for start in range(0, x.shape[0], BATCH):
            xb, yb = x[start : start + BATCH], y[start : start + BATCH]
            acts = tc.encode(xb)
            y_hat = tc.decode(acts)
            if isinstance(tc, SkipTranscoder):
                y_hat = y_hat + xb @ tc.W_skip.T
            loss = ((y_hat - yb) ** 2).sum(-1).mean() + 3e-3 * acts.sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        seconds = time.perf_counter() - started
    return seconds


ARCHITECTURES = {
    "L1 (standard) 3e-3": (StandardTrainingSAE, StandardTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, l1_coefficient=3e-3)),
    "TopK k=32": (TopKTrainingSAE, TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=32)),
    "BatchTopK k=32": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=32)),
    "Matryoshka BatchTopK k=32": (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=32, matryoshka_widths=[64, 128, 256, 512, 1024]),
    ),
    "JumpReLU l0 0.1": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, l0_coefficient=0.1)),
    "Gated l1 3e-3": (GatedTrainingSAE, GatedTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, l1_coefficient=3e-3)),
}


def epoch_seconds(cls, cfg, x: torch.Tensor, epochs: int) -> float:
    torch.manual_seed(0)
    sae = cls(cfg)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    coefficients = sae.get_coefficients()
    coefficients = {k: (v if isinstance(v, float) else v.value) for k, v in coefficients.items()}
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    seconds = 0.0
    step = 0
    for _ in range(epochs):
        started = time.perf_counter()
        for start in range(0, x.shape[0], BATCH):
            out = sae.training_forward_pass(
                TrainStepInput(
                    sae_in=x[start : start + BATCH],
                    coefficients=coefficients,
                    dead_neuron_mask=dead,
                    n_training_steps=step,
                    is_logging_step=False,
                )
            )
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
        seconds = time.perf_counter() - started
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("epochs", type=int, nargs="?", default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = train_rows(args.store)
    print(f"SAELens training epochs on {x.shape[0]} fc2.pre rows, d_sae {D_SAE}, batch {BATCH}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    seconds = {}
    for name, (cls, cfg) in ARCHITECTURES.items():
        seconds[name] = epoch_seconds(cls, cfg, x, args.epochs)
        print(f"  {name}: {seconds[name]:.3f} s per epoch", flush=True)
    x, y = train_rows(args.store, "fc1.post"), train_rows(args.store, "fc2.post")
    for name, cls, cfg in [
        ("transcoder L1 3e-3", Transcoder, TranscoderConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_IN, apply_b_dec_to_input=False)),
        ("skip transcoder L1 3e-3", SkipTranscoder, SkipTranscoderConfig(d_in=D_IN, d_sae=D_SAE, d_out=D_IN, apply_b_dec_to_input=False)),
    ]:
        seconds[name] = transcoder_epoch_seconds(cls, cfg, x, y, args.epochs)
        print(f"  {name} (fc1.post -> fc2.post): {seconds[name]:.3f} s per epoch", flush=True)
    if args.json:
        print(json.dumps(seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
