"""Tutorial: your own PyTorch RNN, from training to a calibrated, memoized model.

    pip install -e '.[bench]' torch==2.13.0
    python examples/pytorch_tutorial.py [WORKDIR]

The steps (docs/tutorial.md explains each):

1. train a small GRU classifier in PyTorch (noisy sine waves: which of 4 frequencies?);
2. export it with ``torch.onnx.export``, the batch and time axes dynamic;
3. save a calibration split and a held-out split as .npz files;
4. ``memotvm calibrate``: per-layer, per-direction thresholds (BNN predictor and delta
   execution) for the most computation avoided within 1 % accuracy loss;
5. ``memotvm validate``: the memoized model against the unmodified one on the held-out
   split (accuracy loss, reuse, output errors);
6. ``memotvm sweep``: the trade-off curve, with the calibrated configuration marked;
7. ``memotvm bench``: onnxruntime, memotvm and memotvm memoized, timed on this CPU.

Every memotvm step is the command line a user would type (printed before it runs).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import numpy as np
import torch
from torch import nn

STEPS, FEATURES, CLASSES, HIDDEN = 40, 3, 4, 64


class SineClassifier(nn.Module):
    """A bidirectional GRU over the sequence, a linear head on its last output."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(FEATURES, HIDDEN, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * HIDDEN, CLASSES)

    def forward(self, x):  # x: [batch, time, features]
        y, _ = self.gru(x)
        return self.head(y[:, -1])


def make_data(n, seed):
    """Noisy sine waves; the label is which of 4 frequencies, with random phase and
    amplitude, the 3 features being the wave, its square and a noise channel."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    t = np.arange(STEPS)[None, :]
    freq = (0.05 + 0.04 * labels)[:, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    wave = rng.uniform(0.5, 1.5, (n, 1)) * np.sin(2 * np.pi * freq * t + phase)
    x = np.stack([wave, wave ** 2, 0.3 * rng.standard_normal((n, STEPS))], axis=-1)
    return (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32), labels.astype(np.int64)


def train(model, x, y, epochs=30):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for i in range(0, len(xs), 64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xs[i:i + 64]), ys[i:i + 64])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        return float((model(xs).argmax(-1) == ys).float().mean())


def memotvm(*args):
    """Run a memotvm command as a user would, printing it first."""
    cmd = ["memotvm", *map(str, args)]
    print("\n$ " + shlex.join(cmd), flush=True)
    subprocess.run([sys.executable, "-m", "memotvm", *map(str, args)], check=True)


def main(workdir):
    os.makedirs(workdir, exist_ok=True)
    path = lambda name: os.path.join(workdir, name)

    # 1. Train.
    torch.manual_seed(0)
    model = SineClassifier()
    x_train, y_train = make_data(2048, seed=1)
    print(f"trained: accuracy {train(model, x_train, y_train):.3f} on the training set")

    # 2. Export to ONNX: nn.GRU becomes one ONNX GRU node (plus Transpose, Gather, Gemm
    # around it), which memotvm compiles into one recurrent-loop kernel.
    torch.onnx.export(model, (torch.from_numpy(x_train[:2]),), path("sine_gru.onnx"),
                      input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch", 1: "time"}, "logits": {0: "batch"}},
                      dynamo=False)

    # 3. Data for memotvm: inputs as .npz of named arrays, labels as one array.
    for split, seed in (("calib", 2), ("holdout", 3)):
        x, y = make_data(256, seed)
        np.savez(path(f"{split}_inputs.npz"), x=x)
        np.savez(path(f"{split}_labels.npz"), labels=y)

    onnx_file = path("sine_gru.onnx")
    data = lambda split: ["--inputs", path(f"{split}_inputs.npz"), "--labels", path(f"{split}_labels.npz")]
    # 4. Calibrate: the most computation avoided within 1 % accuracy loss, searched on the
    # calibration split and confirmed on the held-out one.
    memotvm("calibrate", onnx_file, *data("calib"), "--metric", "accuracy", "--max-loss", "1%",
            "--predictors", "bnn,delta", "--holdout-inputs", path("holdout_inputs.npz"),
            "--holdout-labels", path("holdout_labels.npz"), "--out", path("memo.json"), "--quiet")
    # 5. Validate the calibrated configuration on the held-out split.
    memotvm("validate", onnx_file, *data("holdout"), "--metric", "accuracy",
            "--config", path("memo.json"))
    # 6. The trade-off curve, with the calibrated configuration marked.
    memotvm("sweep", onnx_file, *data("holdout"), "--metric", "accuracy", "--quiet",
            "--thresholds", "0,0.02,0.05,0.1,0.2,0.3", "--predictors", "bnn,delta,oracle",
            "--calibrated", path("memo.json"), "--plot", path("sweep.png"))
    # 7. Time it on this CPU against onnxruntime (each in its own process, taking turns).
    memotvm("bench", onnx_file, "--inputs", path("holdout_inputs.npz"), "--config",
            path("memo.json"), "--thresholds", "", "--rounds", "10")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tutorial_out")
