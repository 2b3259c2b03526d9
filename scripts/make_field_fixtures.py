"""Make the field fixtures: small ONNX files shaped like the recurrent models that
packages ship, as ``torch.onnx.export`` and onnxruntime's quantization tool write them.

    python scripts/make_field_fixtures.py   # needs the `torch` extra

Writes into tests/fixtures/field/ (weights random, fixed by the seeds):

* ``vad_stream.onnx``: a streaming voice activity detector.  Inputs ``input`` (one chunk
  of samples, [batch, 576]), ``state`` ([2, batch, 64]: h and c of the LSTM) and ``sr``
  (int64 scalar); outputs ``prob`` and ``stateN``.  A scripted ``if sr == 16000`` selects
  one of two branches (an ``If`` node with a recurrent node in each branch).  Each branch
  pads the chunk by reflection (torch's export computes the pads from constants:
  ConstantOfShape, Concat, Reshape, Slice, Transpose, Cast), takes an STFT as a Conv1d of
  fixed filters, its magnitude, three Conv1d + ReLU, an LSTM over the chunk's frames, a
  Conv1d head and a sigmoid.
* ``crnn_recognizer.onnx``: a text-line recognizer: Conv2d, BatchNorm, ReLU and max
  pooling down to one row, a bidirectional LSTM over the columns, a linear head and a
  log-softmax ([batch, 1, 32, width] -> [width / 4, batch, classes]).
* ``gru_denoiser.onnx``: a speech-enhancement network on spectral frames: padded Conv1d
  layers, a GRU with its state in and out, a linear layer and a sigmoid mask applied to
  the input.
* ``quantized_lstm.onnx``: a tagger (Conv1d, Linear, LSTM, Linear) after
  ``onnxruntime.quantization.quantize_dynamic``: the LSTM becomes
  ``com.microsoft.DynamicQuantizeLSTM``, the convolution ``ConvInteger`` and the matrix
  products ``MatMulInteger``, each with ``DynamicQuantizeLinear``.
* ``greedy_decoder.onnx``: a scripted greedy decoder (``torch.jit.script``): from a
  state (h, c) it embeds the last token, steps an LSTM one token, and feeds back the
  argmax of a linear head, ``steps`` times (a ``Loop`` whose body runs the LSTM node);
  it collects the logits and the LSTM's outputs in Python lists, which export as ONNX
  sequences, and returns them stacked and concatenated (``ConcatFromSequence``).
* ``seq2seq_attention.onnx``: a scripted translator: a bidirectional GRU encoder over
  the source tokens, then a GRU decoder stepped one token at a time with attention over
  the encoder's outputs, its argmax appended to a growing token tensor, stopping early
  when every sequence has produced the end token (a ``Loop`` with a condition).

and ``inputs.npz`` beside them: one sample input set per model (``<model>/<input>``).
"""

import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "field")
CHUNK, WINDOW, HOP, HIDDEN = 576, 256, 128, 64


