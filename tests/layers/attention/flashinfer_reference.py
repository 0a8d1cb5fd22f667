"""FlashInfer's documented paged-attention contract, in float64 torch, and a CPU stand-in for the package.

``paged_attention`` computes what FlashInfer's docs say its paged kernels compute from the plan() arrays (CSR
page table, ``page_size * (pages - 1) + last_page_len`` keys per request, NHD pages, causal mask aligned
bottom-right, ``window_left`` keys left of the query, ``logits_soft_cap * tanh(sm_scale * qk / cap)``, GQA by
head groups). It reads only those arrays: what it checks is that sglkit's arrays mean the right thing.

``standin_module()`` is a ``flashinfer`` module for CPU tests (flashinfer needs CUDA): its two wrappers take
the real constructor and plan() parameter names, enforce the documented rules (NHD, int32 arrays, last page
lengths in [1, page_size], dtypes fixed at plan(), fixed batch size and caller buffers with use_cuda_graph, no
plan() inside a run) and compute ``run`` with ``paged_attention`` from the arrays as they are at run time, the
way a captured kernel reads its buffers at replay. It stands in for the external package only, as
``EagerReplayGraph`` stands in for ``torch.cuda.CUDAGraph``; sglkit's own code runs unchanged.
"""

from __future__ import annotations

import math
import types

import torch


def paged_attention(
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_last_page_len: torch.Tensor,
    causal: bool,
    sm_scale: float,
    window_left: int = -1,
    logits_soft_cap: float | None = None,
) -> torch.Tensor:
    """q: [N, Hq, D], k/v_pages: [P, page_size, Hkv, D] (NHD) -> [N, Hq, D] float64, per FlashInfer's docs."""
    page_size, num_kv_heads = k_pages.shape[1], k_pages.shape[2]
    group = q.shape[1] // num_kv_heads
    out = torch.full(q.shape, math.nan, dtype=torch.float64)
    qo, kv, idx, last = (t.cpu().tolist() for t in (qo_indptr, kv_indptr, kv_indices, kv_last_page_len))
    for b in range(len(last)):
        pages = torch.tensor(idx[kv[b] : kv[b + 1]], dtype=torch.int64)
        kv_len = page_size * (len(pages) - 1) + last[b]
        keys = k_pages.cpu()[pages].reshape(-1, num_kv_heads, k_pages.shape[3])[:kv_len].double()
        values = v_pages.cpu()[pages].reshape(-1, num_kv_heads, v_pages.shape[3])[:kv_len].double()
        keys, values = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)  # [L, Hq, D]
        rows = q.cpu()[qo[b] : qo[b + 1]].double()  # [n, Hq, D]
        qo_len = rows.shape[0]
        scores = torch.einsum("nhd,lhd->hnl", rows, keys) * sm_scale
        if logits_soft_cap:
            scores = logits_soft_cap * torch.tanh(scores / logits_soft_cap)
        qi = torch.arange(qo_len)[:, None]
        kj = torch.arange(kv_len)[None, :]
        mask = torch.ones(qo_len, kv_len, dtype=torch.bool)
        if causal:
            mask &= kj + qo_len <= kv_len + qi
        if window_left >= 0:
            mask &= kj + qo_len + window_left >= kv_len + qi
        probs = torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1)
        out[qo[b] : qo[b + 1]] = torch.einsum("hnl,lhd->nhd", probs, values)
    return out


def _check_int32(name: str, t: torch.Tensor) -> None:
    assert t.dtype == torch.int32, f"{name} must be int32, got {t.dtype}"


