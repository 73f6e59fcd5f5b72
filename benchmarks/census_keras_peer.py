"""The tuned Keras peer of `train_throughput.py`'s census run: the best plain Keras 3 can do on the same data.

The product's census MMoE (task group 1) written as a plain functional Keras model and trained with
`Model.fit`, set up the way a careful user would, so that beating it means something:
- the train split is read once into memory and its columns looked up once, outside the model (int32 ids
  from the training vocabularies, numerics normalised, labels 0/1), so each step does embedding lookups and
  math only;
- the experts run as one matmul (`Dense(E * 16)` split into E experts) and the gates as one, the same
  functions as E separate `Dense(16)` and 2 `Dense(8)` (`--experts=separate` gives those);
- `steps_per_execution=100`; `jit_compile` off and on, and numpy arrays vs an in-memory `tf.data`
  pipeline, are both measured and the fastest is reported.
The rate is steady: (examples of ~--seconds of epochs - examples of a quarter epoch) / (extra time), after a
warm-up, so `fit`'s set-up cancels. It prints one JSON line.

    .venv/bin/python benchmarks/census_keras_peer.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.data import census  # noqa: E402

LABELS = {"income": ("income_50k", ("50000+.",)), "marital": ("marital_stat", ("Never married",))}
EMBEDDING_DIM, NUM_EXPERTS, EXPERT_UNITS, TOWER_UNITS = 4, 8, 16, 8


def read_train(data_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The train split (lines with (n-1) % 10 < 8) as model inputs, looked up once; and the labels."""
    path = data_dir / census.TEST_FILE
    with gzip.open(path, "rb") as f:  # the fields are separated by ", ": split on "," and strip
        table = pacsv.read_csv(
            f,
            read_options=pacsv.ReadOptions(column_names=list(census.COLUMNS)),
            parse_options=pacsv.ParseOptions(delimiter=","),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in census.COLUMNS}, strings_can_be_null=False
            ),
        )
    table = table.filter(pa.array(np.arange(table.num_rows) % 10 < 8))
    columns = {name: pc.utf8_trim_whitespace(table[name]) for name in census.COLUMNS}
    label_columns = {column for column, _ in LABELS.values()}
    features: dict[str, np.ndarray] = {}
    for name in census.COLUMNS:
        if name in label_columns or name == "instance_weight" or name in census.NUMERIC:
            continue
        counts = pc.value_counts(columns[name]).flatten()
        order = np.lexsort((counts[0].to_numpy(zero_copy_only=False), -counts[1].to_numpy()))
        vocabulary = counts[0].take(pa.array(order))  # most frequent first; OOV is index len(vocabulary)
        ids = pc.fill_null(pc.index_in(columns[name], value_set=vocabulary), len(vocabulary))
        features[name] = ids.to_numpy().astype(np.int32)
    numeric = np.stack([pc.cast(columns[name], pa.float32()).to_numpy() for name in census.NUMERIC], axis=1)
    mean, variance = numeric.mean(axis=0), numeric.var(axis=0)
    features["numeric"] = ((numeric - mean) / np.sqrt(np.maximum(variance, 1e-7))).astype(np.float32)
    labels = {
        task: pc.is_in(columns[column], value_set=pa.array(positive)).to_numpy(zero_copy_only=False)
        .astype(np.float32)
        .reshape(-1, 1)
        for task, (column, positive) in LABELS.items()
    }  # fmt: skip
    return features, labels


def build_model(features: dict[str, np.ndarray], jit_compile: bool, experts: str) -> keras.Model:
    """Embeddings of the ids + normalised numerics -> MMoE (8 x Dense(16) experts, 2 gates) -> towers."""
    inputs, columns = {}, []
    for name, values in features.items():
        if name == "numeric":
            inputs[name] = keras.Input((values.shape[1],), dtype="float32", name=name)
            columns.append(inputs[name])
        else:
            inputs[name] = keras.Input((), dtype="int32", name=name)
            size = int(values.max()) + 2  # the vocabulary + 1 OOV index
            embedding = keras.layers.Embedding(size, EMBEDDING_DIM, name=f"{name}_embedding")
            columns.append(embedding(inputs[name]))
    x = keras.layers.Concatenate()(columns)
    if experts == "fused":
        hidden = keras.layers.Dense(NUM_EXPERTS * EXPERT_UNITS, activation="relu", name="experts")(x)
        stacked = keras.layers.Reshape((NUM_EXPERTS, EXPERT_UNITS))(hidden)
        logits = keras.layers.Dense(len(LABELS) * NUM_EXPERTS, use_bias=False, name="gates")(x)
        weights = keras.ops.softmax(keras.layers.Reshape((len(LABELS), NUM_EXPERTS))(logits), axis=-1)
        mixed = keras.ops.matmul(weights, stacked)  # [batch, tasks, units]
        mixtures = [mixed[:, t, :] for t in range(len(LABELS))]
    else:
        stacked = keras.ops.stack(
            [keras.layers.Dense(EXPERT_UNITS, activation="relu")(x) for _ in range(NUM_EXPERTS)], axis=1
        )
        gates = [keras.layers.Dense(NUM_EXPERTS, activation="softmax", use_bias=False)(x) for _ in LABELS]
        mixtures = [keras.ops.einsum("be,beu->bu", gate, stacked) for gate in gates]
    outputs = {}
    for task, mixture in zip(LABELS, mixtures, strict=True):
        tower = keras.layers.Dense(TOWER_UNITS, activation="relu", name=f"{task}_tower")(mixture)
        outputs[task] = keras.layers.Dense(1, name=task)(tower)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={task: keras.losses.BinaryCrossentropy(from_logits=True) for task in LABELS},
        steps_per_execution=100,
        jit_compile=jit_compile,
    )
    return model


