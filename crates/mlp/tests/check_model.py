"""Loads model.safetensors as the notebook's PyTorch MLP would (same names and
shapes as its state_dict) and recomputes the logits Rust wrote, with numpy."""
import sys

import numpy as np
from safetensors.numpy import load_file

model = load_file(sys.argv[1])
probe = load_file(sys.argv[2])
expected = {
    "fc1.weight": (128, 784), "fc1.bias": (128,),
    "fc2.weight": (128, 128), "fc2.bias": (128,),
    "fc3.weight": (10, 128), "fc3.bias": (10,),
}
shapes = {name: tuple(t.shape) for name, t in model.items()}
if shapes != expected:
    sys.exit(f"state_dict mismatch: {shapes}")
x = probe["x"].astype(np.float64)
h = np.maximum(x @ model["fc1.weight"].T + model["fc1.bias"], 0)
h = np.maximum(h @ model["fc2.weight"].T + model["fc2.bias"], 0)
logits = h @ model["fc3.weight"].T + model["fc3.bias"]
err = np.abs(logits - probe["logits"]).max()
if err > 1e-4:
    sys.exit(f"logits differ by {err}")
print(f"OK {x.shape[0]} rows, max error {err:.2e}")
