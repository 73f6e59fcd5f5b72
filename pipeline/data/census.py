"""Census-Income (KDD) from the UCI files, with the MMoE paper's two task groups (section 6.3).

Group 1: income above 50K and never married. Group 2: a college degree (associate or higher; "Some college
but no degree" is not one) and never married. The group's label columns are not features, and neither is
`instance_weight` (a sampling weight; with `instance_weights` it weights every task's loss and metrics, as the
census' own documentation asks of estimates about the population); in group 2 income is an ordinary input.
Missing values are `?`,
which the vocabularies keep as a category.

Splits: with `census-income.data.gz` (the UCI training file) in the data directory, the model trains on it and
the test file's odd lines are the eval split, its even lines the test split (the paper's 1:1 split). With only
`census-income.test.gz`, as in this repository, the test file's lines 1-8 of every 10 train, the 9th is eval
and the 10th is test (79,810 / 9,976 / 9,976 rows).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import TabularDataConfig
from pipeline.data.schema import CsvFormat, Schema, SchemaFeature, SchemaTask, schema_to_dict
from pipeline.errors import ConfigError

TRAIN_FILE = "census-income.data.gz"
TEST_FILE = "census-income.test.gz"
GROUPS = (1, 2)

COLUMNS = (
    "age",
    "class_worker",
    "det_ind_code",
    "det_occ_code",
    "education",
    "wage_per_hour",
    "hs_college",
    "marital_stat",
    "major_ind_code",
    "major_occ_code",
    "race",
    "hisp_origin",
    "sex",
    "union_member",
    "unemp_reason",
    "full_or_part_emp",
    "capital_gains",
    "capital_losses",
    "stock_dividends",
    "tax_filer_stat",
    "region_prev_res",
    "state_prev_res",
    "det_hh_fam_stat",
    "det_hh_summ",
    "instance_weight",
    "mig_chg_msa",
    "mig_chg_reg",
    "mig_move_reg",
    "mig_same",
    "mig_prev_sunbelt",
    "num_emp",
    "fam_under_18",
    "country_father",
    "country_mother",
    "country_self",
    "citizenship",
    "own_or_self",
    "vet_question",
    "vet_benefits",
    "weeks_worked",
    "year",
    "income_50k",
)  # fmt: skip  (the UCI order, SOURCE.md's names)
NUMERIC = (
    "age",
    "wage_per_hour",
    "capital_gains",
    "capital_losses",
    "stock_dividends",
    "num_emp",
    "weeks_worked",
)
COLLEGE_DEGREES = (
    "Associates degree-occup /vocational",
    "Associates degree-academic program",
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
)
MARITAL = SchemaTask("marital", "marital_stat", "binary", "log_loss", positive_values=("Never married",))
TASKS = {
    1: (SchemaTask("income", "income_50k", "binary", "log_loss", positive_values=("50000+.",)), MARITAL),
    2: (SchemaTask("education", "education", "binary", "log_loss", positive_values=COLLEGE_DEGREES), MARITAL),
}


def schema(group: int, instance_weights: bool = False) -> Schema:
    if group not in GROUPS:
        raise ConfigError(f"`census_group` must be 1 or 2. Received: census_group={group}")
    tasks = TASKS[group]
    label_columns = {task.column for task in tasks}
    features = tuple(
        SchemaFeature(name, "numeric" if name in NUMERIC else "categorical")
        for name in COLUMNS
        if name not in label_columns and name != "instance_weight"
    )
    return Schema(
        columns=COLUMNS,
        csv=CsvFormat(header=False, delimiter=",", strip=True, na_values=("?",)),
        features=features,
        drop=() if instance_weights else ("instance_weight",),
        weight_column="instance_weight" if instance_weights else "",
        tasks=tasks,
    ).validate()


def data_config(
    data_dir: str | Path, group: int, skip_bad_rows: bool = False, instance_weights: bool = False
) -> TabularDataConfig:
    """The census files of `data_dir` with the group's schema and split; paths are absolute."""
    data_dir = Path(data_dir).resolve()
    test = data_dir / TEST_FILE
    if not test.is_file():
        raise ConfigError(
            f"--data_dir={data_dir} has no {TEST_FILE} (the UCI Census-Income (KDD) test file)."
        )
    train = data_dir / TRAIN_FILE
    full = train.is_file()
    return TabularDataConfig(
        format="csv",
        train_files=(str(train if full else test),),
        eval_files=(str(test),) if full else (),
        schema=schema_to_dict(schema(group, instance_weights)),
        split="halves" if full else "80/10/10",
        skip_bad_rows=skip_bad_rows,
    )
