import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.errors import ConfigError
from pipeline.layers import MixtureOfExperts


def _moe_with_weights(num_gates: int) -> MixtureOfExperts:
    moe = MixtureOfExperts(num_experts=2, expert_units=[1], num_gates=num_gates)
    moe.build((None, 2))
    # Expert 0 sums its inputs; expert 1 doubles the first input.
    moe.experts.kernels[0].assign(np.array([[[1.0], [1.0]], [[2.0], [0.0]]], np.float32))
    moe.gates[0].kernel.assign(np.zeros((2, 2), np.float32))  # uniform mixture
    if num_gates > 1:
        moe.gates[1].kernel.assign(np.array([[1.0, -1.0], [0.0, 0.0]], np.float32))
    return moe


def test_golden_mixtures():
    moe = _moe_with_weights(num_gates=2)
    first, second = moe(np.array([[1.0, 2.0]], np.float32))
    # Experts give 3 and 2. Gate 0: 0.5 / 0.5. Gate 1: softmax([1, -1]) = [0.8808, 0.1192].
    np.testing.assert_allclose(first, [[2.5]], rtol=1e-6)
    p = np.exp(1.0) / (np.exp(1.0) + np.exp(-1.0))
    np.testing.assert_allclose(second, [[3 * p + 2 * (1 - p)]], rtol=1e-6)


def test_fused_experts_equal_separate_dense_stacks():
    moe = MixtureOfExperts(num_experts=3, expert_units=[5, 4], num_gates=2, activation="relu")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 6)).astype(np.float32)
    moe(x)
    for variable in moe.experts.biases:
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    kernels = [np.asarray(k) for k in moe.experts.kernels]
    biases = [np.asarray(b) for b in moe.experts.biases]
    experts = []
    for e in range(3):
        h = np.maximum(x @ kernels[0][e] + biases[0][e], 0)
        experts.append(np.maximum(h @ kernels[1][e] + biases[1][e], 0))
    experts = np.stack(experts, axis=1)  # [batch, expert, units]
    np.testing.assert_allclose(moe.expert_outputs(x), experts, rtol=1e-5, atol=1e-6)
    gates = np.asarray(moe.gate_weights(x))
    for g, gate in enumerate(moe.gates):
        logits = x @ np.asarray(gate.kernel)
        expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(gates[:, g], expected, rtol=1e-5, atol=1e-7)
    for g, mixed in enumerate(moe(x)):
        np.testing.assert_allclose(mixed, np.einsum("be,beu->bu", gates[:, g], experts), rtol=1e-5, atol=1e-6)


def test_gate_weights_sum_to_one_per_gate():
    moe = MixtureOfExperts(num_experts=8, expert_units=[16], num_gates=3)
    weights = np.asarray(moe.gate_weights(np.random.default_rng(2).normal(size=(32, 10))))
    assert weights.shape == (32, 3, 8)
    np.testing.assert_allclose(weights.sum(axis=-1), np.ones((32, 3)), rtol=1e-5)


def test_default_initializer_gives_each_expert_glorot_variance():
    moe = MixtureOfExperts(num_experts=8, expert_units=[16], num_gates=1)
    moe.build((None, 100))
    kernel = np.asarray(moe.experts.kernels[0])
    limit = np.sqrt(6.0 / (100 + 16))  # Glorot-uniform of one [100, 16] expert
    assert np.abs(kernel).max() <= limit
    np.testing.assert_allclose(kernel.var(), limit**2 / 3, rtol=0.05)


def test_weight_count_of_the_papers_sizes():
    moe = MixtureOfExperts(num_experts=8, expert_units=[16], num_gates=2)
    moe.build((None, 100))
    assert moe.count_params() == 8 * (100 * 16 + 16) + 2 * (100 * 8)


@pytest.mark.parametrize(
    "kwargs, received",
    [
        ({"num_experts": 0, "expert_units": [4], "num_gates": 1}, "num_experts=0"),
        ({"num_experts": 2, "expert_units": [-4], "num_gates": 1}, "expert_units=[-4]"),
        ({"num_experts": 2, "expert_units": [4], "num_gates": 0}, "num_gates=0"),
    ],
)
def test_bad_arguments(kwargs, received):
    with pytest.raises(ConfigError) as error:
        MixtureOfExperts(**kwargs)
    assert str(error.value).endswith(f"Received: {received}")


def test_get_config_round_trip():
    moe = MixtureOfExperts(num_experts=3, expert_units=[4], num_gates=2, dropout=0.1)
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    expected = moe(x)
    clone = MixtureOfExperts.from_config(moe.get_config())
    clone(x)
    clone.set_weights(moe.get_weights())
    assert clone.get_config() == moe.get_config()
    for a, b in zip(clone(x), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_checkpoint_keys_of_the_variables_are_those_earlier_versions_wrote(tmp_path):
    """The estimator's checkpoints hold the model's variables only as the optimizer's
    `_trainable_variables/<i>`, by their position in `trainable_variables`: a layout that reordered them
    would restore existing checkpoints into the wrong variables. The experts come first, then the gates."""
    moe = MixtureOfExperts(num_experts=3, expert_units=[4, 2], num_gates=2)
    moe.build((None, 5))
    optimizer = keras.optimizers.Adam()
    optimizer.build(moe.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=moe, optimizer=optimizer)
    prefix = checkpoint.save(str(tmp_path / "ckpt"))
    keys = {
        name: tuple(shape)
        for name, shape in tf.train.list_variables(prefix)
        if name.startswith(("model/", "optimizer/_trainable_variables/"))
    }
    expected_shapes = [(3, 5, 4), (3, 4), (3, 4, 2), (3, 2), (5, 3), (5, 3)]
    assert keys == {
        f"optimizer/_trainable_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE": shape
        for i, shape in enumerate(expected_shapes)
    }

    restored = MixtureOfExperts(num_experts=3, expert_units=[4, 2], num_gates=2)
    restored.build((None, 5))
    restored_optimizer = keras.optimizers.Adam()
    restored_optimizer.build(restored.trainable_variables)
    status = tf.train.Checkpoint(model=restored, optimizer=restored_optimizer).restore(prefix)
    status.assert_existing_objects_matched()
    for a, b in zip(restored.get_weights(), moe.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
