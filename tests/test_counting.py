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
