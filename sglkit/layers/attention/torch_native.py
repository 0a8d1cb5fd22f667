"""Torch-native attention backend: SDPA over K/V gathered from the paged pool. Runs on CPU and CUDA.

Decode gathers every request's KV into one padded [B, Hkv, L_max, D] tensor and runs a single masked
SDPA call. When the whole batch shares a KV prefix (a radix-cache hit: same pool slots), that prefix is
gathered once and scored against all queries with one batched matmul, and only the per-request suffixes
are gathered per request (exact: one softmax over prefix and suffix scores). While the decode batch stays the
same from one step to the next, a ``DecodeWorkspace`` keeps each layer's padded K/V and only appends the new
token, instead of gathering every request's whole KV again each step. Extend loops over requests (prefill is
compute-bound; the loop costs little) with a bottom-right causal mask so new tokens attend to the cached prefix
and to earlier new tokens.

A layer's ``sliding_window`` narrows these masks to keys at positions > p - window (SDPA still); a ``logit_cap``
computes the scores explicitly (``capped_attention``: cap * tanh(s / cap), float32 softmax, as HF Gemma 2).
Layers without options run exactly the default SDPA paths above.

On a CPU where sglkit's kernels run (``sglkit.layers.attention.cpu_kernel_paths``: AVX-512, float32 / bfloat16
KV), layers without options skip all of that: decode reads each request's KV straight from the pool through the
request-to-token table, extend runs a flash-style causal kernel over it, and no indices, masks or workspace are
built (the SDPA metadata is built lazily, for the first layer with options, if any).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import sglkit.layers.attention.cpu_kernel_paths as cpu_kernel_paths
from sglkit.core.forward_batch import ForwardBatch
from sglkit.layers.attention.base import AttentionBackend, RadixAttention
from sglkit.layers.attention.cpu_kernel_paths import KernelDecodeMetadata as _KernelDecodeMetadata
from sglkit.layers.attention.cpu_kernel_paths import KernelExtendMetadata

SHARED_PREFIX_MIN_TOKENS = 32  # use the shared-prefix decode path from this many common KV slots


def gather_kv(buf: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """buf: [S, Hkv, D], indices: [...] -> [..., Hkv, D]. index_select on a flat view: several times faster on
    CPU than advanced indexing."""
    flat = torch.index_select(buf.view(buf.shape[0], -1), 0, indices.reshape(-1))
    return flat.view(*indices.shape, *buf.shape[1:])


def capped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scaling: float,
    logit_cap: float | None,
) -> torch.Tensor:
    """q: [..., Lq, D], k/v: [..., Lk, D] (broadcast over leading dims), mask: bool broadcastable to
    [..., Lq, Lk], True = attended -> [..., Lq, D]. Scores capped (cap * tanh(s / cap)) before the mask."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if logit_cap is not None:
        scores = torch.tanh(scores / logit_cap) * logit_cap
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


WORKSPACE_MAX_BYTES = 1 << 30  # padded decode K/V kept across steps, all layers together
WORKSPACE_GROWTH = 64  # extra positions allocated when the workspace is (re)built


