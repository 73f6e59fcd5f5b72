"""Reproduces the MMoE paper's experiments (Ma et al., KDD 2018) with every architecture side by side.

- Synthetic sweep (the paper's section 3.2 data, its Figures 4 and 5): for each task correlation `--p`, every
  model of `--models` trained from `--seeds` seeds (a seed draws new tasks, data and initial weights); the
  eval loss of each task along training, and its final value.
- Census-income (the paper's section 6.3, its Table 2): groups 1 (income, never married) and 2 (education,
  never married), every model from `--census_seeds` seeds; the test AUC of each task.

MMoE, OMoE and shared-bottom have the paper's sizes (8 experts of 16 units, towers of 8, a 113-unit bottom);
PLE and single-task are sized to MMoE's parameter count (as `--param_budget` does). Runs go to `--workers`
processes of one thread each, and each finished run is written to `--output` at once, so an interrupted
reproduction resumes where it stopped. `--report_only` redraws the tables and plots from `--output`.

    .venv/bin/python benchmarks/reproduce_mmoe.py --seeds=20 --census_seeds=10 \\
        --data_dir=../shared/data/census-income

Raising `--seeds` later adds only the new seeds; `docs/reproduction.md` lists the commands of its figures.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from pipeline import data  # noqa: E402
from pipeline.config import (  # noqa: E402
    DataConfig,
    ExperimentConfig,
    FeatureConfig,
    ModelConfig,
    SyntheticDataConfig,
    TaskConfig,
    TrainConfig,
)
from pipeline.data import census, synthetic  # noqa: E402
from pipeline.estimator import Estimator  # noqa: E402
from pipeline.experts_report import gate_statistics  # noqa: E402
from pipeline.models import sizing  # noqa: E402

flags.DEFINE_list("experiments", ["synthetic", "census"], "Which experiments: synthetic, census.")
flags.DEFINE_list("models", ["shared_bottom", "omoe", "mmoe", "ple", "single_task"], "Architectures.")
flags.DEFINE_list("p", ["0.5", "0.9", "1.0"], "Synthetic task correlations.")
flags.DEFINE_integer("seeds", 20, "Runs per model and task correlation.")
flags.DEFINE_integer("synthetic_examples", 10_000, "Synthetic training examples per run.")
flags.DEFINE_float("synthetic_c", 0.3, "Scale c of the synthetic tasks' weight vectors, as in the seeds.")
flags.DEFINE_integer("synthetic_m", 5, "Sine terms m of each synthetic task, as in the seeds.")
flags.DEFINE_integer(
    "synthetic_steps", 20_000, "Training steps per synthetic run (at 3,000 every model is still learning)."
)
flags.DEFINE_integer("eval_every_steps", 500, "Synthetic runs evaluate this often (the loss curves).")
flags.DEFINE_list("census_groups", ["1", "2"], "Census-income task groups.")
flags.DEFINE_integer("census_seeds", 10, "Runs per model and census group.")
flags.DEFINE_integer("census_steps", 2000, "Training steps per census run.")
flags.DEFINE_string("data_dir", "../shared/data/census-income", "Directory of the UCI census files.")
flags.DEFINE_integer("batch_size", 256, "Batch size of every run.")
flags.DEFINE_integer("workers", 2, "Parallel runs, one thread each (the machine's cores).")
flags.DEFINE_string("output", "benchmarks/results/reproduce_mmoe.json", "Every run's results (resumable).")
flags.DEFINE_string(
    "plots_dir", "docs", "Where the PNGs go (named after --output, as are the tables beside it)."
)
flags.DEFINE_boolean("report_only", False, "Only redraw the tables and plots from --output.")
FLAGS = flags.FLAGS

SIZES = {"num_experts": 8, "expert_units": (16,), "bottom_units": (113,), "tower_units": (8,)}


# -- one run (in a worker process) ------------------------------------------------------------------------


def _start_worker() -> None:
    """One thread per run, so `--workers` runs share the cores without oversubscribing them."""
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    logging.set_verbosity(logging.WARNING)


def _experiment(spec: dict[str, Any], data_config: DataConfig, features: Any, tasks: Any) -> ExperimentConfig:
    """The run's experiment: the paper's sizes, or for PLE and single-task MMoE's parameter count."""
    model = ModelConfig(architecture=spec["model"], features=features, tasks=tasks, **SIZES)
    if model.architecture in ("ple", "single_task"):
        model = sizing.fit_to_budget(model, spec["budget"])
    train = TrainConfig(
        batch_size=spec["batch_size"],
        seed=spec["seed"],
        save_checkpoints_steps=spec["steps"],
        log_every_steps=spec["steps"],
    )
    return ExperimentConfig(model=model, data=data_config, train=train)


