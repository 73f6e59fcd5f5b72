import json

import pytest

from pipeline.data.schema import load_schema, schema_from_dict
from pipeline.errors import ConfigError

BASE = {
    "columns": ["age", "job", "city", "weight", "income"],
    "csv": {"header": False},
    "features": [
        {"name": "age", "type": "numeric"},
        {"name": "job", "type": "categorical"},
        {"name": "city", "type": "hashed", "hash_buckets": 16},
    ],
    "drop": ["weight"],
    "tasks": [{"name": "rich", "column": "income", "positive_values": [">50K"]}],
}


def _error(**changes) -> str:
    with pytest.raises(ConfigError) as error:
        schema_from_dict({**BASE, **changes}).validate()
    return str(error.value)


def test_a_valid_schema_and_its_file(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(BASE))
    schema = load_schema(path)
    assert [f.type for f in schema.features] == ["numeric", "categorical", "hashed"]
    assert schema.tasks[0].task_config().loss == "log_loss"
    assert schema.numeric_columns() == {"age"}


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"features": [{"name": "age", "type": "text"}]},
            "`schema.features[0].type` must be one of numeric, categorical, hashed. "
            "Received: schema.features[0].type='text'",
        ),
        (
            {"features": [{"name": "city", "type": "hashed"}]},
            "`schema.features[0].hash_buckets` must be a positive integer. "
            "Received: schema.features[0].hash_buckets=0",
        ),
        (
            {"tasks": [{"name": "rich", "column": "income"}]},
            "`schema.tasks[0].positive_values` must list the values that make the label 1. "
            "Received: schema.tasks[0].positive_values=[]",
        ),
        (
            {"tasks": [{"name": "rich", "column": "income", "type": "regression", "loss": "log_loss"}]},
            "`tasks[rich].loss` must be one of mse, huber. Received: tasks[rich].loss='log_loss'",
        ),
        (
            {"tasks": [{"name": "old", "column": "age", "positive_values": ["90"]}]},
            "Column 'age' is a task's label column and a feature: it would leak the label.",
        ),
        (
            {"features": [*BASE["features"], {"name": "zip", "type": "categorical"}]},
            "schema.features names 'zip', not among the data's columns (age, job, city, weight, income).",
        ),
        (
            {"drop": []},
            "Columns 'weight' are neither features, task columns nor in schema.drop; say what they are.",
        ),
        (
            {"csv": {"headers": True}},
            "schema.csv has unknown field(s) headers; expected some of delimiter, header, na_values, strip.",
        ),
    ],
)
def test_validation_errors_name_the_field(changes, message):
    assert _error(**changes) == message


def test_a_schema_file_that_is_not_json(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text("{features: []}")
    with pytest.raises(ConfigError, match=r"--schema=.*schema.json is not valid JSON"):
        load_schema(path)
