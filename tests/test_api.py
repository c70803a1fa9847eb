"""The package's own namespace: `import sparselm` gives the library's entry points, lazily."""

import subprocess
import sys

import pytest

import sparselm


def test_entry_points_are_the_modules_objects():
    from sparselm import config, evaluation, model, model_io

    assert sparselm.TrainConfig is config.TrainConfig
    assert sparselm.make_config is config.make_config and sparselm.evaluate is evaluation.evaluate
    assert sparselm.load_model is model_io.load_model
    assert sparselm.LanguageModel is model.LanguageModel
    assert set(sparselm.__all__) <= set(dir(sparselm))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sparselm.nope  # noqa: B018


def test_import_loads_no_numba():
    code = "import sys, sparselm; sparselm.make_config; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
