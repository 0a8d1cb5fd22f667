"""KV memory: the token-granular KV pool, its slot allocator, and the request-to-token table.

Data flow: the scheduler allocates slots (``TokenToKVPoolAllocator``) and records them per request
(``ReqToTokenPool``); attention layers write K/V into ``MHATokenToKVPool`` at those slots and read them back.

Slot 0 of the KV pool is reserved as a padding sink and is never handed out, so slots run 1..size.
Invariant when idle: ``allocator.available_size() + tree_cache.total_size() == size``.

On CPU the big buffers (K/V, the request table) are anonymous memory maps: zero-filled by the kernel page by
page on first touch, so allocating a pool is instant and the process's resident memory grows with the tokens
actually written, not with the pool's size (``zeroed_buffer``).
"""

from __future__ import annotations

import mmap

import torch

LAZY_MIN_BYTES = 1 << 20  # CPU buffers from this size up are memory-mapped (smaller ones: torch.zeros)


def zeroed_buffer(
    shape: tuple[int, ...], dtype: torch.dtype, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """A zero tensor of ``shape``; on CPU (from LAZY_MIN_BYTES up) backed by an anonymous ``mmap``, whose pages
    the kernel zero-fills on first touch, so untouched parts cost no RAM and no time to clear."""
    numel = 1
    for size in shape:
        numel *= size
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if torch.device(device).type != "cpu" or nbytes < LAZY_MIN_BYTES:
        return torch.zeros(shape, dtype=dtype, device=device)
    # The tensor keeps a reference to the map, which is unmapped when the last view of it is gone.
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=numel).view(shape)


class ReqToTokenPool:
    """Maps (request slot, position) -> KV pool slot. One row per running request."""

    def __init__(self, size: int, max_context_len: int, device: str | torch.device = "cpu") -> None:
        self.size = size
        self.max_context_len = max_context_len
        self.device = device
        # [size, max_context_len] int32: row r holds the KV slots of request slot r, in token order (int32 as the
        # attention kernels read it; slot numbers stay far below 2**31).
        self.req_to_token = zeroed_buffer((size, max_context_len), torch.int32, device)
        self.free_slots: list[int] = list(range(size))

    def available_size(self) -> int:
        """Number of free request slots."""
        return len(self.free_slots)

    def alloc(self) -> int | None:
        """Take one request slot, or None when all are in use."""
        if not self.free_slots:
            return None
        return self.free_slots.pop()

    def free(self, slot: int) -> None:
        """Return a request slot."""
        self.free_slots.append(slot)

    def write(self, slot: int, start: int, kv_indices: torch.Tensor) -> None:
        """Record ``kv_indices`` as the KV slots of positions [start, start + len) of request ``slot``."""
        self.req_to_token[slot, start : start + kv_indices.numel()] = kv_indices.to(self.device)

    def clear(self) -> None:
        """Free every request slot."""
        self.free_slots = list(range(self.size))


class TokenToKVPoolAllocator:
    """Hands out and takes back KV pool slots (1..size). Allocation never leaks: free == total when idle."""

    def __init__(self, size: int, device: str | torch.device = "cpu") -> None:
        self.size = size
        self.device = device
        self.clear()

    def clear(self) -> None:
        """Mark every slot free."""
        self.free_slots = torch.arange(1, self.size + 1, dtype=torch.int64, device=self.device)
        self._pending_free: list[torch.Tensor] = []

    def _merge_pending(self) -> None:
        if self._pending_free:
            self.free_slots = torch.cat([self.free_slots, *self._pending_free])
            self._pending_free = []

    def available_size(self) -> int:
        """Number of free slots."""
        return int(self.free_slots.numel()) + sum(int(t.numel()) for t in self._pending_free)

    def alloc(self, num_tokens: int) -> torch.Tensor | None:
        """Take ``num_tokens`` slots ([num_tokens] int64), or None if not enough are free."""
        if num_tokens > self.free_slots.numel():
            self._merge_pending()
            if num_tokens > self.free_slots.numel():
                return None
        out = self.free_slots[:num_tokens]
        self.free_slots = self.free_slots[num_tokens:]
        return out

    def free(self, indices: torch.Tensor) -> None:
        """Return slots. Freed slots are batched and merged lazily."""
        if indices.numel() == 0:
            return
        # copy=True: callers often pass a view of req_to_token, whose row is reused before the lazy merge.
        self._pending_free.append(indices.to(device=self.device, dtype=torch.int64, copy=True))


class MHATokenToKVPool:
    """Per-layer K and V buffers of shape [size + 1, num_kv_heads, head_dim] (slot 0 is a padding sink)."""

    def __init__(
        self,
        size: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
    ) -> None:
        self.size = size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = device
        shape = (size + 1, num_kv_heads, head_dim)
        self.k_buffer = [zeroed_buffer(shape, dtype, device) for _ in range(num_layers)]
        self.v_buffer = [zeroed_buffer(shape, dtype, device) for _ in range(num_layers)]

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        """KV bytes one token costs across all layers (K and V)."""
        return 2 * num_layers * num_kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()

    def total_bytes(self) -> int:
        """Bytes held by all K and V buffers."""
        return (
            2
            * self.num_layers
            * (self.size + 1)
            * self.num_kv_heads
            * self.head_dim
            * self.k_buffer[0].element_size()
        )

    def get_kv_buffer(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, v) buffers of one layer, each [size + 1, num_kv_heads, head_dim]."""
        return self.k_buffer[layer_id], self.v_buffer[layer_id]

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """loc: [T]; k, v: [T, num_kv_heads, head_dim] -> stored at those slots."""
        self.k_buffer[layer_id].index_copy_(0, loc, k.to(self.dtype))
        self.v_buffer[layer_id].index_copy_(0, loc, v.to(self.dtype))
