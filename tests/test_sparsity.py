"""The study's sparsity rule: the same seed draws the same patterns and initial values.

The checksums below were computed with the code as it stood before the pattern rule moved into
sparselm/sparsity.py (commit 3ffd0c0: masks drawn in csr.py, split in model.py); a change of the
random streams (the order of draws, a different split) changes them, and with them every seeded
run's results.
"""

import hashlib

import numpy as np
import pytest

from sparselm.config import make_config
from sparselm.model import LanguageModel

# (config overrides, first 16 hex digits of the sha256 of patterns, names, shapes and values)
PINNED = [
    (dict(sparsity=0.3, mask="fanin", init="uniform", dtype="float64"), "1b5bf1e89849a523"),
    (
        dict(sparsity=0.2, mask="uniform", init="glorot", dtype="float32", layers=3),
        "54625b3e97787501",
    ),
    (dict(sparsity=1.0, dtype="float64"), "aac5020e830cfba0"),
    (
        dict(sparsity=0.25, init="glorot", dtype="float32", output="factorized", hidden=9),
        "0c92cef8956c4c2e",
    ),
]


def model_digest(model: LanguageModel) -> str:
    """sha256 (16 hex digits) of every CSR pattern, every parameter's name and shape, and the
    flat parameter buffer."""
    h = hashlib.sha256()
    for name, p in model.patterns.items():
        h.update(name.encode())
        h.update(np.asarray(p.indices, np.int32).tobytes())
        h.update(np.asarray(p.indptr, np.int32).tobytes())
    for name, a in model.params.items():
        h.update(name.encode())
        h.update(str(a.shape).encode())
    h.update(model.params.flat.tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("overrides,digest", PINNED)
def test_seeded_patterns_and_values_unchanged(overrides, digest):
    cfg = make_config("small", **(dict(emb=5, hidden=6, layers=2, seed=7) | overrides))
    assert model_digest(LanguageModel(cfg, 11)) == digest
