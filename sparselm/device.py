"""Where arrays live and whether a CUDA device can be used, without importing numba.cuda needlessly.

`is_device_array` is cheap for NumPy arrays (the common case) and never imports numba.cuda;
`cuda_status` does import it (and may load the driver), so it is called only when a backend
is chosen.
"""

from __future__ import annotations

import os
import sys

import numpy as np

_SIM_ARRAY_MODULE = "numba.cuda.simulator.cudadrv.devicearray"


def simulator_enabled() -> bool:
    """True when Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1 before numba's import).

    Reads numba's config once numba is imported (what numba.cuda will do), the environment
    before that.
    """
    config = sys.modules.get("numba.core.config")
    if config is not None:
        return bool(getattr(config, "ENABLE_CUDASIM", 0))
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def is_device_array(a) -> bool:
    """True for CUDA device arrays: anything with __cuda_array_interface__ (numba DeviceNDArray,
    CuPy) and the simulator's FakeCUDAArray, which has no such interface."""
    if isinstance(a, np.ndarray):
        return False
    if hasattr(a, "__cuda_array_interface__"):
        return True
    sim = sys.modules.get(_SIM_ARRAY_MODULE)  # loaded only if the simulator is in use
    return sim is not None and isinstance(a, sim.FakeCUDAArray)


def cuda_status() -> tuple[bool, str]:
    """(usable, description): whether numba.cuda can run kernels here, and on what / why not.

    The simulator counts as usable (it is what the tests run on); `real` GPUs are reported by
    name. Never raises.
    """
    try:
        from numba import cuda
    except Exception as exc:  # numba built without CUDA support, broken install, ...
        return False, f"numba.cuda cannot be imported ({exc})"
    if simulator_enabled():
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    try:
        if not cuda.is_available():
            return False, "no CUDA GPU or driver found"
        name = cuda.get_current_device().name
    except Exception as exc:
        return False, f"CUDA driver error ({exc})"
    return True, name.decode() if isinstance(name, bytes) else str(name)
