"""Training throughput of the `train` stage beside two peers, measured in one run: read the ratios.

Peers on the same synthetic data (the seeds' generator) and batch size:
- seed: the seeds' own TF1 Estimator pipeline, `../shared/bench/seed_baseline.py`, in its own venv
  (tensorflow-cpu 2.15.1, tensorflow-estimator 2.15.0, numpy<2), created at `--seed_venv` if missing;
- keras_fit: what a user would write today, the same model as a plain Keras 3 functional model trained with
  `Model.fit` (no callbacks), data in memory.
Ours is `Estimator.train` as `mtl train` runs it, checkpoints and summaries on, after a warm-up; its rate is
the steady one of its progress reports. The seed's rate is over one `estimator.train` epoch, as its script
measures it (start-up included: the seed pays it once per epoch, as its users did).

Census (task group 1, MMoE 8x16, towers of 8, batch 1024): `mtl train` with the table in memory and streamed
(`--in_memory_max_mb=0`), beside the tuned Keras peer `benchmarks/census_keras_peer.py`; each in its own
process, so that its peak RSS is its own.

    .venv/bin/python benchmarks/train_throughput.py --output=benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from pipeline import data  # noqa: E402
from pipeline.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    SyntheticDataConfig,
    TaskConfig,
    TrainConfig,
)  # noqa: E402
from pipeline.data import synthetic  # noqa: E402
from pipeline.estimator import Estimator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
flags.DEFINE_string("output", "benchmarks/results/train_throughput.json", "Where the results go, as JSON.")
flags.DEFINE_string("seed_venv", str(ROOT / ".venv-seed"), "The seed baseline's venv (created if missing).")
flags.DEFINE_string("shared", str(ROOT.parent / "shared"), "The shared/ directory (seeds and bench).")
flags.DEFINE_list("batch_sizes", ["256", "1024"], "Batch sizes to measure.")
flags.DEFINE_integer("examples", 300_000, "Examples per timed run (after warm-up).")
flags.DEFINE_boolean("census", True, "Also measure census training beside a tuned Keras peer.")
flags.DEFINE_boolean("synthetic", True, "Measure the synthetic-data rows (ours, Keras fit, the seed).")
FLAGS = flags.FLAGS

TASKS = (TaskConfig("y1", "y1"), TaskConfig("y2", "y2"))
# The paper's synthetic sizes: MMoE 8 experts x 16 units, towers of 8; shared-bottom's bottom of 113 units.
SIZES = {"num_experts": 8, "expert_units": (16,), "bottom_units": (113,), "tower_units": (8,)}
SEED_PACKAGES = ["tensorflow-cpu==2.15.1", "tensorflow-estimator==2.15.0", "numpy<2"]


def ours(architecture: str, batch_size: int, data_config: DataConfig) -> float:
    """Steady-state examples/s of `Estimator.train`: from its first progress report to its last."""
    model = ModelConfig(architecture=architecture, features=data.features(data_config), tasks=TASKS, **SIZES)
    train = TrainConfig(batch_size=batch_size, log_every_steps=100, save_checkpoints_steps=500)
    steps = max(FLAGS.examples // batch_size, 300)
    with tempfile.TemporaryDirectory() as model_dir:
        config = ExperimentConfig(model=model, data=data_config, train=train)
        estimator = Estimator(config, model_dir)
        input_fn = data.input_fn(config, "train")
        estimator.train(input_fn, 200)  # warm-up: tracing, the first checkpoint
        return estimator.train(input_fn, 200 + steps)["steady_examples_per_sec"]


def keras_model(architecture: str) -> keras.Model:
    """The same model as a plain functional Keras 3 model, as a user would write it."""
    inputs = keras.Input((100,), name="inputs")
    if architecture == "mmoe":
        experts = [keras.layers.Dense(16, activation="relu")(inputs) for _ in range(SIZES["num_experts"])]
        stacked = keras.ops.stack(experts, axis=1)
        towers_in = []
        for _ in TASKS:
            gate = keras.layers.Dense(SIZES["num_experts"], activation="softmax", use_bias=False)(inputs)
            towers_in.append(keras.ops.einsum("be,beu->bu", gate, stacked))
    else:
        shared = keras.layers.Dense(SIZES["bottom_units"][0], activation="relu")(inputs)
        towers_in = [shared] * len(TASKS)
    outputs = {}
    for task, x in zip(TASKS, towers_in, strict=True):
        hidden = keras.layers.Dense(SIZES["tower_units"][0], activation="relu")(x)
        outputs[task.name] = keras.layers.Dense(1, name=task.name)(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss={task.name: "mse" for task in TASKS})
    return model


def keras_fit(architecture: str, batch_size: int, data_config: DataConfig) -> float:
    """Steady-state examples/s of `Model.fit`: the extra examples of a full epoch over a quarter epoch,
    divided by the extra time, so that `fit`'s set-up (its data adapter, tracing) cancels out."""
    features, labels = synthetic.generate(data_config.synthetic, "train")
    x = features["inputs"][: FLAGS.examples]
    y = {name: labels[name][: FLAGS.examples] for name in ("y1", "y2")}
    model = keras_model(architecture)
    quarter = len(x) // 4
    model.fit(x[:quarter], {k: v[:quarter] for k, v in y.items()}, batch_size=batch_size, verbose=0)
    started = time.perf_counter()
    model.fit(x[:quarter], {k: v[:quarter] for k, v in y.items()}, batch_size=batch_size, verbose=0)
    short = time.perf_counter() - started
    started = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    return (len(x) - quarter) / (time.perf_counter() - started - short)


