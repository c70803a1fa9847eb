"""Every backend, and the reference, provides the whole contract of kernels/contract.py with the
parameters it lists, in order (what each operation computes is held to kernels/reference.py by
tests/test_reference_kernels.py)."""

import inspect

import pytest

from sparselm.kernels import contract, get_backend, reference


def params(fn) -> tuple[str, ...]:
    fn = getattr(fn, "py_func", fn)  # a Numba dispatcher: the Python function it compiles
    return tuple(inspect.signature(fn).parameters)


def backends():
    from sparselm.device import cuda_status

    yield get_backend("cpu")
    if cuda_status()[0]:
        yield get_backend("cuda")


@pytest.mark.parametrize("name", contract.KERNELS)
def test_each_backend_and_the_reference_take_the_listed_parameters(name):
    ops = {**contract.KERNEL_OPS, **contract.ARRAY_OPS}
    listed = ops[name].params
    assert params(getattr(reference, name)) == listed, "reference"
    for be in backends():
        assert params(getattr(be, name)) == listed, be.name


@pytest.mark.parametrize("name", contract.ARRAYS)
def test_allocation_takes_at_least_the_listed_parameters(name):
    listed = contract.ALLOC_OPS[name].params
    for be in backends():
        assert params(getattr(be, name))[: len(listed)] == listed, be.name
