"""Make the torch-exported fixtures.

    python scripts/make_torch_fixture.py   # needs the `torch` extra

Writes memotvm/models/torch_lstm_gru.onnx and torch_lstm_gru_inputs.npz (embedding,
2-layer bidirectional LSTM, GRU, linear head; a batch of token sequences), and
torch_packed_gru.onnx (a 2-layer bidirectional GRU over packed sequences of unsorted
lengths: pack_padded_sequence(enforce_sorted=False), whose export sorts the lengths with
a TopK of computed k and restores the order with ReduceProd of a Shape, Range and
ScatterElements).  Weights are random but fixed by the seed; the models are what
`torch.onnx.export` writes.
"""

import os

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "memotvm", "models")
VOCAB, EMBED, HIDDEN, CLASSES = 50, 16, 24, 5


class TaggerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.lstm = nn.LSTM(EMBED, HIDDEN, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(2 * HIDDEN, HIDDEN)
        self.head = nn.Linear(HIDDEN, CLASSES)

    def forward(self, tokens):  # tokens: [seq, batch] int64
        x = self.embed(tokens)
        x, _ = self.lstm(x)
        x, h = self.gru(x)
        return self.head(x), h


class PackedGRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(6, 10, num_layers=2, bidirectional=True)

    def forward(self, x, lengths):  # x: [seq, batch, 6], lengths: [batch] int64
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        y, h = self.gru(packed)
        y, _ = nn.utils.rnn.pad_packed_sequence(y, total_length=x.shape[0])
        return y, h


def export_packed_gru():
    torch.manual_seed(1)
    net = PackedGRU().eval()
    x, lengths = torch.randn(7, 3, 6), torch.tensor([7, 3, 5])
    path = os.path.join(OUT, "torch_packed_gru.onnx")
    torch.onnx.export(
        net, (x, lengths), path, dynamo=False, opset_version=17,
        input_names=["x", "lengths"], output_names=["y", "h_n"],
        dynamic_axes={"x": {0: "seq", 1: "batch"}, "lengths": {0: "batch"},
                      "y": {0: "seq", 1: "batch"}, "h_n": {1: "batch"}},
    )
    print("wrote", path)


def main():
    torch.manual_seed(0)
    net = TaggerNet().eval()
    rng = np.random.default_rng(0)
    # A random walk over token ids: neighbouring steps are similar, as in real text.
    steps = rng.integers(-2, 3, size=(20, 3))
    tokens = np.mod(np.cumsum(steps, axis=0) + 25, VOCAB).astype(np.int64)
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "torch_lstm_gru.onnx")
    torch.onnx.export(
        net, (torch.from_numpy(tokens),), path, dynamo=False, opset_version=17,
        input_names=["tokens"], output_names=["logits", "h_n"],
        dynamic_axes={"tokens": {0: "seq", 1: "batch"}, "logits": {0: "seq", 1: "batch"},
                      "h_n": {1: "batch"}},
    )
    np.savez(os.path.join(OUT, "torch_lstm_gru_inputs.npz"), tokens=tokens)
    print("wrote", path)
    export_packed_gru()


if __name__ == "__main__":
    main()
