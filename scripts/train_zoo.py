"""Train the model zoo on real data shipped by installed packages, export it to ONNX.

    pip install -e '.[torch,zoo]'
    python scripts/train_zoo.py [--only NAME]      # each model < 10 min on 2 cores

Every model is trained on the CPU with fixed seeds, exported with ``torch.onnx.export``
and written to memotvm/models/ with its splits (none of them seen in training):

    NAME.onnx                 the network
    NAME_calib_inputs.npz     calibration split (threshold search)
    NAME_calib_labels.npz
    NAME_inputs.npz           held-out test split (validation, demo, results)
    NAME_labels.npz

and its entry in memotvm/models/zoo.json (task, metric, output, sizes, and the metric
onnxruntime gets on the test split).

The models:

* ``digits_bigru``: sequence classifier.  scikit-learn's handwritten digits (8x8
  images), read row by row: 8 steps of 8 pixels; a 2-layer bidirectional GRU (H=128),
  its last layer's final states into a linear layer.  Metric: accuracy.
* ``pydoc_charlstm``: character language model.  The text of Python's own reference
  documentation as shipped with CPython (``pydoc_data.topics``, ~460 kB of English
  prose and code); an embedding, one LSTM layer (H=256), a linear layer over 97
  symbols.  Metric: bits per character.
* ``co2_lstm``: forecaster.  statsmodels' Mauna Loa weekly CO2 series (1958-2001);
  from 104 weeks of standardised readings (relative to the last one) an LSTM (H=64)
  predicts the change over the next 4 weeks.  Metric: mean squared error (standardised
  units).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "memotvm", "models")
MANIFEST = os.path.join(OUT, "zoo.json")


def fit(net, x, y, loss_fn, epochs, batch, lr=3e-3):
    """Adam over shuffled minibatches of the batch axis (x: [steps, n, features])."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(x_t.shape[1], generator=gen).split(batch):
            opt.zero_grad()
            loss_fn(net(x_t[:, idx]), y_t[idx]).backward()
            opt.step()
    return net


# --- digits: sequence classifier ------------------------------------------------------


class DigitsGRU(nn.Module):
    def __init__(self, hidden=128):
        super().__init__()
        self.gru = nn.GRU(8, hidden, num_layers=2, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 10)

    def forward(self, x):  # x: [8 rows, batch, 8 pixels]
        _, h = self.gru(x)  # h: [layers * 2, batch, hidden]
        return self.head(torch.cat([h[-2], h[-1]], dim=-1))


def digits_data():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # [n, 8, 8] in [0, 1]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    x = images.transpose(1, 0, 2)  # [rows = steps, n, 8]
    n = len(labels)
    cut1, cut2 = int(n * 0.6), int(n * 0.8)
    return ((x[:, :cut1], labels[:cut1]), (x[:, cut1:cut2], labels[cut1:cut2]),
            (x[:, cut2:], labels[cut2:]))


def train_digits():
    (xtr, ytr), calib, test = digits_data()
    net = fit(DigitsGRU(), xtr, ytr, nn.functional.cross_entropy, epochs=60, batch=64)
    sample = torch.from_numpy(test[0][:, :4])
    return net, sample, {"x": {1: "batch"}, "logits": {0: "batch"}}, ["x"], ["logits"], \
        {"x": calib[0]}, calib[1], {"x": test[0]}, test[1], {
            "task": "handwritten digit classification (scikit-learn digits, rows as steps)",
            "metric": "accuracy", "output": "logits"}


# --- pydoc: character language model ---------------------------------------------------

SYMBOLS = "\n" + "".join(chr(c) for c in range(32, 127))  # 96 symbols; index 96 = other
VOCAB = len(SYMBOLS) + 1


class CharLSTM(nn.Module):
    def __init__(self, hidden=256, embed=32):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, embed)
        self.lstm = nn.LSTM(embed, hidden)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, tokens):  # tokens: [seq, batch]
        y, _ = self.lstm(self.embed(tokens))
        return self.head(y)


def pydoc_data(seq=150, batch=16):
    import pydoc_data.topics as topics

    text = "".join(topics.topics[k] for k in sorted(topics.topics))
    index = {c: i for i, c in enumerate(SYMBOLS)}
    ids = np.array([index.get(c, len(SYMBOLS)) for c in text], np.int64)
    n = len(ids)
    train, calib, test = ids[: int(n * 0.9)], ids[int(n * 0.9): int(n * 0.95)], ids[int(n * 0.95):]

    def windows(part):  # batch contiguous windows of seq + 1 characters, evenly spaced
        starts = np.linspace(0, len(part) - seq - 2, batch).astype(int)
        block = np.stack([part[s: s + seq + 1] for s in starts], axis=1)  # [seq + 1, batch]
        return block[:-1], block[1:]

    return train, windows(calib), windows(test)