class _Wrapper:
    """What both stand-in wrappers share: workspace, layout, plan state, run()."""

    causal = False

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD") -> None:
        assert float_workspace_buffer.dtype == torch.uint8 and not float_workspace_buffer.any()
        assert kv_layout in ("NHD", "HND")
        self.workspace = float_workspace_buffer
        self.kv_layout = kv_layout
        self.use_cuda_graph = False
        self.plans: list[dict] = []  # the kwargs of every plan() call
        self.num_runs = 0
        self.running = False

    def _store(self, buffers: dict[str, torch.Tensor], page_size: int, options: dict) -> None:
        indptr, indices, last = buffers["kv_indptr"], buffers["kv_indices"], buffers["kv_last_page_len"]
        for name, t in buffers.items():
            _check_int32(name, t)
        assert not self.running, "plan() inside run()"
        assert int(indptr[0]) == 0 and bool((indptr[1:] >= indptr[:-1]).all())
        assert indices.shape[0] >= int(indptr[-1])
        assert bool(((last >= 1) & (last <= page_size)).all()), "1 <= kv_last_page_len <= page_size"
        assert options.get("q_data_type") is not None, "q_data_type defaults to float16: pass it"
        if self.use_cuda_graph:
            assert last.shape[0] == self.fixed_batch_size, "batch size fixed under use_cuda_graph"
            assert indices.shape[0] <= self.buffers["kv_indices"].shape[0]
            for name, t in buffers.items():
                self.buffers[name][: t.shape[0]].copy_(t)
        else:
            self.buffers = {name: t.to(self.workspace.device, copy=True) for name, t in buffers.items()}
        self.page_size = page_size
        self.options = options
        self.plans.append(dict(options))

    def run(self, q: torch.Tensor, paged_kv_cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """q: [N, Hq, D], paged_kv_cache: (k, v) NHD [P, page_size, Hkv, D] -> [N, Hq, D] in q's dtype."""
        k_pages, v_pages = paged_kv_cache
        opts = self.options
        assert self.kv_layout == "NHD" and k_pages.dim() == 4 and k_pages.shape[1] == self.page_size
        assert k_pages.shape[2:] == (opts["num_kv_heads"], opts["head_dim"]) == v_pages.shape[2:]
        assert q.shape[1:] == (opts["num_qo_heads"], opts["head_dim"])
        assert q.dtype == opts["q_data_type"] and k_pages.dtype == opts["kv_data_type"] == v_pages.dtype
        self.running = True
        try:
            b = self.buffers
            batch = b["kv_last_page_len"].shape[0] if not self.use_cuda_graph else self.fixed_batch_size
            qo_indptr = b.get("qo_indptr", torch.arange(batch + 1, dtype=torch.int32))
            assert q.shape[0] == int(qo_indptr[batch]), "one query row per planned qo row"
            out = paged_attention(
                q,
                k_pages,
                v_pages,
                qo_indptr[: batch + 1],
                b["kv_indptr"][: batch + 1],
                b["kv_indices"],
                b["kv_last_page_len"][:batch],
                causal=self.causal,
                sm_scale=opts["sm_scale"],
                window_left=opts["window_left"],
                logits_soft_cap=opts["logits_soft_cap"],
            )
        finally:
            self.running = False
        self.num_runs += 1
        return out.to(q.dtype)


class BatchPrefillWithPagedKVCacheWrapper(_Wrapper):
    """Stand-in of flashinfer's paged prefill wrapper (eager only; sglkit never graphs prefill)."""

    def plan(
        self,
        qo_indptr,
        paged_kv_indptr,
        paged_kv_indices,
        paged_kv_last_page_len,
        num_qo_heads,
        num_kv_heads,
        head_dim_qk,
        page_size,
        head_dim_vo=None,
        custom_mask=None,
        packed_custom_mask=None,
        causal=False,
        pos_encoding_mode="NONE",
        use_fp16_qk_reduction=False,
        sm_scale=None,
        window_left=-1,
        logits_soft_cap=None,
        rope_scale=None,
        rope_theta=None,
        q_data_type="float16",
        kv_data_type=None,
        non_blocking=True,
    ) -> None:
        """Record the problem; the arrays are copied to the device as the real plan() does."""
        assert custom_mask is None and packed_custom_mask is None and pos_encoding_mode == "NONE"
        _check_int32("qo_indptr", qo_indptr)
        assert int(qo_indptr[0]) == 0 and bool((qo_indptr[1:] >= qo_indptr[:-1]).all())
        assert qo_indptr.shape == paged_kv_indptr.shape
        self.causal = causal
        buffers = dict(
            qo_indptr=qo_indptr,
            kv_indptr=paged_kv_indptr,
            kv_indices=paged_kv_indices,
            kv_last_page_len=paged_kv_last_page_len,
        )
        options = dict(
            num_qo_heads=num_qo_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim_qk,
            causal=causal,
            sm_scale=sm_scale if sm_scale is not None else head_dim_qk**-0.5,
            window_left=window_left,
            logits_soft_cap=logits_soft_cap,
            q_data_type=q_data_type,
            kv_data_type=kv_data_type or q_data_type,
        )
        self._store(buffers, page_size, options)


class BatchDecodeWithPagedKVCacheWrapper(_Wrapper):
    """Stand-in of flashinfer's paged decode wrapper, with its CUDA-graph mode over caller buffers."""

    def __init__(
        self,
        float_workspace_buffer,
        kv_layout="NHD",
        use_cuda_graph=False,
        use_tensor_cores=False,
        paged_kv_indptr_buffer=None,
        paged_kv_indices_buffer=None,
        paged_kv_last_page_len_buffer=None,
    ) -> None:
        super().__init__(float_workspace_buffer, kv_layout)
        self.use_cuda_graph = use_cuda_graph
        self.use_tensor_cores = use_tensor_cores
        if use_cuda_graph:
            for t in (paged_kv_indptr_buffer, paged_kv_indices_buffer, paged_kv_last_page_len_buffer):
                assert torch.is_tensor(t), "use_cuda_graph needs the three buffers"
            self.fixed_batch_size = len(paged_kv_last_page_len_buffer)
            assert len(paged_kv_indptr_buffer) == self.fixed_batch_size + 1
            self.buffers = dict(
                kv_indptr=paged_kv_indptr_buffer,
                kv_indices=paged_kv_indices_buffer,
                kv_last_page_len=paged_kv_last_page_len_buffer,
            )

    def plan(
        self,
        indptr,
        indices,
        last_page_len,
        num_qo_heads,
        num_kv_heads,
        head_dim,
        page_size,
        pos_encoding_mode="NONE",
        window_left=-1,
        logits_soft_cap=None,
        q_data_type="float16",
        kv_data_type=None,
        data_type=None,
        sm_scale=None,
        rope_scale=None,
        rope_theta=None,
        non_blocking=True,
    ) -> None:
        """Record the problem; under use_cuda_graph copy the arrays into the fixed buffers."""
        assert pos_encoding_mode == "NONE" and data_type is None
        buffers = dict(kv_indptr=indptr, kv_indices=indices, kv_last_page_len=last_page_len)
        options = dict(
            num_qo_heads=num_qo_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            sm_scale=sm_scale if sm_scale is not None else head_dim**-0.5,
            window_left=window_left,
            logits_soft_cap=logits_soft_cap,
            q_data_type=q_data_type,
            kv_data_type=kv_data_type or q_data_type,
        )
        self._store(buffers, page_size, options)


def standin_module() -> types.ModuleType:
    """A ``flashinfer`` module with the two stand-in wrappers (install it in ``sys.modules``)."""
    module = types.ModuleType("flashinfer")
    module.BatchPrefillWithPagedKVCacheWrapper = BatchPrefillWithPagedKVCacheWrapper
    module.BatchDecodeWithPagedKVCacheWrapper = BatchDecodeWithPagedKVCacheWrapper
    module.__sglkit_standin__ = True
    return module