def _synthetic_config(spec: dict[str, Any]) -> SyntheticDataConfig:
    return SyntheticDataConfig(
        num_examples=spec["examples"],
        eval_examples=spec["examples"] // 5,
        p=spec["p"],
        c=spec["c"],
        m=spec["m"],
        seed=spec["seed"],
    )


def _synthetic_run(spec: dict[str, Any]) -> dict[str, Any]:
    synthetic_config = _synthetic_config(spec)
    tasks = (TaskConfig("y1", "y1"), TaskConfig("y2", "y2"))
    config = _experiment(
        spec, DataConfig(synthetic=synthetic_config), synthetic.features(synthetic_config), tasks
    )
    with tempfile.TemporaryDirectory() as model_dir:
        estimator = Estimator(config, model_dir)
        eval_input = data.input_fn(config, "eval")
        estimator.train_and_evaluate(
            data.input_fn(config, "train"), eval_input, spec["steps"], spec["eval_every"]
        )
        history = json.loads((Path(model_dir) / "eval_history.json").read_text())
        gates = None
        if estimator.model.has_gates:
            batches = (inputs for inputs, _, _ in eval_input(tf.distribute.InputContext(), 0))
            gates = {
                gate: values["mean_weights"]
                for gate, values in gate_statistics(estimator.model, batches)["gates"].items()
            }
    return {
        **spec,
        "parameters": estimator.model.count_params(),
        "steps_evaluated": [results["global_step"] for results in history],
        "eval_loss": {task: [results["tasks"][task]["loss"] for results in history] for task in ("y1", "y2")},
        "gate_weights": gates,
    }


def _census_run(spec: dict[str, Any]) -> dict[str, Any]:
    data_config = DataConfig(source="census", tabular=census.data_config(spec["data_dir"], spec["group"]))
    config = _experiment(spec, data_config, data.features(data_config), data.tasks(data_config))
    with tempfile.TemporaryDirectory() as model_dir:
        estimator = Estimator(config, model_dir)
        estimator.train(data.input_fn(config, "train"), spec["steps"])
        test = estimator.evaluate(data.input_fn(config, "test"), "test")
    return {
        **spec,
        "parameters": estimator.model.count_params(),
        "test_auc": {task: values["auc"] for task, values in test["tasks"].items()},
    }


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """One run of `spec` (see `planned_runs`), timed."""
    started = time.perf_counter()
    result = _synthetic_run(spec) if spec["experiment"] == "synthetic" else _census_run(spec)
    return {**result, "seconds": round(time.perf_counter() - started, 1)}


# -- the plan ------------------------------------------------------------------------------------------------


def run_key(spec: dict[str, Any]) -> str:
    setting = f"p={spec['p']}" if spec["experiment"] == "synthetic" else f"group={spec['group']}"
    return f"{spec['experiment']}/{setting}/{spec['model']}/{spec['seed']}"