def train_pydoc(iterations=2500, seq=100, batch=32):
    train, calib, test = pydoc_data()
    net = CharLSTM()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for it in range(iterations):
        starts = rng.integers(0, len(train) - seq - 1, batch)
        block = torch.from_numpy(np.stack([train[s: s + seq + 1] for s in starts], axis=1))
        opt.zero_grad()
        logits = net(block[:-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), block[1:].reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if it == iterations * 3 // 4:
            for group in opt.param_groups:
                group["lr"] = 1e-3
    sample = torch.from_numpy(test[0][:20, :2])
    axes = {"tokens": {0: "seq", 1: "batch"}, "logits": {0: "seq", 1: "batch"}}
    return net, sample, axes, ["tokens"], ["logits"], {"tokens": calib[0]}, calib[1], \
        {"tokens": test[0]}, test[1], {
            "task": "character language model (Python reference documentation text)",
            "metric": "bpc", "output": "logits"}


# --- co2: forecaster ---------------------------------------------------------------------

WINDOW, HORIZON = 104, 4


class Co2LSTM(nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden)
        self.head = nn.Linear(hidden, HORIZON)

    def forward(self, x):  # x: [104 weeks, batch, 1]
        _, (h, _) = self.lstm(x)
        return self.head(h[-1])


def co2_data():
    import statsmodels.api as sm

    series = sm.datasets.co2.load_pandas().data["co2"].interpolate().bfill().to_numpy()
    n_train_points = int(len(series) * 0.7)
    mean, std = series[:n_train_points].mean(), series[:n_train_points].std()
    z = ((series - mean) / std).astype(np.float32)
    starts = np.arange(len(z) - WINDOW - HORIZON + 1)
    # Each window relative to its last reading: the series keeps rising, and the test
    # years lie above every training value; changes are what the network can learn.
    last = np.array([z[s + WINDOW - 1] for s in starts], np.float32)
    x = (np.stack([z[s: s + WINDOW] for s in starts], axis=1) - last)[..., None]  # [104, n, 1]
    y = np.stack([z[s + WINDOW: s + WINDOW + HORIZON] for s in starts]) - last[:, None]  # [n, 4]
    # Splits in time, with a gap of one window so no test target is seen in training.
    n = len(starts)
    cut1, cut2 = int(n * 0.7), int(n * 0.85)
    tr = slice(0, cut1 - WINDOW - HORIZON)
    return (x[:, tr], y[tr]), (x[:, cut1:cut2], y[cut1:cut2]), (x[:, cut2:], y[cut2:])


def train_co2(epochs=40):
    (xtr, ytr), calib, test = co2_data()
    net = fit(Co2LSTM(), xtr, ytr, nn.functional.mse_loss, epochs=epochs, batch=32)
    sample = torch.from_numpy(test[0][:, :4])
    return net, sample, {"x": {1: "batch"}, "forecast": {0: "batch"}}, ["x"], ["forecast"], \
        {"x": calib[0]}, calib[1], {"x": test[0]}, test[1], {
            "task": "4-week CO2 forecast (statsmodels Mauna Loa weekly series)",
            "metric": "mse", "output": "forecast"}


MODELS = {"digits_bigru": train_digits, "pydoc_charlstm": train_pydoc, "co2_lstm": train_co2}


def onnxruntime_metric(path, feeds, labels, metric):
    import onnxruntime as ort

    from memotvm import metrics

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return metrics.score(metric, session.run(None, feeds)[0], labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    manifest = json.load(open(MANIFEST)) if os.path.exists(MANIFEST) else {}
    for name, train in MODELS.items():
        if args.only and name != args.only:
            continue
        torch.manual_seed(0)
        t0 = time.perf_counter()
        net, sample, axes, in_names, out_names, cal_in, cal_y, test_in, test_y, info = train()
        net.eval()
        seconds = time.perf_counter() - t0
        path = os.path.join(OUT, name + ".onnx")
        torch.onnx.export(net, (sample,), path, dynamo=False, opset_version=17,
                          input_names=in_names, output_names=out_names, dynamic_axes=axes)
        np.savez(os.path.join(OUT, name + "_calib_inputs.npz"), **cal_in)
        np.savez(os.path.join(OUT, name + "_calib_labels.npz"), labels=cal_y)
        np.savez(os.path.join(OUT, name + "_inputs.npz"), **test_in)
        np.savez(os.path.join(OUT, name + "_labels.npz"), labels=test_y)
        score = onnxruntime_metric(path, test_in, test_y, info["metric"])
        manifest[name] = {**info, "onnxruntime_test_metric": round(score, 5),
                          "parameters": sum(p.numel() for p in net.parameters()),
                          "train_seconds_2_cores": round(seconds, 1)}
        print(f"{name}: {info['metric']} {score:.4f} on the test split (onnxruntime), "
              f"trained in {seconds:.0f} s, {os.path.getsize(path) / 1e6:.2f} MB")
        with open(MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
