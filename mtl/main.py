"""`mtl STAGE --flags`: the pipeline's stages, each a small function over the shared library.

    mtl train --model=mmoe --model_dir=runs/mmoe --max_steps=2000
    mtl evaluate --model_dir=runs/mmoe
    mtl export --model_dir=runs/mmoe --export_base=runs/mmoe/export
    mtl train_and_evaluate --model_dir=runs/mmoe
    mtl serve --model_name=mmoe --model_base_path=runs/mmoe/export
    mtl predict --server=localhost:8500 --model_name=mmoe --input=rows.jsonl
    mtl demo --model_dir=runs/demo     # train_and_evaluate, export, serve, query over REST and gRPC
    mtl data --data=csv --schema=s.json --train_files=a.csv --eval_files=b.csv [--output=DIR]

Later stages read the model config from `model_dir`. `--flagfile=FILE` reads flags from a file (named
experiments). `mtl STAGE --help` lists the stage's flags, `mtl --help` every `mtl` flag by group.
"""

from __future__ import annotations

from pipeline.quiet import import_tensorflow_quietly

import_tensorflow_quietly()  # first, so that no C++ start-up line reaches the terminal

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging as std_logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, TextIO, TypeVar  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, logging  # noqa: E402

from mtl import flags as cli_flags  # noqa: E402
from pipeline import data, distribute, experts_report  # noqa: E402
from pipeline import model_dir as model_dir_files  # noqa: E402
from pipeline.data import tabular  # noqa: E402
from pipeline.errors import ConfigError, TrainingStopped, UserError  # noqa: E402
from pipeline.estimator import Estimator  # noqa: E402
from serving import config as serving_config  # noqa: E402
from serving import rows  # noqa: E402
from serving.client import PredictClient, PredictionError, connect  # noqa: E402
from serving.errors import ServingConfigError  # noqa: E402
from serving.inference import CLASSIFY_METHOD, REGRESS_METHOD  # noqa: E402
from serving.server import ModelServer  # noqa: E402

FLAGS = cli_flags.FLAGS
T = TypeVar("T")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_POLL_SECONDS = 0.5  # how soon the main thread runs a signal's handler that another thread received
_SIGNAL_NAMES = {each.name for each in _STOP_SIGNALS}
# A stopped training exits with 128 + the signal's number, as a shell reports a process a signal ended:
# 130 after SIGINT (Ctrl-C), 143 after SIGTERM. Its checkpoint is saved; rerunning resumes.
STOPPED_EXIT_CODE = 128


def _estimator(require_saved: bool, checkpoint: str = "latest") -> Estimator:
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
    return Estimator(
        config,
        FLAGS.model_dir,
        strategy=strategy,
        warm_start_from=None if require_saved else FLAGS.warm_start_from,
        warm_start_optimizer=FLAGS.warm_start_optimizer,
        checkpoint=checkpoint,
    )


def _input_fn(estimator: Estimator, split: str) -> data.InputFn:
    return data.input_fn(estimator.config, split)


def _split_files(estimator: Estimator, split: str) -> tuple[str, ...]:
    """The files a held-out split is read from; an error when the data has no such split."""
    data_config = estimator.config.data
    if data_config.source == "synthetic":
        return ()
    files = data_config.tabular.files(split)
    if not files:
        raise ConfigError(
            f"There is no {split} split: give --{split}_files, or --split=80/10/10 when training."
        )
    return files


def _evaluate(estimator: Estimator, split: str) -> dict:
    files = _split_files(estimator, split)
    return estimator.evaluate(_input_fn(estimator, split), split, files)


def _print_results(results: dict) -> None:
    files = f" of {', '.join(results['files'])}" if results["files"] else ""
    print(
        f"Evaluation of the {results['split']} split{files} at step {results['global_step']} "
        f"on {results['examples']} examples:"
    )
    width = max(12, *map(len, results["tasks"]))
    for task, metrics in results["tasks"].items():
        values = "  ".join(
            f"{name} {value}" if isinstance(value, int) else f"{name} {value:.4f}"
            for name, value in metrics.items()
        )
        print(f"  {task:<{width}} {values}")
    print(f"  {'total loss':<{width}} {results['loss']:.4f}")