@dataclass
class _DecodeMetadata:
    kv_indices: (
        torch.Tensor
    )  # [B, L_max] pool slots (0 = padding sink); suffix only when common_indices is set
    attn_mask: torch.Tensor  # [B, 1, 1, L_max] bool, True where attended (same layout as kv_indices)
    common_indices: torch.Tensor | None = None  # [P] pool slots every request of the batch starts with
    workspace: DecodeWorkspace | None = None
    max_len: int = 0
    seq_lens: torch.Tensor | None = None  # [B] KV length of each request (its query sits at seq_len - 1)
    window_masks: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)

    def window_mask(self, window: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(attn_mask [B, 1, 1, L] narrowed to keys >= seq_len - window, prefix mask [B, 1, 1, P] or None).

        Column j of ``kv_indices`` holds position P + j (P = shared-prefix length, 0 without one).
        """
        if window not in self.window_masks:
            prefix_len = 0 if self.common_indices is None else self.common_indices.numel()
            first = (self.seq_lens - window)[:, None]  # [B, 1] first attended position
            cols = torch.arange(self.kv_indices.shape[1], device=first.device) + prefix_len
            suffix = self.attn_mask & (cols[None, :] >= first)[:, None, None, :]
            prefix = None
            if prefix_len:
                prefix = (torch.arange(prefix_len, device=first.device)[None, :] >= first)[:, None, None, :]
            self.window_masks[window] = (suffix, prefix)
        return self.window_masks[window]


@dataclass
class DecodeWorkspace:
    """Padded K/V of one decode batch, per layer [B, Hkv, capacity, D], valid while the batch is unchanged.

    Rows follow the batch order; row i holds positions [0, seq_lens[i]) of request slot ``slots[i]``. A step
    with the same slots and every length one longer appends the new token; anything else rebuilds it.
    """

    slots: tuple[int, ...]
    seq_lens: list[int]
    capacity: int
    new_positions: torch.Tensor  # [B] where this step's token goes
    rebuilt: bool = True
    k: dict[int, torch.Tensor] = field(default_factory=dict)
    v: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class _ExtendMetadata:
    kv_indices: list[torch.Tensor]  # per request [seq_len]
    masks: list[torch.Tensor | None]  # per request [ext, seq_len] bool or None (plain causal)


class TorchNativeAttnBackend(AttentionBackend):
    """Reference backend built on ``torch.nn.functional.scaled_dot_product_attention`` (and, on AVX-512 CPUs,
    sglkit's own decode / extend kernels)."""

    def __init__(self, use_cpu_kernel: bool = True) -> None:
        self.use_cpu_kernel = use_cpu_kernel  # False: always the SDPA paths (tests of their metadata)
        self.workspace: DecodeWorkspace | None = None

    def _next_workspace(
        self, forward_batch: ForwardBatch, max_len: int, seq_lens: list[int]
    ) -> DecodeWorkspace | None:
        """Reuse the workspace if the batch is the previous step's, one token longer; else start a new one."""
        slots = tuple(forward_batch.req_pool_indices.tolist())
        pool = forward_batch.token_to_kv_pool
        ws = self.workspace
        if (
            ws is not None
            and ws.slots == slots
            and max_len <= ws.capacity
            and all(new == old + 1 for new, old in zip(seq_lens, ws.seq_lens))
        ):
            ws.seq_lens = list(seq_lens)
            ws.new_positions = forward_batch.seq_lens - 1
            ws.rebuilt = False
            return ws
        capacity = max_len + WORKSPACE_GROWTH
        elem = torch.tensor([], dtype=pool.dtype).element_size()
        if (
            2 * pool.num_layers * len(slots) * pool.num_kv_heads * capacity * pool.head_dim * elem
            > WORKSPACE_MAX_BYTES
        ):
            self.workspace = None
            return None
        self.workspace = DecodeWorkspace(slots, list(seq_lens), capacity, forward_batch.seq_lens - 1)
        return self.workspace

    def set_kv_buffer(
        self, layer: RadixAttention, forward_batch: ForwardBatch, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """k, v: [T, Hkv, D] -> the pool at ``out_cache_loc`` (on an AVX-512 CPU one C++ pass for K and V)."""
        if not (self.use_cpu_kernel and cpu_kernel_paths.store(layer, forward_batch, k, v)):
            super().set_kv_buffer(layer, forward_batch, k, v)

    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Build gather indices (and masks) from req_to_token once per pass (nothing for sglkit's CPU kernels)."""
        if not forward_batch.forward_mode.is_decode():
            self.workspace = None  # an extend pass may reuse request slots: start afresh next decode
        kernel_meta = cpu_kernel_paths.kernel_metadata(forward_batch) if self.use_cpu_kernel else None
        if kernel_meta is not None:
            self.workspace = None  # rebuilt by _decode_metadata if a decode layer needs SDPA
            forward_batch.attn_metadata = kernel_meta
        elif forward_batch.forward_mode.is_decode():
            forward_batch.attn_metadata = self._decode_metadata(forward_batch, forward_batch.seq_lens_cpu)
        else:
            forward_batch.attn_metadata = self._extend_metadata(
                forward_batch, forward_batch.extend_prefix_lens_cpu, forward_batch.extend_seq_lens_cpu
            )

    def _extend_metadata(
        self, forward_batch: ForwardBatch, prefix_lens: list[int], extend_lens: list[int]
    ) -> _ExtendMetadata:
        """The SDPA extend path's per-request gather indices and (bottom-right causal) masks."""
        req_to_token = forward_batch.req_to_token_pool.req_to_token
        kv_indices, masks = [], []
        pool_indices = forward_batch.req_pool_indices.tolist()
        for slot, prefix_len, ext_len in zip(pool_indices, prefix_lens, extend_lens, strict=True):
            seq_len = prefix_len + ext_len
            kv_indices.append(req_to_token[slot, :seq_len])
            if prefix_len == 0:
                masks.append(None)
            else:
                q_pos = torch.arange(prefix_len, seq_len, device=req_to_token.device)[:, None]
                k_pos = torch.arange(seq_len, device=req_to_token.device)[None, :]
                masks.append(k_pos <= q_pos)
        return _ExtendMetadata(kv_indices=kv_indices, masks=masks)

    def _decode_metadata(self, forward_batch: ForwardBatch, seq_lens_cpu: list[int]) -> _DecodeMetadata:
        """The SDPA decode path's gather indices, masks, shared prefix and workspace."""
        req_to_token = forward_batch.req_to_token_pool.req_to_token
        max_len = max(seq_lens_cpu)
        rows = req_to_token[forward_batch.req_pool_indices, :max_len]  # [B, L_max]
        positions = torch.arange(max_len, device=rows.device)
        valid = positions[None, :] < forward_batch.seq_lens[:, None]
        common = shared_prefix_len(rows, seq_lens_cpu)
        common_indices = rows[0, :common] if common else None
        rows, valid = rows[:, common:], valid[:, common:]
        meta = _DecodeMetadata(
            kv_indices=torch.where(valid, rows, torch.zeros_like(rows)),
            attn_mask=valid[:, None, None, :],
            common_indices=common_indices,
            workspace=None if common else self._next_workspace(forward_batch, max_len, seq_lens_cpu),
            max_len=max_len,
            seq_lens=forward_batch.seq_lens,
        )
        if common:
            self.workspace = None
        return meta

    def forward_extend(
        self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """q: [T, Hq, D] -> [T, Hq, D]."""
        meta = forward_batch.attn_metadata
        if isinstance(meta, KernelExtendMetadata):
            out = cpu_kernel_paths.extend(q, layer, forward_batch, meta)
            if out is not None:
                return out
            if meta.sdpa is None:
                meta.sdpa = self._extend_metadata(forward_batch, meta.prefix_lens_cpu, meta.extend_lens_cpu)
            meta = meta.sdpa
        k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        out = torch.empty_like(q)
        start = 0
        for i, ext_len in enumerate(forward_batch.extend_seq_lens_cpu):
            idx = meta.kv_indices[i]
            qi = q[start : start + ext_len].transpose(0, 1)  # [Hq, ext, D]
            ki = gather_kv(k_buf, idx).transpose(0, 1).to(q.dtype)  # [Hkv, seq, D]
            vi = gather_kv(v_buf, idx).transpose(0, 1).to(q.dtype)
            if layer.has_options:
                prefix_len = forward_batch.extend_prefix_lens_cpu[i]
                oi = _extend_with_options(qi, ki, vi, prefix_len, layer).unsqueeze(0)  # [1, Hq, ext, D]
            else:
                mask = meta.masks[i]
                oi = F.scaled_dot_product_attention(
                    qi.unsqueeze(0),
                    ki.unsqueeze(0),
                    vi.unsqueeze(0),
                    attn_mask=None if mask is None else mask[None, None],
                    is_causal=mask is None,
                    scale=layer.scaling,
                    enable_gqa=layer.num_heads != layer.num_kv_heads,
                )  # [1, Hq, ext, D]
            out[start : start + ext_len] = oi[0].transpose(0, 1)
            start += ext_len
        return out

    def forward_decode(
        self, q: torch.Tensor, layer: RadixAttention, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """q: [B, Hq, D] -> [B, Hq, D]."""
        meta = forward_batch.attn_metadata
        k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        if isinstance(meta, _KernelDecodeMetadata):
            out = cpu_kernel_paths.decode(q, layer, forward_batch)
            if out is not None:
                return out
            if meta.sdpa is None:
                meta.sdpa = self._decode_metadata(forward_batch, meta.seq_lens_cpu)
            meta = meta.sdpa
        if meta.common_indices is not None:
            return _decode_with_shared_prefix(q, k_buf, v_buf, meta, layer)
        batch, num_heads, head_dim = q.shape
        if meta.workspace is not None:
            k, v = self._workspace_kv(meta, layer, k_buf, v_buf, forward_batch.out_cache_loc)
        else:
            k = gather_kv(k_buf, meta.kv_indices).transpose(1, 2)  # [B, Hkv, L, D]
            v = gather_kv(v_buf, meta.kv_indices).transpose(1, 2)
        k, v = k.to(q.dtype), v.to(q.dtype)
        # GQA without expanding K/V: the query heads of one KV head become that head's "query positions".
        grouped_q = q.view(
            batch, layer.num_kv_heads, num_heads // layer.num_kv_heads, head_dim
        )  # [B, Hkv, G, D]
        mask = meta.attn_mask if layer.sliding_window is None else meta.window_mask(layer.sliding_window)[0]
        if layer.logit_cap is None:
            out = F.scaled_dot_product_attention(grouped_q, k, v, attn_mask=mask, scale=layer.scaling)
        else:
            out = capped_attention(grouped_q, k, v, mask, layer.scaling, layer.logit_cap)
        return out.reshape(batch, num_heads, head_dim)

    @staticmethod
    def _workspace_kv(meta: _DecodeMetadata, layer: RadixAttention, k_buf, v_buf, new_loc: torch.Tensor):
        """This layer's [B, Hkv, L_max, D] K/V from the workspace: filled when rebuilt, else one token appended."""
        ws, lid = meta.workspace, layer.layer_id
        if ws.rebuilt or lid not in ws.k:
            batch, max_len = meta.kv_indices.shape
            shape = (batch, k_buf.shape[1], ws.capacity, k_buf.shape[2])
            ws.k[lid] = torch.zeros(shape, dtype=k_buf.dtype, device=k_buf.device)
            ws.v[lid] = torch.zeros(shape, dtype=v_buf.dtype, device=v_buf.device)
            ws.k[lid][:, :, :max_len] = gather_kv(k_buf, meta.kv_indices).transpose(1, 2)
            ws.v[lid][:, :, :max_len] = gather_kv(v_buf, meta.kv_indices).transpose(1, 2)
        else:
            rows = torch.arange(ws.new_positions.numel(), device=ws.new_positions.device)
            ws.k[lid][rows, :, ws.new_positions] = gather_kv(k_buf, new_loc)  # [B, Hkv, D]
            ws.v[lid][rows, :, ws.new_positions] = gather_kv(v_buf, new_loc)
        return ws.k[lid][:, :, : meta.max_len], ws.v[lid][:, :, : meta.max_len]


def shared_prefix_len(rows: torch.Tensor, seq_lens: list[int]) -> int:
    """rows: [B, L] KV slots -> number of leading slots all B rows share (0 if below the threshold or B == 1)."""
    limit = min(seq_lens) - 1  # every request keeps at least its own last slot in the suffix
    if rows.shape[0] < 2 or limit < SHARED_PREFIX_MIN_TOKENS:
        return 0
    same = (rows[:, :limit] == rows[:1, :limit]).all(dim=0)  # [limit]
    common = int(same.to(torch.int32).cumprod(0).sum())
    return common if common >= SHARED_PREFIX_MIN_TOKENS else 0


def _decode_with_shared_prefix(
    q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, meta: _DecodeMetadata, layer: RadixAttention
) -> torch.Tensor:
    """q: [B, Hq, D] -> [B, Hq, D]; one softmax over (shared prefix, own suffix) scores."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads = layer.num_kv_heads
    group = num_heads // num_kv_heads
    prefix_len = meta.common_indices.numel()
    kc = gather_kv(k_buf, meta.common_indices).to(q.dtype)  # [P, Hkv, D]
    vc = gather_kv(v_buf, meta.common_indices).to(q.dtype)
    qg = q.view(batch, num_kv_heads, group, head_dim)
    flat_q = qg.permute(1, 0, 2, 3).reshape(num_kv_heads, batch * group, head_dim)
    prefix_scores = torch.bmm(flat_q, kc.permute(1, 2, 0))  # [Hkv, B*G, P]
    prefix_scores = prefix_scores.view(num_kv_heads, batch, group, prefix_len).permute(1, 0, 2, 3)
    ks = gather_kv(k_buf, meta.kv_indices).to(q.dtype)  # [B, S, Hkv, D]
    vs = gather_kv(v_buf, meta.kv_indices).to(q.dtype)
    suffix_scores = torch.einsum("bhgd,bshd->bhgs", qg, ks)  # [B, Hkv, G, S]
    if layer.has_options:
        probs = _shared_prefix_probs_with_options(prefix_scores, suffix_scores, meta, layer)
    else:
        suffix_scores = suffix_scores.masked_fill(~meta.attn_mask.view(batch, 1, 1, -1), float("-inf"))
        probs = torch.softmax(torch.cat([prefix_scores, suffix_scores], dim=-1) * layer.scaling, dim=-1)
    prefix_probs, suffix_probs = probs[..., :prefix_len], probs[..., prefix_len:]
    out = (
        torch.bmm(
            prefix_probs.permute(1, 0, 2, 3).reshape(num_kv_heads, batch * group, prefix_len),
            vc.permute(1, 0, 2),
        )
        .view(num_kv_heads, batch, group, head_dim)
        .permute(1, 0, 2, 3)
    )
    out = out + torch.einsum("bhgs,bshd->bhgd", suffix_probs, vs)
    return out.reshape(batch, num_heads, head_dim)


def _shared_prefix_probs_with_options(
    prefix_scores: torch.Tensor, suffix_scores: torch.Tensor, meta: _DecodeMetadata, layer: RadixAttention
) -> torch.Tensor:
    """prefix_scores: [B, Hkv, G, P], suffix_scores: [B, Hkv, G, S] (unscaled, unmasked) -> probs [B, Hkv, G, P+S]
    with the layer's logit cap and sliding window applied."""
    scores = torch.cat([prefix_scores, suffix_scores], dim=-1) * layer.scaling
    if layer.logit_cap is not None:
        scores = torch.tanh(scores / layer.logit_cap) * layer.logit_cap
    if layer.sliding_window is None:
        batch, prefix_len = prefix_scores.shape[0], prefix_scores.shape[-1]
        prefix_mask = torch.ones(batch, 1, 1, prefix_len, dtype=torch.bool, device=scores.device)
        suffix_mask = meta.attn_mask
    else:
        suffix_mask, prefix_mask = meta.window_mask(layer.sliding_window)
    mask = torch.cat([prefix_mask, suffix_mask], dim=-1)  # [B, 1, 1, P+S]
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(prefix_scores.dtype)


def _extend_with_options(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_len: int, layer: RadixAttention
) -> torch.Tensor:
    """q: [Hq, ext, D], k/v: [Hkv, seq, D] -> [Hq, ext, D]: causal attention of one request with the layer's
    sliding window and/or logit cap (query i sits at position prefix_len + i)."""
    num_heads, ext_len, head_dim = q.shape
    num_kv_heads, seq_len = k.shape[:2]
    q_pos = torch.arange(prefix_len, prefix_len + ext_len, device=q.device)[:, None]
    k_pos = torch.arange(seq_len, device=q.device)[None, :]
    mask = k_pos <= q_pos  # [ext, seq]
    if layer.sliding_window is not None:
        mask &= k_pos > q_pos - layer.sliding_window
    if layer.logit_cap is None:
        return F.scaled_dot_product_attention(
            q[None],
            k[None],
            v[None],
            attn_mask=mask,
            scale=layer.scaling,
            enable_gqa=num_heads != num_kv_heads,
        )[0]
    grouped_q = q.view(num_kv_heads, num_heads // num_kv_heads, ext_len, head_dim)  # [Hkv, G, ext, D]
    out = capped_attention(grouped_q, k[:, None], v[:, None], mask, layer.scaling, layer.logit_cap)
    return out.reshape(num_heads, ext_len, head_dim)