def mmoe_parameters(census_group: int | None) -> int:
    """MMoE's parameter count at the paper's sizes: the budget of PLE and single-task."""
    if census_group is None:
        features, tasks = (
            (FeatureConfig("inputs", dim=100),),
            (TaskConfig("y1", "y1"), TaskConfig("y2", "y2")),
        )
    else:
        data_config = DataConfig(source="census", tabular=census.data_config(FLAGS.data_dir, census_group))
        features, tasks = data.features(data_config), data.tasks(data_config)
    return sizing.parameter_count(ModelConfig(architecture="mmoe", features=features, tasks=tasks, **SIZES))


def planned_runs() -> list[dict[str, Any]]:
    """Every run of the reproduction: a spec each (what `run` needs), in the order they are started."""
    runs = []
    if "synthetic" in FLAGS.experiments:
        setting = {
            "experiment": "synthetic",
            "budget": mmoe_parameters(None),
            "examples": FLAGS.synthetic_examples,
            "c": FLAGS.synthetic_c,
            "m": FLAGS.synthetic_m,
            "steps": FLAGS.synthetic_steps,
            "eval_every": FLAGS.eval_every_steps,
        }
        runs += [{**setting, "p": float(p)} for p in FLAGS.p]
    if "census" in FLAGS.experiments:
        data_dir = str(Path(FLAGS.data_dir).resolve())
        for group in map(int, FLAGS.census_groups):
            setting = {"experiment": "census", "budget": mmoe_parameters(group), "steps": FLAGS.census_steps}
            runs.append({**setting, "group": group, "data_dir": data_dir})
    return [
        {**setting, "model": model, "seed": seed, "batch_size": FLAGS.batch_size}
        for setting in runs
        for model in FLAGS.models
        for seed in range(
            1, (FLAGS.seeds if setting["experiment"] == "synthetic" else FLAGS.census_seeds) + 1
        )
    ]


def _save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(staging, path)


def _done(result: dict[str, Any] | None, spec: dict[str, Any]) -> bool:
    """Whether `result` is of run `spec` with every one of its settings (steps, data, sizes...): a run of
    other settings is run again and replaced."""
    return result is not None and all(result.get(name) == value for name, value in spec.items())


def execute(runs: list[dict[str, Any]], output: Path, workers: int) -> dict[str, Any]:
    """Runs what `output` does not hold yet, `workers` at a time, saving each result as it finishes."""
    results = json.loads(output.read_text()) if output.exists() else {}
    todo = [spec for spec in runs if not _done(results.get(run_key(spec)), spec)]
    logging.info("%d runs planned, %d done before, %d to run.", len(runs), len(runs) - len(todo), len(todo))
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_start_worker, maxtasksperchild=20) as pool:
        for done, result in enumerate(pool.imap_unordered(run, todo), start=1):
            results[run_key(result)] = result
            _save(results, output)
            elapsed = time.monotonic() - started
            remaining = elapsed / done * (len(todo) - done)
            logging.info(
                "[%d/%d] %s in %.0fs; ETA %s",
                done,
                len(todo),
                run_key(result),
                result["seconds"],
                time.strftime("%H:%M:%S", time.gmtime(remaining)),
            )
    return results


# -- statistics ---------------------------------------------------------------------------------------------