def dataset(features: dict, labels: dict, batch_size: int) -> tf.data.Dataset:
    rows = len(labels["income"])
    ds = tf.data.Dataset.from_tensor_slices((features, labels)).shuffle(rows, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def steady_rate(features: dict, labels: dict, args: argparse.Namespace, style: str, jit: bool) -> float:
    """Examples/s of `fit` beyond its set-up: --epochs epochs minus a quarter epoch, after a warm-up."""
    keras.utils.set_random_seed(0)
    model = build_model(features, jit, args.experts)
    rows = len(labels["income"])
    quarter = rows // 4
    quarter_features = {k: v[:quarter] for k, v in features.items()}
    quarter_labels = {k: v[:quarter] for k, v in labels.items()}

    def fit(x: dict, y: dict, epochs: int) -> tuple[float, int]:
        """(seconds, examples trained)"""
        n = len(y["income"])
        started = time.perf_counter()
        if style == "arrays":
            model.fit(x, y, batch_size=args.batch_size, epochs=epochs, shuffle=True, verbose=0)
            return time.perf_counter() - started, n * epochs
        model.fit(dataset(x, y, args.batch_size), epochs=epochs, verbose=0)
        return time.perf_counter() - started, (n // args.batch_size) * args.batch_size * epochs

    fit(features, labels, 1)  # warm-up: tracing, the first epoch
    seconds, _ = fit(features, labels, 1)
    epochs = args.epochs or max(2, math.ceil(args.seconds / seconds))  # about --seconds of timed training
    fit(quarter_features, quarter_labels, 1)
    short, short_examples = fit(quarter_features, quarter_labels, 1)
    long, long_examples = fit(features, labels, epochs)
    rate = (long_examples - short_examples) / (long - short)
    print(f"{style:8} jit_compile={jit!s:5} {rate:>10,.0f} examples/s ({long:.1f}s for {epochs} epochs, "
          f"{short:.2f}s for a quarter)", file=sys.stderr)  # fmt: skip
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, default=ROOT.parent / "shared" / "data" / "census-income")
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=12.0, help="About how long each timed run lasts.")
    parser.add_argument("--epochs", type=int, default=0, help="Epochs of each timed run (0: from --seconds).")
    parser.add_argument("--jit_compile", choices=("both", "on", "off"), default="both")
    parser.add_argument("--inputs", choices=("both", "arrays", "dataset"), default="both")
    parser.add_argument("--experts", choices=("fused", "separate"), default="fused")
    args = parser.parse_args()

    features, labels = read_train(args.data_dir)
    jits = {"both": (False, True), "on": (True,), "off": (False,)}[args.jit_compile]
    styles = ("arrays", "dataset") if args.inputs == "both" else (args.inputs,)
    rates = {(s, j): steady_rate(features, labels, args, s, j) for j in jits for s in styles}
    style, jit = max(rates, key=rates.get)
    result = {
        "examples_per_sec": round(rates[style, jit]),
        "arrays_examples_per_sec": round(rates["arrays", jit]) if ("arrays", jit) in rates else None,
        "dataset_examples_per_sec": round(rates["dataset", jit]) if ("dataset", jit) in rates else None,
        "input": style,
        "jit_compile": jit,
        "train_rows": len(labels["income"]),
        "batch_size": args.batch_size,
        "experts": args.experts,
        "all_rates": {f"{s}/jit_{'on' if j else 'off'}": round(r) for (s, j), r in rates.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
