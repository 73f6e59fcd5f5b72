"""The named experiments in experiments/ set only flags that exist, to values they accept."""

from pathlib import Path

import pytest

from mtl import flags as cli_flags

EXPERIMENTS = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.flags"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_an_experiment_sets_real_flags(path):
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, value = line.removeprefix("--").split("=", 1)
        flag = cli_flags.FLAGS[name]  # KeyError for a flag that does not exist
        flag.parse(value)  # ValueError for a value it does not accept
        flag.unparse()


def test_there_are_experiments():
    assert len(EXPERIMENTS) >= 2