class _VadBranch(nn.Module):
    def __init__(self, window):
        super().__init__()
        self.pad = window // 4
        self.stft = nn.Conv1d(1, window + 2, window, stride=window // 2, bias=False)
        self.encoder = nn.ModuleList([
            nn.Conv1d(window // 2 + 1, 32, 3, padding=1),
            nn.Conv1d(32, 32, 3, padding=1, stride=2),
            nn.Conv1d(32, 32, 3, padding=1),
        ])
        self.lstm = nn.LSTM(32, HIDDEN)
        self.head = nn.Conv1d(HIDDEN, 1, 1)

    def forward(self, x, h, c):
        x = F.pad(x.unsqueeze(1), [self.pad, self.pad], mode="reflect")
        spec = self.stft(x)
        half = spec.shape[1] // 2
        x = torch.sqrt(spec[:, :half] ** 2 + spec[:, half:] ** 2 + 1e-9)
        for conv in self.encoder:
            x = F.relu(conv(x))
        y, (h, c) = self.lstm(x.permute(2, 0, 1), (h, c))
        prob = torch.sigmoid(self.head(F.relu(y.permute(1, 2, 0)))).mean(dim=2)
        return prob, torch.stack([h[0], c[0]])


class StreamingVad(nn.Module):
    def __init__(self):
        super().__init__()
        self.wide = _VadBranch(WINDOW)
        self.narrow = _VadBranch(WINDOW // 2)

    def forward(self, x, state, sr: int):
        h, c = state[0:1], state[1:2]
        if sr == 16000:
            return self.wide(x, h, c)
        return self.narrow(x[:, ::2], h, c)


class Crnn(nn.Module):
    def __init__(self, classes=12):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, (8, 1)), nn.ReLU(),
        )
        self.rnn = nn.LSTM(32, 48, bidirectional=True)
        self.head = nn.Linear(96, classes)

    def forward(self, image):
        x = self.features(image).squeeze(2).permute(2, 0, 1)  # [width/4, batch, 32]
        y, _ = self.rnn(x)
        return F.log_softmax(self.head(y), dim=2)


class GruDenoiser(nn.Module):
    def __init__(self, bins=65):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(bins, 48, 5, padding=2), nn.ReLU(),
                                  nn.Conv1d(48, 48, 3, padding=1), nn.ReLU())
        self.gru = nn.GRU(48, 48)
        self.mask = nn.Linear(48, bins)

    def forward(self, spec, h):  # spec: [batch, bins, frames]
        x = self.conv(spec).permute(2, 0, 1)
        y, h = self.gru(x, h)
        mask = torch.sigmoid(self.mask(y)).permute(1, 2, 0)
        return spec * mask, h


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(20, 24, 3, padding=1)
        self.embed = nn.Linear(24, 32)
        self.lstm = nn.LSTM(32, 40)
        self.head = nn.Linear(40, 6)

    def forward(self, x):  # x: [seq, batch, 20]
        x = F.relu(self.conv(x.permute(1, 2, 0))).permute(2, 0, 1)
        y, _ = self.lstm(torch.tanh(self.embed(x)))
        return self.head(y)


class GreedyDecoder(nn.Module):
    def __init__(self, vocab=20, embedding=16, hidden=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        self.lstm = nn.LSTM(embedding, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, h, c, steps: int):
        token = torch.zeros(h.shape[1], 1, dtype=torch.long)
        logits, outputs = [], []
        for _ in range(steps):
            y, (h, c) = self.lstm(self.embed(token), (h, c))
            step_logits = self.head(y[:, -1])
            token = step_logits.argmax(-1, keepdim=True)
            logits.append(step_logits)
            outputs.append(y)
        return torch.stack(logits, 1), torch.cat(outputs, 1), h, c


class Seq2SeqAttention(nn.Module):
    def __init__(self, vocab=30, embedding=16, hidden=32):
        super().__init__()
        self.source_embed = nn.Embedding(vocab, embedding)
        self.encoder = nn.GRU(embedding, hidden, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * hidden, hidden)
        self.target_embed = nn.Embedding(vocab, embedding)
        self.decoder = nn.GRU(embedding + 2 * hidden, hidden, batch_first=True)
        self.query = nn.Linear(hidden, 2 * hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, source, max_length: int):
        encoded, final = self.encoder(self.source_embed(source))  # [batch, length, 2 hidden]
        h = torch.tanh(self.bridge(torch.cat([final[0], final[1]], -1))).unsqueeze(0)
        token = torch.zeros(source.shape[0], 1, dtype=torch.long)
        tokens = token
        for _ in range(max_length):
            weights = torch.softmax(torch.bmm(encoded, self.query(h[-1]).unsqueeze(2)), 1)
            context = (weights * encoded).sum(1, keepdim=True)
            y, h = self.decoder(torch.cat([self.target_embed(token), context], -1), h)
            token = self.head(y[:, -1]).argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, token], 1)
            if bool((token == 1).all()):  # (token 1 ends a sequence)
                break
        return tokens


def _export(net, args, name, **kwargs):
    path = os.path.join(OUT, name)
    torch.onnx.export(net, args, path, dynamo=False, opset_version=17, **kwargs)
    print("wrote", path)
    return path


