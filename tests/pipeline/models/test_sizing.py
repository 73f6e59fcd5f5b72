import dataclasses

import pytest

from pipeline.errors import ConfigError
from pipeline.models.sizing import fit_to_budget, parameter_count
from tests.pipeline.models.test_models import FUNNEL, PAPER


@pytest.mark.parametrize("architecture", ["mmoe", "omoe", "ple", "shared_bottom", "single_task"])
@pytest.mark.parametrize("budget", [20_000, 60_000])
def test_every_architecture_is_sized_within_two_percent_of_the_budget(architecture, budget):
    sized = fit_to_budget(dataclasses.replace(PAPER, architecture=architecture), budget)
    assert abs(parameter_count(sized) - budget) <= 0.02 * budget
    assert sized.tower_units == PAPER.tower_units and sized.num_experts == PAPER.num_experts


def test_esmm_is_sized_within_two_percent_of_the_budget():
    sized = fit_to_budget(FUNNEL, 20_000)
    assert abs(parameter_count(sized) - 20_000) <= 0.02 * 20_000
    assert sized.bottom_units != FUNNEL.bottom_units and sized.tower_units == FUNNEL.tower_units


def test_the_widths_keep_their_proportions():
    deep = dataclasses.replace(PAPER, expert_units=(32, 16))
    sized = fit_to_budget(deep, 40_000)
    first, second = sized.expert_units
    assert second == round(16 * first / 32)


def test_a_budget_the_towers_alone_exceed_is_refused():
    with pytest.raises(ConfigError) as error:
        fit_to_budget(PAPER, 1_000)
    assert str(error.value).startswith("param_budget=1000: the closest mmoe has ")
    assert "more than 2% away" in str(error.value)
