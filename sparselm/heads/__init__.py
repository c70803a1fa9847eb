"""Output heads: the layer from the top LSTM output to the loss, behind one contract (base.py).

    softmax     the dense softmax, logits = h W_o^T + b_o            (heads/softmax.py)
    factorized  the study's factorised layer over an S x S grid of h  (heads/factorized.py)

`--output NAME` selects HEADS[NAME]. To add a head: write heads/NAME.py with an OutputHead
subclass (its shapes, forward, backward, logits), add it to HEADS below (and NAME to config's
"output" choices), and test it against a plain NumPy reference and finite differences, as
tests/test_output.py does for these two.
"""

from __future__ import annotations

from .base import OutputHead
from .factorized import FactorizedHead, grid_side
from .softmax import SoftmaxHead

HEADS: dict[str, type[OutputHead]] = {cls.name: cls for cls in (SoftmaxHead, FactorizedHead)}


def head_class(name: str) -> type[OutputHead]:
    """The head registered as `name`; ValueError naming the choices otherwise."""
    try:
        return HEADS[name]
    except KeyError:
        raise ValueError(f"unknown output head {name!r}; expected one of {sorted(HEADS)}") from None


__all__ = ["HEADS", "FactorizedHead", "OutputHead", "SoftmaxHead", "grid_side", "head_class"]