def seed_venv() -> Path:
    python = Path(FLAGS.seed_venv) / "bin" / "python"
    if not python.exists():
        logging.info("Creating the seed baseline's venv at %s (TF 2.15, about 2 minutes)", FLAGS.seed_venv)
        subprocess.run([sys.executable, "-m", "venv", FLAGS.seed_venv], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *SEED_PACKAGES], check=True)
    return python


def seed(batch_size: int) -> dict[str, float]:
    shared = Path(FLAGS.shared)
    script, seeds = shared / "bench" / "seed_baseline.py", shared / "seeds"
    command = [str(seed_venv()), str(script), str(seeds), str(FLAGS.examples), str(batch_size)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {row["model"]: row["examples_per_sec"] for row in rows}


def _peak_rss_run(command: list[str]) -> tuple[subprocess.CompletedProcess, int]:
    """Runs `command` in a fresh child; returns it and its peak RSS in MiB."""
    # RUSAGE_CHILDREN is the largest of all children waited for: a fresh parent measures this one alone.
    measure = (
        "import resource, subprocess, sys; "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(r.stderr); sys.stdout.write(r.stdout); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    result = subprocess.run([sys.executable, "-c", measure, *command], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return result, round(int(result.stdout.strip().splitlines()[-1]) / 1024)


def census_ours(in_memory_max_mb: int, steps: int) -> dict:
    """`mtl train` on census: the median of its progress reports' rates after the first two, and peak RSS."""
    with tempfile.TemporaryDirectory() as model_dir:
        data_dir = Path(FLAGS.shared) / "data" / "census-income"
        command = [sys.executable, "-m", "mtl", "train", "--data=census", f"--data_dir={data_dir}"]
        command += ["--model=mmoe", f"--model_dir={model_dir}", "--batch_size=1024", f"--max_steps={steps}"]
        command += [f"--in_memory_max_mb={in_memory_max_mb}", f"--log_every_steps={steps // 10}"]
        command += [f"--save_checkpoints_steps={steps // 2}"]
        result, peak_mib = _peak_rss_run(command)
    reports = [line for line in result.stderr.splitlines() if "examples/s" in line]
    steady = [
        float(line.split("examples/s")[0].split("]")[-1].strip().replace(",", "")) for line in reports[2:]
    ]
    return {"examples_per_sec": round(float(np.median(steady))), "peak_rss_mib": peak_mib}


def census_keras() -> dict:
    """The tuned Keras peer (`census_keras_peer.py`): its fastest of arrays / `tf.data`, XLA on / off."""
    data_dir = Path(FLAGS.shared) / "data" / "census-income"
    script = str(ROOT / "benchmarks" / "census_keras_peer.py")
    result, peak_mib = _peak_rss_run([sys.executable, script, f"--data_dir={data_dir}"])
    row = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    return {**row, "peak_rss_mib": peak_mib}


def census_run() -> dict:
    in_memory = census_ours(in_memory_max_mb=TrainConfig().in_memory_max_mb, steps=3000)
    keras_fit = census_keras()
    streaming = census_ours(in_memory_max_mb=0, steps=400)
    return {
        "ours_in_memory": in_memory,
        "ours_streaming": streaming,
        "keras_fit": keras_fit,
        "in_memory_over_keras": round(in_memory["examples_per_sec"] / keras_fit["examples_per_sec"], 2),
        "streaming_over_keras": round(streaming["examples_per_sec"] / keras_fit["examples_per_sec"], 2),
    }


def flops_per_example(architecture: str) -> int:
    """Training FLOPs per example: about 3 x (2 x multiply-adds) of the forward pass."""
    experts = SIZES["num_experts"] * 100 * 16
    if architecture == "mmoe":
        forward = experts + len(TASKS) * (100 * SIZES["num_experts"] + SIZES["num_experts"] * 16 + 16 * 8 + 8)
    else:
        forward = 100 * 113 + len(TASKS) * (113 * 8 + 8)
    return 6 * forward


def rough_peak_flops() -> float:
    """Cores x clock x 32 fp32 FLOPs per cycle (one AVX-512 FMA unit): a rough ceiling, not a measurement."""
    mhz = [
        float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines() if "MHz" in line
    ]
    return os.cpu_count() * (max(mhz) if mhz else 2000.0) * 1e6 * 32


def main(argv: list[str]) -> None:
    del argv
    data_config = DataConfig(synthetic=SyntheticDataConfig(num_examples=FLAGS.examples))
    peak = rough_peak_flops()
    rows = []
    for batch_size in map(int, FLAGS.batch_sizes) if FLAGS.synthetic else ():
        seed_rates = seed(batch_size)
        for architecture in ("shared_bottom", "mmoe"):
            row = {
                "model": architecture,
                "batch": batch_size,
                "ours": round(ours(architecture, batch_size, data_config)),
                "keras_fit": round(keras_fit(architecture, batch_size, data_config)),
                "seed": seed_rates[architecture],
            }
            row["ours_over_seed"] = round(row["ours"] / row["seed"], 2)
            row["ours_over_keras"] = round(row["ours"] / row["keras_fit"], 2)
            row["achieved_gflops"] = round(row["ours"] * flops_per_example(architecture) / 1e9, 2)
            row["fraction_of_rough_peak"] = round(row["ours"] * flops_per_example(architecture) / peak, 4)
            rows.append(row)
            logging.info("%s", row)
    result = {"rows": rows, "rough_peak_gflops": round(peak / 1e9), "examples_per_run": FLAGS.examples}
    if FLAGS.census:
        result["census"] = census_run()
    Path(FLAGS.output).parent.mkdir(parents=True, exist_ok=True)
    Path(FLAGS.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'model':<14}{'batch':>6}{'ours ex/s':>11}{'keras ex/s':>11}{'seed ex/s':>10}{'ours/seed':>10}"
          f"{'ours/keras':>11}{'GFLOP/s':>9}")  # fmt: skip
    for r in rows:
        rates = f"{r['ours']:>11,}{r['keras_fit']:>11,}{r['seed']:>10,}"
        ratios = f"{r['ours_over_seed']:>10.2f}{r['ours_over_keras']:>11.2f}{r['achieved_gflops']:>9.2f}"
        print(f"{r['model']:<14}{r['batch']:>6}{rates}{ratios}")
    if "census" in result:
        census = result["census"]
        for name in ("ours_in_memory", "ours_streaming", "keras_fit"):
            print(f"census mmoe batch 1024, {name}: {census[name]['examples_per_sec']:,} ex/s, "
                  f"peak RSS {census[name]['peak_rss_mib']} MiB")  # fmt: skip
        print(f"census: in memory {census['in_memory_over_keras']}x Keras fit, "
              f"streaming {census['streaming_over_keras']}x")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
