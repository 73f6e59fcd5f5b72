"""`mtl STAGE --flags`: the pipeline's stages, each a small function over the shared library.

    mtl train --model=mmoe --model_dir=runs/mmoe --max_steps=2000
    mtl evaluate --model_dir=runs/mmoe
    mtl export --model_dir=runs/mmoe --export_base=runs/mmoe/export
    mtl train_and_evaluate --model_dir=runs/mmoe

Later stages read the model config from `model_dir`. `--flagfile=FILE` reads flags from a file (named
experiments); `mtl --helpfull` lists every flag.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import logging as std_logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import tensorflow as tf  # noqa: E402
from absl import app, logging  # noqa: E402

from pipeline import data, distribute  # noqa: E402
from pipeline import model_dir as model_dir_files  # noqa: E402
from pipeline.cli import flags as cli_flags  # noqa: E402
from pipeline.errors import ConfigError, UserError  # noqa: E402
from pipeline.estimator import Estimator  # noqa: E402

FLAGS = cli_flags.FLAGS


def _estimator(require_saved: bool) -> Estimator:
    if not FLAGS.model_dir:
        raise ConfigError("--model_dir is required.")
    saved = model_dir_files.load_config(FLAGS.model_dir)
    if require_saved and saved is None:
        raise ConfigError(
            f"--model_dir={FLAGS.model_dir} holds no {model_dir_files.CONFIG_FILE}; "
            "run `mtl train` there first."
        )
    config_path = str(Path(FLAGS.model_dir) / model_dir_files.CONFIG_FILE)
    config = cli_flags.resolve_config(saved, config_path)
    strategy = distribute.select_strategy(FLAGS.distribution_strategy)
    return Estimator(config, FLAGS.model_dir, strategy=strategy)


def _input_fn(estimator: Estimator, split: str) -> data.InputFn:
    return data.input_fn(estimator.config.data, split, estimator.config.train)


def _print_results(results: dict) -> None:
    print(f"Evaluation at step {results['global_step']} on {results['examples']} examples:")
    for task, metrics in results["tasks"].items():
        values = "  ".join(f"{name} {value:.4f}" for name, value in metrics.items())
        print(f"  {task:<12} {values}")
    print(f"  {'total loss':<12} {results['loss']:.4f}")


def train() -> None:
    estimator = _estimator(require_saved=False)
    estimator.train(_input_fn(estimator, "train"), FLAGS.max_steps)


def evaluate() -> None:
    estimator = _estimator(require_saved=True)
    _print_results(estimator.evaluate(_input_fn(estimator, "eval")))


def export() -> None:
    estimator = _estimator(require_saved=True)
    export_base = FLAGS.export_base or str(Path(FLAGS.model_dir) / "export")
    path = estimator.export(export_base, exports_to_keep=FLAGS.exports_to_keep)
    print(f"Exported {path}")


def train_and_evaluate() -> None:
    estimator = _estimator(require_saved=False)
    results = estimator.train_and_evaluate(
        _input_fn(estimator, "train"),
        _input_fn(estimator, "eval"),
        max_steps=FLAGS.max_steps,
        eval_every_steps=FLAGS.eval_every_steps,
    )
    _print_results(results)


STAGES: dict[str, Callable[[], None]] = {
    "train": train,
    "evaluate": evaluate,
    "export": export,
    "train_and_evaluate": train_and_evaluate,
}


def _usage() -> str:
    return f"usage: mtl STAGE [--flags]; STAGE is one of {', '.join(STAGES)}. See mtl --helpfull."


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise app.UsageError(_usage())
    stage, extra = argv[1], argv[2:]
    if stage not in STAGES:
        raise app.UsageError(f"Unknown stage {stage!r}. {_usage()}")
    if extra:
        raise app.UsageError(f"Unexpected arguments: {' '.join(extra)}. {_usage()}")
    try:
        STAGES[stage]()
    except UserError as error:
        logging.flush()
        print(f"mtl {stage}: error: {error}", file=sys.stderr)
        sys.exit(2)


class _HideLibraryInfo(std_logging.Filter):
    """Drops TensorFlow's and Keras' INFO lines (saver timings, ...), which drown the progress reports.

    TensorFlow logs through `absl.logging` like this package, so filtering by logger name is not enough.
    """

    _LIBRARIES = (os.sep + "tensorflow" + os.sep, os.sep + "keras" + os.sep)

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or not any(
            library in record.pathname for library in self._LIBRARIES
        )


def run() -> None:
    """Console entry point (`mtl`)."""
    tf.get_logger().setLevel("WARNING")
    logging.get_absl_handler().addFilter(_HideLibraryInfo())
    # absl prints the __main__ module's docstring as usage, and its short help lists only flags defined
    # in __main__ (none here), so usage is this module's docstring and --help shows every flag.
    sys.modules["__main__"].__doc__ = __doc__
    argv = ["--helpfull" if arg in ("-h", "--help", "-?") else arg for arg in sys.argv]
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
