import dataclasses
import itertools

import numpy as np
import pytest
import tensorflow as tf

from pipeline.config import SyntheticDataConfig
from pipeline.data import in_memory, synthetic
from pipeline.errors import ConfigError
from pipeline.features import NUMERIC, Preprocessor


def _correlation(p: float, seed: int) -> float:
    config = SyntheticDataConfig(num_examples=20_000, p=p, seed=seed)
    _, labels = synthetic.generate(config, "train")
    return float(np.corrcoef(labels["y1"], labels["y2"])[0, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_correlation_rises_with_p(seed):
    """The MMoE paper's Figure 2: the tasks' label correlation grows with the weight cosine p."""
    ps = [0.0, 0.25, 0.5, 0.75, 0.9, 1.0]
    correlations = [_correlation(p, seed) for p in ps]
    assert all(a < b for a, b in itertools.pairwise(correlations)), correlations
    assert abs(correlations[0]) < 0.05
    assert correlations[-1] > 0.99


def test_task_weights_have_the_requested_cosine_and_scale():
    config = SyntheticDataConfig(p=0.6, c=0.3)
    params = synthetic.task_parameters(config)
    cosine = params.w1 @ params.w2 / (np.linalg.norm(params.w1) * np.linalg.norm(params.w2))
    assert cosine == pytest.approx(0.6)
    assert np.linalg.norm(params.w1) == pytest.approx(0.3)
    assert np.linalg.norm(params.w2) == pytest.approx(0.3)


def test_deterministic_and_splits_share_the_tasks():
    config = SyntheticDataConfig(num_examples=100, eval_examples=50, seed=7)
    x1, y1 = synthetic.generate(config, "train")
    x2, y2 = synthetic.generate(config, "train")
    np.testing.assert_array_equal(x1["inputs"], x2["inputs"])
    np.testing.assert_array_equal(y1["y1"], y2["y1"])
    eval_x, eval_y = synthetic.generate(config, "eval")
    assert eval_x["inputs"].shape == (50, 100)
    assert not np.allclose(eval_x["inputs"][:50], x1["inputs"][:50])
    other = synthetic.generate(dataclasses.replace(config, seed=8), "train")[0]
    assert not np.allclose(other["inputs"], x1["inputs"])


def test_labels_follow_the_generating_formula():
    config = SyntheticDataConfig(num_examples=500, seed=4)
    params = synthetic.task_parameters(config)
    x, labels = synthetic.generate(config, "train")
    wx = x["inputs"].astype(np.float64) @ params.w1
    expected = wx + np.sin(np.outer(wx, params.alpha) + params.beta).sum(axis=1)
    # Only the N(0, 0.01²) noise remains.
    assert np.std(labels["y1"] - expected) == pytest.approx(0.01, rel=0.1)
    mean = np.sum(np.sin(params.beta) * np.exp(-(params.alpha**2) * config.c**2 / 2))
    np.testing.assert_array_equal(labels["y1_binary"], (labels["y1"] > mean).astype(np.float32))
    assert 0.2 < labels["y1_binary"].mean() < 0.8


def test_funnel_labels_convert_only_after_a_click_with_the_documented_rates():
    config = SyntheticDataConfig(num_examples=200_000, p=0.5)
    params = synthetic.task_parameters(config)
    x, labels = synthetic.generate(config, "train")
    click, conversion = labels["click"], labels["conversion"]
    assert set(np.unique(click)) == set(np.unique(conversion)) == {0.0, 1.0}
    assert not np.any((conversion == 1) & (click == 0))  # the funnel: no conversion without a click

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    inputs = x["inputs"].astype(np.float64)
    expected_ctr = sigmoid(2 * inputs @ params.w1 / config.c - 2.5).mean()
    expected_cvr = sigmoid(2 * inputs @ params.w1 / config.c - 2.5) * sigmoid(
        2 * inputs @ params.w2 / config.c - 3
    )
    assert click.mean() == pytest.approx(expected_ctr, abs=0.005)
    assert 0.12 < click.mean() < 0.22 and 0.02 < conversion.mean() < 0.08
    assert conversion.mean() == pytest.approx(expected_cvr.mean(), abs=0.005)


def make_dataset(config, split, batch_size, shuffle_seed, input_context=None):
    """The input function's batches of synthetic data, with the raw inputs back under their name."""
    encoded = synthetic.in_memory(config, split, Preprocessor(synthetic.features(config)), ("y1", "y2"))
    batches = in_memory.batches(encoded, batch_size, shuffle_seed, split == "train", input_context)
    return batches.map(lambda inputs, labels, weights: ({"inputs": inputs[NUMERIC]}, labels))


def test_training_batches_are_shuffled_repeated_and_full():
    config = SyntheticDataConfig(num_examples=100, eval_examples=30)
    train = make_dataset(config, "train", batch_size=32, shuffle_seed=1)
    batches = list(train.take(5))  # 160 examples from 100: the data repeats
    assert all(features["inputs"].shape == (32, 100) for features, _ in batches)
    assert sorted(batches[0][1]) == ["y1", "y2"]  # the labels the tasks use, no others
    evaluation = make_dataset(config, "eval", batch_size=16, shuffle_seed=1)
    sizes = [int(f["inputs"].shape[0]) for f, _ in evaluation]
    assert sizes == [16, 14]  # one pass, last batch partial


def _row_ids(batches: list, full: np.ndarray) -> list[list[int]]:
    """Which rows of `full` each batch holds (the inputs are distinct Gaussian rows)."""
    lookup = {row.tobytes(): i for i, row in enumerate(full)}
    return [[lookup[row.tobytes()] for row in features["inputs"].numpy()] for features, _ in batches]


def test_every_training_epoch_is_a_fresh_permutation_fixed_by_the_seed():
    config = SyntheticDataConfig(num_examples=100)
    full, labels = synthetic.generate(config, "train")
    batches = list(make_dataset(config, "train", batch_size=10, shuffle_seed=3).take(20))
    ids = _row_ids(batches, full["inputs"])
    first, second = sum(ids[:10], []), sum(ids[10:], [])
    assert sorted(first) == sorted(second) == list(range(100))
    assert first != second and first != list(range(100))
    np.testing.assert_array_equal(batches[0][1]["y2"], labels["y2"][ids[0]])  # labels stay with their rows
    again = list(make_dataset(config, "train", batch_size=10, shuffle_seed=3).take(20))
    assert _row_ids(again, full["inputs"]) == ids
    other = list(make_dataset(config, "train", batch_size=10, shuffle_seed=4).take(10))
    assert _row_ids(other, full["inputs"]) != ids[:10]


def test_training_batches_are_dealt_out_to_input_pipelines():
    config = SyntheticDataConfig(num_examples=100)
    full, _ = synthetic.generate(config, "train")
    whole = _row_ids(list(make_dataset(config, "train", 10, 3).take(10)), full["inputs"])
    for pipeline_id in (0, 1):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id)
        shard = make_dataset(config, "train", 10, 3, input_context=context).take(5)
        assert _row_ids(list(shard), full["inputs"]) == whole[pipeline_id::2]


def test_a_batch_larger_than_the_data_is_refused():
    with pytest.raises(
        ConfigError, match=r"`batch_size` 200 \(per replica\) exceeds the 100 training examples"
    ):
        make_dataset(SyntheticDataConfig(num_examples=100), "train", 200, 0)


def test_sharded_per_input_pipeline():
    config = SyntheticDataConfig(num_examples=10, eval_examples=10)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
    data = make_dataset(config, "eval", 100, 0, input_context=context)
    ((features, _),) = list(data)
    full, _ = synthetic.generate(config, "eval")
    np.testing.assert_array_equal(features["inputs"], full["inputs"][1::2])
