"""Plain NumPy/SciPy references for every fast path.

Slow, obvious and exact: every kernel and every model piece is tested against a function here,
and every backward pass against central finite differences.
"""

import numpy as np
