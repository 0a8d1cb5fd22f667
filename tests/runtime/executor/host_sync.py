"""Test helper: ``no_host_sync()`` raises ``HostSyncError`` on anything that would make the host wait for a GPU.

``torch.cuda.set_sync_debug_mode`` exists only on CUDA; on CPU a ``TorchDispatchMode`` sees every aten op and
refuses the data-dependent ones (``.item()`` / ``int(t)`` / ``bool(t)`` -> ``_local_scalar_dense``, ``nonzero``,
boolean-mask indexing, ``unique``, ``masked_select``, ``repeat_interleave`` without an output size, device ->
host copies), and the Python methods that read tensor data without an aten op (``.tolist()``, ``.numpy()``,
``.cpu()``) are patched to raise. Triton kernel launches are GPU work queued without a sync; under the CPU
interpreter they compute on the host, so the check pauses for the duration of each interpreted launch.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

SYNC_OPS = {
    aten._local_scalar_dense,
    aten.item,
    aten.nonzero,
    aten.masked_select,
    aten.unique_consecutive,
    aten._unique,
    aten._unique2,
    aten.unique_dim,
    aten.equal,
    aten.is_nonzero,
}
PATCHED_METHODS = ("tolist", "numpy", "cpu", "__array__")


class HostSyncError(AssertionError):
    """An op that would synchronise the host with the device ran inside ``no_host_sync()``."""


class _Detector(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.paused:
            _check(func, args, kwargs)
        return func(*args, **kwargs)


def _check(func, args, kwargs) -> None:
    packet = func.overloadpacket
    if packet in SYNC_OPS:
        raise HostSyncError(f"host sync: {func}")
    if packet is aten.index and any(
        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else [])
    ):
        raise HostSyncError(f"host sync: boolean-mask indexing ({func})")
    if (
        packet is aten.repeat_interleave
        and func is aten.repeat_interleave.Tensor
        and "output_size" not in kwargs
    ):
        raise HostSyncError(f"host sync: {func} without output_size")
    if packet in (aten._to_copy, aten.copy_):
        src = args[1] if packet is aten.copy_ else args[0]
        dst_device = args[0].device if packet is aten.copy_ else kwargs.get("device")
        if isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst_device == torch.device("cpu"):
            raise HostSyncError(f"host sync: device -> host copy ({func})")


@contextlib.contextmanager
def no_host_sync():
    """Raise ``HostSyncError`` on any host sync inside the block (see the module docstring)."""
    detector = _Detector()
    originals = {name: getattr(torch.Tensor, name) for name in PATCHED_METHODS}

    def refuse(name):
        def method(self, *args, **kwargs):
            if detector.paused:
                return originals[name](self, *args, **kwargs)
            raise HostSyncError(f"host sync: Tensor.{name}()")

        return method

    launch = None
    if os.environ.get("TRITON_INTERPRET") == "1":
        from triton.runtime.interpreter import InterpretedFunction

        launch = InterpretedFunction.run

        def paused_launch(self, *args, **kwargs):
            detector.paused += 1
            try:
                return launch(self, *args, **kwargs)
            finally:
                detector.paused -= 1

        InterpretedFunction.run = paused_launch
    for name in PATCHED_METHODS:
        setattr(torch.Tensor, name, refuse(name))
    sync_mode = None
    if torch.cuda.is_available():
        sync_mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
    try:
        with detector:
            yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
        if launch is not None:
            InterpretedFunction.run = launch
        if sync_mode is not None:
            torch.cuda.set_sync_debug_mode(sync_mode)