def _stoppable(estimator: Estimator, work: Callable[[], T]) -> T:
    """Runs `work` (training) so that SIGINT and SIGTERM (what Kubernetes sends before preemption) stop it
    at the end of the running group of steps, with a checkpoint, and a second signal ends the process at once.

    The work runs in a thread: Python runs signal handlers in the main thread only between bytecodes, so a
    main thread inside a long TensorFlow call would not even see the first signal until the call returned.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # noqa: BLE001  (re-raised in the main thread)
            outcome["error"] = error

    def stop(signum: int, _frame: object) -> None:
        for each in _STOP_SIGNALS:
            signal.signal(each, signal.SIG_DFL)
        name = signal.Signals(signum).name
        print(
            f"{name}: stopping after the running steps (again to stop at once).", file=sys.stderr, flush=True
        )
        estimator.request_stop(name)

    previous = {signum: signal.signal(signum, stop) for signum in _STOP_SIGNALS}
    worker = threading.Thread(target=run, name="training", daemon=True)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(timeout=STOP_POLL_SECONDS)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stopped = outcome.get("error")
    if isinstance(stopped, TrainingStopped):
        logging.flush()
        print(
            f"mtl: stopped by {stopped.reason} at step {stopped.step}; saved a checkpoint of step "
            f"{stopped.step}. Run the same command again to resume.",
            file=sys.stderr,
        )
        signum = signal.Signals[stopped.reason] if stopped.reason in _SIGNAL_NAMES else signal.SIGTERM
        sys.exit(STOPPED_EXIT_CODE + signum)
    if stopped is not None:
        raise stopped
    return outcome["value"]


def train() -> None:
    if FLAGS.export_best:
        raise ConfigError("--export_best exports the best evaluation: use it with train_and_evaluate.")
    estimator = _estimator(require_saved=False)
    max_steps = cli_flags.max_steps(estimator.config)
    _stoppable(estimator, lambda: estimator.train(_input_fn(estimator, "train"), max_steps))


def evaluate() -> None:
    if FLAGS.continuous:
        _evaluate_continuously()
        return
    estimator = _estimator(require_saved=True, checkpoint=FLAGS.checkpoint)
    if FLAGS.report_experts and not estimator.model.has_gates:
        raise ConfigError(f"--report_experts: the {estimator.config.model.architecture} model has no gates.")
    _print_results(_evaluate(estimator, FLAGS.eval_split))
    if FLAGS.report_experts:
        report = estimator.report_experts(_input_fn(estimator, FLAGS.eval_split), FLAGS.eval_split)
        print("\n".join(experts_report.summary(report)))
        print(f"Wrote {Path(FLAGS.model_dir) / experts_report.REPORT_FILE} and {experts_report.PICTURE_FILE}")


def _evaluate_continuously() -> None:
    """The evaluator beside a training job: it may start before the trainer has written anything."""
    if FLAGS["checkpoint"].present or FLAGS.report_experts:
        raise ConfigError(
            "--continuous evaluates each new checkpoint; it takes no --checkpoint or --report_experts."
        )
    if not FLAGS.model_dir:
        raise ConfigError("--model_dir is required.")
    present_at_start = model_dir_files.checkpoint_steps(FLAGS.model_dir)
    deadline = time.monotonic() + FLAGS.timeout_secs
    if model_dir_files.load_config(FLAGS.model_dir) is None:
        logging.info("Waiting for training to start in %s.", FLAGS.model_dir)
    while model_dir_files.load_config(FLAGS.model_dir) is None:
        if time.monotonic() > deadline:
            raise ConfigError(
                f"No training started in --model_dir={FLAGS.model_dir} in {FLAGS.timeout_secs:g}s."
            )
        time.sleep(1.0)
    estimator = _estimator(require_saved=True)
    split = FLAGS.eval_split
    results = estimator.evaluate_continuously(
        _input_fn(estimator, split),
        max_steps=cli_flags.max_steps(estimator.config),
        timeout_secs=FLAGS.timeout_secs,
        split=split,
        files=_split_files(estimator, split),
        present_at_start=present_at_start,
    )
    for each in results:
        _print_results(each)
        sys.stdout.flush()


def _export_base() -> str:
    return FLAGS.export_base or str(Path(FLAGS.model_dir) / "export")


def export() -> Path:
    estimator = _estimator(require_saved=True, checkpoint=FLAGS.checkpoint)
    path = estimator.export(_export_base(), exports_to_keep=FLAGS.exports_to_keep)
    print(f"Exported {path} from {estimator.checkpoint_path(FLAGS.checkpoint)}")
    return path


def train_and_evaluate() -> None:
    estimator = _estimator(require_saved=False)
    max_steps = cli_flags.max_steps(estimator.config)
    eval_files = _split_files(estimator, "eval")
    results = _stoppable(
        estimator,
        lambda: estimator.train_and_evaluate(
            _input_fn(estimator, "train"),
            _input_fn(estimator, "eval"),
            max_steps=max_steps,
            eval_every_steps=FLAGS.eval_every_steps,
            eval_files=eval_files,
            export_best=_export_base() if FLAGS.export_best else None,
            exports_to_keep=FLAGS.exports_to_keep,
        ),
    )
    if "stopped_early" in results:
        print(f"Stopped early: {results['stopped_early']}.")
    _print_results(results)


def data_stage() -> None:
    """Checks data files against their schema and describes them; with --output, writes TFRecord shards."""
    config = cli_flags.config_from_flags(with_features=False)
    if config.data.source == "synthetic":
        raise ConfigError("mtl data inspects tables: use --data=census, csv, tfrecord or parquet.")
    table = data.table(config.data)
    for split in ("train", "eval", "test"):
        if not config.data.tabular.files(split):
            continue
        for line in tabular.summarize(table, split):
            print(line)
        if FLAGS.output:
            paths = table.write_tfrecords(split, FLAGS.output, FLAGS.shards)
            print(f"Wrote {len(paths)} TFRecord shards of {split} to {FLAGS.output}")


def serve() -> None:
    _set_tensorflow_threads()
    ignored = cli_flags.ignored_serve_flags()
    if ignored:
        logging.warning(
            "%s: accepted as tensorflow_model_server's, with no effect in this server.",
            ", ".join(f"--{name}" for name in ignored),
        )
    server = ModelServer(cli_flags.model_sources(), cli_flags.server_options())
    try:
        server.start()
    except OSError as error:
        server.stop()
        raise ConfigError(str(error)) from None
    stop_signals: list[int] = []
    for signum in _STOP_SIGNALS:
        signal.signal(signum, lambda signum, _frame: stop_signals.append(signum))
    host = server.options.host
    models = ", ".join(server.manager.model_names)
    print(
        f"Serving {models}: REST http://{host}:{server.rest_port}, gRPC {host}:{server.grpc_port}. "
        "Ctrl-C stops.",
        flush=True,
    )
    # Polled rather than a blocking wait: the kernel may hand the signal to one of TensorFlow's or gRPC's
    # threads, and then Python runs the handler only when the main thread next runs Python code.
    while not stop_signals:
        time.sleep(STOP_POLL_SECONDS)
    server.stop()
    logging.info("Server stopped by %s.", signal.Signals(stop_signals[0]).name)


def _set_tensorflow_threads() -> None:
    """--tensorflow_intra_op_parallelism and --tensorflow_inter_op_parallelism (0 leaves TensorFlow's
    choice), or as in TF Serving, when neither is given, --tensorflow_session_parallelism for both; set
    before the models load: TensorFlow fixes its thread pools at its first op."""
    intra, inter = FLAGS.tensorflow_intra_op_parallelism, FLAGS.tensorflow_inter_op_parallelism
    session = FLAGS.tensorflow_session_parallelism
    if min(intra, inter, session) < 0:
        raise ConfigError(
            "--tensorflow_intra_op_parallelism, --tensorflow_inter_op_parallelism and "
            "--tensorflow_session_parallelism must be 0 or more. "
            f"Received: `{intra}`, `{inter}` and `{session}`"
        )
    if intra == inter == 0:
        intra = inter = session
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as error:  # TensorFlow already ran an op in this process
        logging.warning("Cannot set TensorFlow's thread pools: %s", error)


def predict() -> None:
    if not FLAGS.input:
        raise ConfigError("--input is required: a .jsonl or .csv file of rows.")
    if not FLAGS.model_name:
        raise ConfigError("--model_name is required.")
    if not Path(FLAGS.input).is_file():
        raise ConfigError(f"--input={FLAGS.input} does not exist.")
    client = connect(
        FLAGS.server,
        FLAGS.model_name,
        version=FLAGS.model_version,
        version_label=FLAGS.version_label,
        signature_name=FLAGS.signature_name,
        timeout_seconds=FLAGS.timeout_seconds,
    )
    with client, _output() as out:
        try:
            method = client.signature().method
            if method in (CLASSIFY_METHOD, REGRESS_METHOD):
                _predict_examples(client, method, out)
                return
            columns = rows.to_columns(rows.read_rows(FLAGS.input), client.signature().inputs, FLAGS.input)
            for batch in rows.batches(columns, FLAGS.predict_batch_size):
                predictions = client.predict(batch)
                for index in range(len(next(iter(batch.values())))):
                    row = {task: _shortest(values[index]) for task, values in sorted(predictions.items())}
                    out.write(json.dumps(row) + "\n")
        except PredictionError as error:
            raise ConfigError(f"the server answered {error.code}: {error.message}") from None


def _predict_examples(client: PredictClient, method: str, out: TextIO) -> None:
    """The rows as tf.Examples through Classify or Regress: per row `{task: [[label, score], ...]}` or
    `{task: value}`. The raw features' dtypes (of `serving_default`) type the rows' values, so a CSV's
    numbers become float features as the model parses them."""
    task = client.signature_name or "serving_default"
    columns = rows.to_columns(rows.read_rows(FLAGS.input), client.signature("").inputs, FLAGS.input)
    for batch in rows.batches(columns, FLAGS.predict_batch_size):
        examples = [
            {name: values[index] for name, values in batch.items()}
            for index in range(len(next(iter(batch.values()))))
        ]
        if method == CLASSIFY_METHOD:
            for classes in client.classify(examples):
                row = {task: [[label, _shortest(np.float32(score))] for label, score in classes]}
                out.write(json.dumps(row) + "\n")
        else:
            for value in client.regress(examples):
                out.write(json.dumps({task: _shortest(np.float32(value))}) + "\n")


def _shortest(value: np.generic | np.ndarray) -> object:
    """A float32 as its shortest round-trip decimal (0.1645074, not 0.1645074039697647); an array (a row of
    gate weights, class probabilities) as a list of those."""
    if isinstance(value, np.ndarray) and value.ndim:
        return [_shortest(item) for item in value]
    return float(str(value)) if value.dtype.kind == "f" else value.item()


def _output() -> contextlib.AbstractContextManager[TextIO]:
    if FLAGS.output:
        return open(FLAGS.output, "w")  # noqa: SIM115  (closed by the caller's with)
    return contextlib.nullcontext(sys.stdout)


def demo() -> None:
    """The main job end to end: train, evaluate, export, serve, query over REST and gRPC, stop."""
    train_and_evaluate()
    version = export()
    config = model_dir_files.load_config(FLAGS.model_dir)
    model_name = config.model.architecture
    features, labels = data.examples(config.data, "eval", count=3)
    options = dataclasses.replace(cli_flags.server_options(), grpc_port=0, rest_port=0, poll_seconds=0)
    with ModelServer(serving_config.single_model(model_name, version.parent), options) as server:
        answers = {}
        for protocol, address in (
            ("REST", f"http://127.0.0.1:{server.rest_port}"),
            ("gRPC", f"grpc://127.0.0.1:{server.grpc_port}"),
        ):
            with connect(address, model_name) as client:
                answers[protocol] = client.predict(features)
    print(f"Predictions of {model_name} version {version.name} for 3 evaluation rows:")
    tasks = {task.name: task.label for task in config.model.tasks}
    for task in sorted(answers["REST"]):
        for source, values in (("label", labels[tasks[task]]), *((p, a[task]) for p, a in answers.items())):
            print(f"  {task:<10} {source:<5} " + "  ".join(f"{value:9.4f}" for value in values))
    print("Server stopped.")


STAGES: dict[str, Callable[[], None]] = {
    "train": train,
    "evaluate": evaluate,
    "export": export,
    "train_and_evaluate": train_and_evaluate,
    "serve": serve,
    "predict": predict,
    "demo": demo,
    "data": data_stage,
}


def _usage() -> str:
    return f"usage: mtl STAGE [--flags]; STAGE is one of {', '.join(STAGES)}. See mtl --help."


def _help(argv: list[str]) -> str:
    """`mtl --help`: the module's usage and every `mtl` flag by group; `mtl STAGE --help`: that stage's."""
    stage = next((arg for arg in argv[1:] if arg in STAGES), None)
    heading = f"mtl {stage} [--flags]" if stage else (__doc__ or "").strip()
    footer = (
        "\n\n--flagfile=FILE reads flags from a file; --helpfull lists every flag, TensorFlow's included."
    )
    return heading + "\n" + cli_flags.help_text(stage) + footer


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
    except (UserError, ServingConfigError, rows.RowsError) as error:
        logging.flush()
        if FLAGS.verbose:
            traceback.print_exc()
        print(f"mtl {stage}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        logging.flush()
        print(f"mtl {stage}: interrupted.", file=sys.stderr)
        sys.exit(STOPPED_EXIT_CODE + signal.SIGINT)


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
    if any(arg in ("-h", "--help", "-?", "--helpshort") for arg in sys.argv[1:]):
        print(_help(sys.argv))
        sys.exit(0)
    if "--helpfull" in sys.argv[1:]:
        print(f"{(__doc__ or '').strip()}\n\n{cli_flags.FLAGS.get_help()}")
        sys.exit(0)
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    run()