def _walk(rng, shape, scale=0.1):
    """A random walk along the last axis: neighbouring frames alike, as in real signals."""
    return np.cumsum(rng.normal(0, scale, shape), axis=-1).astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(0)
    inputs = {}

    torch.manual_seed(0)
    vad = torch.jit.script(StreamingVad().eval())
    chunk = np.sin(np.arange(CHUNK) / 7.0)[None].astype(np.float32) + _walk(rng, (1, CHUNK), 0.05)
    state = np.zeros((2, 1, HIDDEN), np.float32)
    _export(vad, (torch.from_numpy(chunk), torch.from_numpy(state), 16000), "vad_stream.onnx",
            input_names=["input", "state", "sr"], output_names=["prob", "stateN"],
            dynamic_axes={"input": {0: "batch"}, "state": {1: "batch"}})
    inputs.update({"vad_stream/input": chunk, "vad_stream/state": state,
                   "vad_stream/sr": np.array(16000, np.int64)})

    torch.manual_seed(1)
    image = rng.random((1, 1, 32, 64), np.float32)
    crnn = Crnn().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for module in crnn.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    _export(crnn, (torch.from_numpy(image),), "crnn_recognizer.onnx",
            input_names=["image"], output_names=["log_probs"],
            dynamic_axes={"image": {0: "batch", 3: "width"},
                          "log_probs": {0: "columns", 1: "batch"}})
    inputs["crnn_recognizer/image"] = image

    torch.manual_seed(2)
    spec = np.abs(_walk(rng, (1, 65, 40)))
    h = np.zeros((1, 1, 48), np.float32)
    _export(GruDenoiser().eval(), (torch.from_numpy(spec), torch.from_numpy(h)),
            "gru_denoiser.onnx", input_names=["spec", "h"], output_names=["enhanced", "hN"],
            dynamic_axes={"spec": {0: "batch", 2: "frames"}, "h": {1: "batch"},
                          "enhanced": {0: "batch", 2: "frames"}, "hN": {1: "batch"}})
    inputs.update({"gru_denoiser/spec": spec, "gru_denoiser/h": h})

    torch.manual_seed(3)
    x = _walk(rng, (30, 1, 20), 0.2)
    float_path = _export(Tagger().eval(), (torch.from_numpy(x),), "tagger_float.onnx",
                         input_names=["x"], output_names=["logits"],
                         dynamic_axes={"x": {0: "seq", 1: "batch"}, "logits": {0: "seq", 1: "batch"}})
    from onnxruntime.quantization import quantize_dynamic, QuantType
    path = os.path.join(OUT, "quantized_lstm.onnx")
    quantize_dynamic(float_path, path, weight_type=QuantType.QInt8)
    print("wrote", path)
    inputs["quantized_lstm/x"] = x

    torch.manual_seed(4)
    h, c = (rng.normal(0, 0.5, (1, 2, 32)).astype(np.float32) for _ in range(2))
    decoder = torch.jit.script(GreedyDecoder().eval())
    _export(decoder, (torch.from_numpy(h), torch.from_numpy(c), 12), "greedy_decoder.onnx",
            input_names=["h", "c", "steps"], output_names=["logits", "outputs", "hN", "cN"],
            dynamic_axes={"h": {1: "batch"}, "c": {1: "batch"}})
    inputs.update({"greedy_decoder/h": h, "greedy_decoder/c": c,
                   "greedy_decoder/steps": np.array(12, np.int64)})

    torch.manual_seed(5)
    source = rng.integers(2, 30, (2, 9)).astype(np.int64)
    translator = torch.jit.script(Seq2SeqAttention().eval())
    _export(translator, (torch.from_numpy(source), 16), "seq2seq_attention.onnx",
            input_names=["source", "max_length"], output_names=["tokens"],
            dynamic_axes={"source": {0: "batch", 1: "length"}})
    inputs.update({"seq2seq_attention/source": source,
                   "seq2seq_attention/max_length": np.array(16, np.int64)})

    np.savez(os.path.join(OUT, "inputs.npz"), **inputs)


if __name__ == "__main__":
    main()
