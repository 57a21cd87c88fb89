"""bafusion.errors: which exceptions are the machine's (out of memory) and which a bug's."""

from __future__ import annotations

import pytest

from bafusion.errors import is_out_of_memory

_TORCH_CPU = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
              "tried to allocate {} bytes. Error code 12 (Cannot allocate memory)")


class OutOfMemoryError(RuntimeError):
    """torch.OutOfMemoryError (a GPU's), told by its name: no torch import here."""


@pytest.mark.parametrize("error", [
    MemoryError("Unable to allocate 275. MiB for an array with shape (3000, 4000, 3) and data type float64"),
    MemoryError("Unable to allocate 37.5 GiB for an array with shape (50000, 100000) and data type float64"),
    MemoryError(),
    RuntimeError(_TORCH_CPU.format(40000000000)),
    OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 15.77 GiB total capacity)"),
], ids=["numpy-mib", "numpy-gib", "bare", "torch-cpu-40gb", "cuda-20gib"])
def test_a_plausible_allocation_is_out_of_memory(error: BaseException) -> None:
    assert is_out_of_memory(error)


@pytest.mark.parametrize("error", [
    # numpy's own text for np.empty((10**7, 10**7)): a wrong shape, not a large image
    MemoryError("Unable to allocate 728. TiB for an array with shape (10000000, 10000000) and data type float64"),
    MemoryError("Unable to allocate 16.0 PiB for an array with shape (2147483648, 1048576) and data type float64"),
    RuntimeError(_TORCH_CPU.format(400000000000000)),  # torch.empty(10**7, 10**7)
    RuntimeError(_TORCH_CPU.format(-8)),
    RuntimeError(_TORCH_CPU.format(18446744073709551608)),  # a negative size wrapped around
    OutOfMemoryError("CUDA out of memory. Tried to allocate 3.50 TiB (GPU 0; 79.15 GiB total capacity)"),
], ids=["numpy-728tib", "numpy-16pib", "torch-400tb", "torch-negative", "torch-wrapped", "cuda-tib"])
def test_an_absurd_allocation_is_a_bug_not_out_of_memory(error: BaseException) -> None:
    """A request of a terabyte or more (or a negative one) comes from a wrong shape: it was
    said as "out of memory: downscale the shots", hiding the bug's traceback."""
    assert not is_out_of_memory(error)
