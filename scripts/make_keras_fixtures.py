"""Write tests/fixtures/keras/*.onnx: Keras recurrent models as tf2onnx exports them.

    pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0
    python scripts/make_keras_fixtures.py

Small models with random weights (seeded) of the shapes Keras users build: LSTMs, GRUs
and SimpleRNNs with a dynamic batch and length, backwards, bidirectional, masked,
with their state in and out, after a convolution.  tf2onnx turns Keras 3's LSTM into
an ONNX LSTM, but its GRU and SimpleRNN, and a masked LSTM, into a Loop running the
cell written out; going backwards, it reverses the sequence with lengths expanded
from a dimension.  ``tests/test_keras.py`` checks each against onnxruntime.
"""

import os

import tensorflow as tf
import tf2onnx

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures", "keras")
layers = tf.keras.layers


def spec(shape, name="x", dtype=tf.float32):
    return tf.TensorSpec(shape, dtype, name=name)


def save(name, inputs, outputs, signature):
    tf2onnx.convert.from_keras(tf.keras.Model(inputs, outputs), input_signature=signature, opset=13,
                               output_path=os.path.join(OUT, f"{name}.onnx"))


def main():
    os.makedirs(OUT, exist_ok=True)
    tf.keras.utils.set_random_seed(0)
    sequence = [spec((None, None, 8))]

    x = tf.keras.Input((None, 8))
    save("lstm_backwards", x, layers.LSTM(16, go_backwards=True, return_sequences=True)(x), sequence)
    x = tf.keras.Input((None, 8))
    h = layers.Bidirectional(layers.LSTM(16, return_sequences=True))(x)
    save("stacked_bilstm", x, layers.Dense(3, activation="softmax")(layers.Bidirectional(layers.LSTM(8))(h)),
         sequence)
    x, h0, c0 = tf.keras.Input((None, 8)), tf.keras.Input((20,)), tf.keras.Input((20,))
    y, hn, cn = layers.LSTM(20, return_sequences=True, return_state=True)(x, initial_state=[h0, c0])
    save("lstm_state", [x, h0, c0], [y, hn, cn], sequence + [spec((None, 20), "h0"), spec((None, 20), "c0")])
    x = tf.keras.Input((None, 8))
    save("masked_lstm", x, layers.LSTM(16)(layers.Masking(mask_value=0.0)(x)), sequence)
    x = tf.keras.Input((50, 3))
    h = layers.MaxPooling1D(2)(layers.Conv1D(16, 5, padding="same", activation="relu")(x))
    save("conv_lstm", x, layers.Dense(4)(layers.LSTM(32)(layers.LSTM(32, return_sequences=True)(h))),
         [spec((None, 50, 3))])
    x = tf.keras.Input((None,), dtype="int32")
    h = layers.Bidirectional(layers.LSTM(16, return_sequences=True))(layers.Embedding(100, 16)(x))
    save("tagger", x, layers.Dense(7)(h), [spec((None, None), "x", tf.int32)])
    x = tf.keras.Input((None, 8))
    save("rnn_backwards", x, layers.SimpleRNN(12, return_sequences=True, go_backwards=True)(x), sequence)
    x = tf.keras.Input((None, 8))
    save("bigru", x, layers.Dense(5, activation="softmax")(
        layers.Bidirectional(layers.GRU(16, return_sequences=True))(x)), sequence)
    x = tf.keras.Input((None, 8))
    save("gru_v1", x, layers.GRU(24, reset_after=False)(x), sequence)


if __name__ == "__main__":
    main()
