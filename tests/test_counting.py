"""`sparselm info` counts: the study's Table 1 (hidden 2500, embedding 600, V = 10000, fanin)."""

import json

import pytest
from click.testing import CliRunner

from sparselm.cli import main
from sparselm.config import make_config
from sparselm.counting import count_from_config

# density -> gate weights + gate biases. The study's table prints 95k for 0.001 and 810k for 0.01;
# its own rule (fan-in floor(d (I + H)) per gate row) gives 100k and 830k, which we print.
TABLE_1 = {
    1.0: 81_020_000,
    0.005: 420_000,
    0.002: 180_000,
    0.0005: 50_000,
    0.001: 100_000,
    0.01: 830_000,
}


@pytest.mark.parametrize("density,expected", sorted(TABLE_1.items()))
def test_table_1(density, expected):
    counts = count_from_config(make_config("study", sparsity=density), 10000)
    assert counts["totals"]["gate_nonzeros"] == expected
    assert counts["totals"]["gate_dense_equivalent"] == 81_020_000


def test_info_cli_from_flags():
    result = CliRunner().invoke(
        main, ["info", "--preset", "study", "--sparsity", "0.0005", "--json"]
    )
    assert result.exit_code == 0, result.output
    totals = json.loads(result.output)["totals"]
    assert totals["gate_nonzeros"] == 50_000
    assert totals["embedding"] == 6_000_000 and totals["softmax"] == 25_010_000
    text = CliRunner().invoke(main, ["info", "--preset", "study", "--sparsity", "0.0005"]).output
    assert "gate non-zeros (weights + biases):         50,000" in text


def test_info_reports_unconnected_rows_and_columns():
    """The study's mask at d = 0.0005 leaves input columns feeding no gate row (counted per
    matrix); the default covering mask leaves none, and no gate row is without inputs."""
    study = count_from_config(make_config("study", sparsity=0.0005), 10000)
    by = {m["name"]: m for m in study["matrices"]}
    assert by["lstm.0.w_h"]["columns_without_outputs"] > 0
    assert by["embedding.weight"]["rows_without_inputs"] is None  # not a gate weight
    assert study["totals"]["gate_rows_without_inputs"] == 0  # fan-in >= 1 per joint row
    covered = count_from_config(make_config("study", sparsity=0.0005, mask="fanin-cover"), 10000)
    gates = [m for m in covered["matrices"] if m["rows_without_inputs"] is not None]
    assert gates and all(m["columns_without_outputs"] == 0 for m in gates)
    assert covered["totals"]["gate_nonzeros"] == study["totals"]["gate_nonzeros"]
    dense = count_from_config(make_config("small"), 10000)
    assert all(m["rows_without_inputs"] in (None, 0) for m in dense["matrices"])
    text = CliRunner().invoke(main, ["info", "--preset", "study", "--sparsity", "0.0005"]).output
    assert "cols w/o outputs" in text and "gate rows with no input at all:" in text