def interval95(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of the mean (10,000 resamples)."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(10_000, len(values))).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def curve_interval95(curves: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 95% percentile-bootstrap band of the mean curve over runs (rows), step by step; unlike mean
    +- 1.96 standard errors it stays positive, so it can be drawn on a log scale when a few runs are far
    worse than the rest."""
    rng = np.random.default_rng(seed)
    means = curves[rng.integers(len(curves), size=(2_000, len(curves)))].mean(axis=1)
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def paired_difference(a: dict[int, float], b: dict[int, float], seed: int = 0) -> dict[str, float]:
    """`a - b` over the seeds both have: mean, 95% bootstrap interval, and the two-sided p-value of a
    sign-flip permutation test (whether the difference could be chance)."""
    seeds = sorted(set(a) & set(b))
    differences = np.array([a[s] - b[s] for s in seeds])
    rng = np.random.default_rng(seed)
    flips = rng.choice([-1.0, 1.0], size=(10_000, len(differences)))
    null = np.abs((flips * differences).mean(axis=1))
    low, high = interval95(differences, seed)
    return {
        "runs": len(seeds),
        "mean": float(differences.mean()),
        "low": low,
        "high": high,
        "p_value": float((null >= abs(differences.mean()) - 1e-15).mean()),
    }


def format_p_value(p_value: float) -> str:
    """Three decimals, or `< 0.001` below what three decimals can show."""
    return "< 0.001" if p_value < 0.001 else f"{p_value:.3f}"


def summarise(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, np.float64)
    low, high = interval95(array)
    return {
        "runs": len(array),
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "best": float(array.min()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "low": low,
        "high": high,
    }


# -- report -------------------------------------------------------------------------------------------------


def _final_losses(runs: list[dict[str, Any]], p: float, model: str) -> dict[int, float]:
    """Each seed's final eval loss (y1 + y2) of `model` at task correlation `p`."""
    return {
        r["seed"]: sum(r["eval_loss"][t][-1] for t in ("y1", "y2"))
        for r in runs
        if (r["p"], r["model"]) == (p, model)
    }


def _last_quarter_fall(run: dict[str, Any]) -> float:
    """How much the run's eval loss (y1 + y2) still fell over (about) the last quarter of its training, from
    the last evaluation at three quarters or before, as a share of where it stood: near 0 when training has
    converged."""
    steps = run["steps_evaluated"]
    start = max((i for i, step in enumerate(steps) if step <= 0.75 * steps[-1]), default=len(steps) - 1)
    total = [sum(run["eval_loss"][t][i] for t in ("y1", "y2")) for i in (start, -1)]
    return 1 - total[1] / total[0]


def _synthetic_pairs() -> list[tuple[str, str]]:
    """The paired comparisons: every model against shared-bottom, and MMoE against OMoE (the paper's two
    orderings)."""
    pairs = [(model, "shared_bottom") for model in FLAGS.models if model != "shared_bottom"]
    return pairs + [("mmoe", "omoe")]


def synthetic_tables(results: dict[str, Any]) -> Iterator[str]:
    """The settings; per task correlation and model, the final losses over seeds; then model pairs, paired
    by seed (a seed draws the same tasks and data for every model, so pairing removes their spread)."""
    runs = [r for r in results.values() if r["experiment"] == "synthetic"]
    settings = sorted({(r["c"], r["m"], r["examples"], r["steps"]) for r in runs})
    for c, m, examples, steps in settings:
        yield f"Data and training: c = {c}, m = {m}, {examples} training examples, {steps} steps."
    yield ""
    yield (
        "| p | model | runs | final eval loss, mean [95% interval] | median | best | worst (seed) | std "
        "| fall over the last quarter, median |"
    )
    yield "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for p in sorted({r["p"] for r in runs}):
        for model in FLAGS.models:
            finals = _final_losses(runs, p, model)
            if finals:
                s = summarise(list(finals.values()))
                worst = max(finals, key=finals.get)
                fall = np.median([_last_quarter_fall(r) for r in runs if (r["p"], r["model"]) == (p, model)])
                yield (
                    f"| {p} | {model} | {s['runs']} | {s['mean']:.5f} [{s['low']:.5f}, {s['high']:.5f}] | "
                    f"{s['median']:.5f} | {s['best']:.5f} | {finals[worst]:.5f} ({worst}) | {s['std']:.5f} "
                    f"| {fall:.1%} |"
                )
    yield ""
    # Means follow the few worst seeds; the ratio of losses (a mean of log differences) and the share of
    # seeds a model wins show what a typical seed does.
    yield (
        "| p | difference | runs | mean difference [95% interval] | p-value (sign flips) "
        "| loss ratio, geometric mean [95% interval] | p-value | seeds lower |"
    )
    yield "| --- | --- | --- | --- | --- | --- | --- | --- |"
    for p in sorted({r["p"] for r in runs}):
        for model, baseline in _synthetic_pairs():
            mine, theirs = _final_losses(runs, p, model), _final_losses(runs, p, baseline)
            seeds = set(mine) & set(theirs)
            if not seeds:
                continue
            d = paired_difference(mine, theirs)
            log = paired_difference(
                {s: math.log(v) for s, v in mine.items()}, {s: math.log(v) for s, v in theirs.items()}
            )
            lower = sum(mine[s] < theirs[s] for s in seeds)
            yield (
                f"| {p} | {model} - {baseline} | {d['runs']} | {d['mean']:+.5f} "
                f"[{d['low']:+.5f}, {d['high']:+.5f}] | {format_p_value(d['p_value'])} "
                f"| {math.exp(log['mean']):.2f} [{math.exp(log['low']):.2f}, {math.exp(log['high']):.2f}] "
                f"| {format_p_value(log['p_value'])} | {lower} of {len(seeds)} |"
            )
    yield ""
    yield from gate_table(runs)
    yield ""
    yield from difficulty_table(runs)


def _task_difficulty(config: SyntheticDataConfig) -> tuple[float, float, float]:
    """The labels' correlation on the training split; the eval labels' variance (y1 + y2), which is the
    loss of predicting their mean; and the eval loss (y1 + y2) of a linear least-squares fit on the training
    split. Beside the models' final losses they show how much of the tasks is beyond a linear model."""
    (train_x, train_y), (eval_x, eval_y) = (synthetic.generate(config, s) for s in ("train", "eval"))
    design = np.c_[train_x["inputs"], np.ones(len(train_x["inputs"]))]
    eval_design = np.c_[eval_x["inputs"], np.ones(len(eval_x["inputs"]))]
    variance = linear_loss = 0.0
    for task in ("y1", "y2"):
        coefficients = np.linalg.lstsq(design, train_y[task], rcond=None)[0]
        linear_loss += float(np.mean((eval_y[task] - eval_design @ coefficients) ** 2))
        variance += float(eval_y[task].var())
    return float(np.corrcoef(train_y["y1"], train_y["y2"])[0, 1]), variance, linear_loss


def difficulty_table(runs: list[dict[str, Any]], seeds: int = 5) -> Iterator[str]:
    """Per task correlation, the data's own difficulty (see `_task_difficulty`), averaged over seeds 1 to
    `seeds`."""
    yield "| p | data of seeds | label correlation | label variance, y1 + y2 | a linear fit's eval loss |"
    yield "| --- | --- | --- | --- | --- |"
    for p in sorted({r["p"] for r in runs}):
        run = next(r for r in runs if r["p"] == p)
        correlation, variance, linear_loss = np.mean(
            [_task_difficulty(_synthetic_config({**run, "seed": seed})) for seed in range(1, seeds + 1)],
            axis=0,
        )
        yield f"| {p} | 1-{seeds} | {correlation:.3f} | {variance:.3f} | {linear_loss:.3f} |"


def gate_table(runs: list[dict[str, Any]]) -> Iterator[str]:
    """How differently MMoE's two gates weigh the experts, per task correlation: the total-variation
    distance between y1's and y2's mean gate weights (0 when both tasks use the same mixture, 1 when they
    use disjoint experts), and how peaked a gate is (its largest weight; 1/experts when uniform)."""
    mmoe = [r for r in runs if r["model"] == "mmoe" and r["gate_weights"]]
    if not mmoe:
        return
    yield "| p | MMoE runs | gate distance y1-y2, mean [95% interval] | largest gate weight, mean |"
    yield "| --- | --- | --- | --- |"
    for p in sorted({r["p"] for r in mmoe}):
        gates = [{t: np.asarray(w) for t, w in r["gate_weights"].items()} for r in mmoe if r["p"] == p]
        distances = np.array([0.5 * np.abs(g["y1"] - g["y2"]).sum() for g in gates])
        largest = np.mean([g[t].max() for g in gates for t in ("y1", "y2")])
        low, high = interval95(distances)
        yield (
            f"| {p} | {len(gates)} | {distances.mean():.3f} [{low:.3f}, {high:.3f}] | {largest:.3f} "
            f"(uniform: {1 / len(gates[0]['y1']):.3f}) |"
        )


def census_tables(results: dict[str, Any]) -> Iterator[str]:
    runs = [r for r in results.values() if r["experiment"] == "census"]
    yield "| group | model | task | runs | test AUC best | mean [95% interval] |"
    yield "| --- | --- | --- | --- | --- | --- |"
    for group in sorted({r["group"] for r in runs}):
        mine = [r for r in runs if r["group"] == group]
        for model in FLAGS.models:
            for task in sorted(mine[0]["test_auc"]) if mine else []:
                aucs = [r["test_auc"][task] for r in mine if r["model"] == model]
                if aucs:
                    s = summarise(aucs)
                    yield (
                        f"| {group} | {model} | {task} | {s['runs']} | {max(aucs):.4f} | "
                        f"{s['mean']:.4f} [{s['low']:.4f}, {s['high']:.4f}] |"
                    )
        for task in sorted(mine[0]["test_auc"]) if mine else []:
            by_seed = {
                model: {r["seed"]: r["test_auc"][task] for r in mine if r["model"] == model}
                for model in ("mmoe", "shared_bottom")
            }
            if all(by_seed.values()):
                d = paired_difference(by_seed["mmoe"], by_seed["shared_bottom"])
                p_value = format_p_value(d["p_value"])
                p_value = p_value if p_value.startswith("<") else f"= {p_value}"
                yield (
                    f"| {group} | MMoE - shared-bottom | {task} | {d['runs']} | | {d['mean']:+.4f} "
                    f"[{d['low']:+.4f}, {d['high']:+.4f}], p {p_value} |"
                )


def draw(results: dict[str, Any], plots_dir: Path, name: str) -> list[Path]:
    """The paper's Figure 4 (eval loss along training, mean and a 95% band over seeds), Figure 5 (the
    final losses over seeds) and MMoE's gate weights per task correlation, as `<name>_<plot>.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results.values() if r["experiment"] == "synthetic"]
    if not runs:
        return []
    ps = sorted({r["p"] for r in runs})
    models = [m for m in FLAGS.models if any(r["model"] == m for r in runs)]
    paths = []
    figure, axes = plt.subplots(1, len(ps), figsize=(4.5 * len(ps), 3.6), squeeze=False, sharey=True)
    for axis, p in zip(axes[0], ps, strict=True):
        for model in models:
            mine = [r for r in runs if (r["p"], r["model"]) == (p, model)]
            if not mine:
                continue
            thousands = np.asarray(mine[0]["steps_evaluated"]) / 1000
            curves = np.array([np.add(r["eval_loss"]["y1"], r["eval_loss"]["y2"]) for r in mine])
            axis.plot(thousands, curves.mean(axis=0), label=model)
            axis.fill_between(thousands, *curve_interval95(curves), alpha=0.2)
        axis.set_title(f"p = {p}")
        axis.set_xlabel("training step (thousands)")
        axis.set_yscale("log")
    axes[0][0].set_ylabel("eval loss (y1 + y2)")
    axes[0][-1].legend()
    figure.tight_layout()
    paths.append(plots_dir / f"{name}_curves.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, len(ps), figsize=(4.5 * len(ps), 3.4), squeeze=False, sharey=True)
    for axis, p in zip(axes[0], ps, strict=True):
        finals = {
            model: [
                sum(r["eval_loss"][t][-1] for t in ("y1", "y2"))
                for r in runs
                if (r["p"], r["model"]) == (p, model)
            ]
            for model in models
        }
        # Log-spaced bins: a few runs end orders of magnitude worse than the rest.
        pooled = np.concatenate([v for v in finals.values() if v])
        bins = np.geomspace(pooled.min(), pooled.max(), 16)
        # Shares, not counts: models can have different numbers of runs.
        for model, values in finals.items():
            if values:
                weights = np.full(len(values), 1 / len(values))
                axis.hist(values, bins=bins, weights=weights, histtype="step", linewidth=1.5, label=model)
        axis.set_xscale("log")
        axis.set_title(f"p = {p}")
        axis.set_xlabel("final eval loss (y1 + y2)")
    axes[0][0].set_ylabel("share of runs")
    axes[0][-1].legend()
    figure.tight_layout()
    paths.append(plots_dir / f"{name}_final_losses.png")
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

    mmoe = [r for r in runs if r["model"] == "mmoe" and r["gate_weights"]]
    if mmoe:
        figure, axes = plt.subplots(
            1, len(ps), figsize=(4.5 * len(ps), 2.6), squeeze=False, layout="constrained"
        )
        for axis, p in zip(axes[0], ps, strict=True):
            mine = [r for r in mmoe if r["p"] == p]
            if not mine:
                continue
            # Experts are unordered: sort each run's experts by task y1's weight, so runs can be averaged.
            weights = []
            for r in mine:
                order = np.argsort(r["gate_weights"]["y1"])[::-1]
                weights.append([np.asarray(r["gate_weights"][t])[order] for t in ("y1", "y2")])
            image = axis.imshow(np.mean(weights, axis=0), vmin=0, cmap="viridis", aspect="auto")
            axis.set_yticks([0, 1], ["y1", "y2"])
            axis.set_xlabel("expert (by y1's weight)")
            axis.set_title(f"MMoE gates, p = {p}")
        figure.colorbar(image, ax=axes[0].tolist())
        paths.append(plots_dir / f"{name}_gates.png")
        figure.savefig(paths[-1], dpi=110)
        plt.close(figure)
    return paths


def report(results: dict[str, Any], output: Path, plots_dir: Path) -> Path:
    """Writes the tables (markdown, beside the results `output`) and the plots, named after `output` so
    reproductions of other settings do not overwrite each other; returns the tables' path."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    seconds = sum(r["seconds"] for r in results.values())
    experiments = {r["experiment"] for r in results.values()}
    lines = []
    if "synthetic" in experiments:
        lines += ["## Synthetic data: final eval loss (y1 + y2)", "", *synthetic_tables(results), ""]
    if "census" in experiments:
        lines += ["## Census-income: test AUC", "", *census_tables(results), ""]
    lines.append(f"{len(results)} runs, {seconds / 3600:.1f} run-hours.")
    for experiment in sorted(experiments):
        seconds_of: dict[str, list[float]] = {}
        for r in results.values():
            if r["experiment"] == experiment:
                seconds_of.setdefault(r["model"], []).append(r["seconds"])
        medians = ", ".join(f"{m} {np.median(seconds_of[m]):.0f}" for m in FLAGS.models if m in seconds_of)
        lines.append(f"Median seconds per {experiment} run: {medians}.")
    tables = output.with_name(f"{output.stem}_tables.md")
    tables.write_text("\n".join(lines) + "\n")
    for path in [tables, *draw(results, plots_dir, output.stem)]:
        print(f"Wrote {path}", file=sys.stderr)
    return tables


def main(argv: list[str]) -> None:
    del argv
    output = Path(FLAGS.output)
    if FLAGS.report_only:
        results = json.loads(output.read_text())
    else:
        results = execute(planned_runs(), output, FLAGS.workers)
    print(report(results, output, Path(FLAGS.plots_dir)).read_text())


if __name__ == "__main__":
    app.run(main)
