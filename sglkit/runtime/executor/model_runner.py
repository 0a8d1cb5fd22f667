"""Model runner: owns the model, the KV pools, the attention backend and the sampler (scheduler -> here -> model).

Sits between the scheduler (which builds batches of Req) and the model (sglkit.models): ``forward`` runs one
ForwardBatch to logits and ``sample`` turns logits into next tokens. It sizes the KV pool from
``max_total_tokens`` or ``mem_fraction_static`` and swaps weights for /update_weights. The embedding runner
(``embedding_runner.py``) is the same class with other sizing rules and ``embed`` instead of logits.
"""

from __future__ import annotations

import logging
import time

import psutil
import torch

from sglkit.cache.memory_pool import MHATokenToKVPool, ReqToTokenPool, TokenToKVPoolAllocator
from sglkit.core.forward_batch import ForwardBatch
from sglkit.layers.attention import create_attention_backend, resolve_attention_backend
from sglkit.layers.linear import pack_linear_weights
from sglkit.models.loader import load_checkpoint, load_config, load_model
from sglkit.parallel import all_reduce_min_int
from sglkit.runtime.executor.cuda_graph_buckets import default_cuda_graph_max_bs
from sglkit.runtime.executor.memory_budget import (
    MemoryPlan,
    ModelShape,
    default_chunked_prefill_size,
    plan_kv_pool,
)
from sglkit.runtime.executor.sampler import Sampler, SamplingBatchInfo, make_generator
from sglkit.server_args import ServerArgs

logger = logging.getLogger(__name__)

GB = 1 << 30
CPU_DEFAULT_MEM_FRACTION = 0.1  # share of available RAM for the KV pool on CPU
CPU_MAX_AUTO_TOKENS = 1 << 18  # cap of an automatically sized CPU pool (a bigger one only costs RAM)
# Default cap of the running batch on CPU; with the context length it also sizes the CPU KV pool.
CPU_DEFAULT_MAX_RUNNING_REQUESTS = 256
MAX_REQ_TO_TOKEN_BYTES = 512 << 20


def available_memory_gb(device: str) -> float:
    """Free device memory (CPU: available RAM) in GB; on CUDA after returning the allocator's cached blocks."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info()
        return free / GB
    return psutil.virtual_memory().available / GB


class ModelRunner:
    """Loads the model and runs forward passes over the paged KV pool.

    Construction order (one path for generation and embedding models): load weights -> ``_after_load`` hook ->
    context length -> pool size and request slots (overridable ``_resolve_*``) -> KV pools (skipped for models
    without a KV cache) -> attention backend.
    """

    def __init__(self, server_args: ServerArgs) -> None:
        self.server_args = server_args
        self.device = server_args.resolved_device()
        self.model_path = server_args.model_path
        chunk = server_args.chunked_prefill_size
        if chunk is None:
            cuda = self.device.startswith("cuda")
            gpu_gb = (
                torch.cuda.get_device_properties(torch.device(self.device)).total_memory / GB
                if cuda
                else None
            )
            chunk = default_chunked_prefill_size(self.device, gpu_gb)
        # Tokens per prefill pass (None: prompts are never split); the scheduler and the memory budget read it.
        self.chunked_prefill_size: int | None = None if chunk == -1 else chunk
        torch.manual_seed(server_args.random_seed)

        free_before_gb = available_memory_gb(self.device)
        self.free_before_load_bytes = int(free_before_gb * GB)  # the CUDA budget's baseline
        logger.info(f"Load weight begin. avail mem={free_before_gb:.2f} GB")
        self.model, self.model_config = load_model(
            self.model_path,
            dtype=server_args.dtype,
            device=self.device,
            is_embedding=server_args.is_embedding,
            model_impl=server_args.model_impl,
            load_format=server_args.load_format,
            seed=server_args.random_seed,
            torchao_config=server_args.torchao_config,
        )
        self.dtype = next(self.model.parameters()).dtype
        pack_linear_weights(self.model)
        logger.info(
            f"Load weight end. type={type(self.model).__name__}, dtype={self.dtype}, "
            f"avail mem={available_memory_gb(self.device):.2f} GB"
        )
        self._after_load()
        self.vocab_size = self.model_config.vocab_size
        self.uses_kv_cache = bool(getattr(self.model, "uses_kv_cache", True))
        self.context_len = self._resolve_context_len()
        self.max_total_num_tokens = self._resolve_pool_size()
        self.max_running_requests = self._resolve_max_running_requests()
        self.req_to_token_pool = self.token_to_kv_pool_allocator = self.token_to_kv_pool = None
        if self.uses_kv_cache:
            self._init_memory_pools()
        logger.info(f"Memory pool end. avail mem={available_memory_gb(self.device):.2f} GB")
        self.attn_backend = create_attention_backend(server_args.attention_backend, self.device)
        self.sampler = Sampler()
        self.generator = make_generator(server_args.random_seed, self.device)  # for rows without a seed
        self.cuda_graph_runner = None  # decode graphs (cuda_graph_runner.py), when cuda_graphs_wanted()
        if self.cuda_graphs_wanted():
            self.init_cuda_graphs()
        self.compiled_decode = None  # --enable-torch-compile (compiled_decode.py)
        if server_args.enable_torch_compile:
            self.init_torch_compile()

    # ----- sizing (hooks the embedding runner overrides) -----
    def _after_load(self) -> None:
        """Adjust the freshly loaded model before sizing (nothing for generation models)."""

    def _resolve_context_len(self) -> int:
        """--context-length, capped by the model's max_position_embeddings (a sliding window does not cap it)."""
        model_len = self.model_config.context_len
        context_len = self.server_args.context_length or model_len
        if context_len > model_len:
            logger.warning(
                f"context_length={context_len} is longer than the model's max_position_embeddings={model_len}; "
                f"using {model_len}."
            )
            context_len = model_len
        return int(context_len)

    def _resolve_pool_size(self) -> int:
        """KV pool size in tokens: --max-total-tokens, else CUDA: SGLang's budget (``_plan_cuda_pool``); CPU: what
        the model can use (context length x max running requests), capped by ``mem_fraction_static`` of the
        available RAM and by CPU_MAX_AUTO_TOKENS (the CPU pool is committed page by page as it fills)."""
        args, cfg = self.server_args, self.model_config
        if args.max_total_tokens:
            return args.max_total_tokens
        per_token = MHATokenToKVPool.bytes_per_token(
            cfg.num_hidden_layers, self.num_kv_heads_per_rank, cfg.head_dim, self.dtype
        )
        if self.device.startswith("cuda"):
            num_tokens = self._plan_cuda_pool(per_token).num_tokens
        else:
            fraction = args.mem_fraction_static or CPU_DEFAULT_MEM_FRACTION
            usable = self.context_len * (args.max_running_requests or CPU_DEFAULT_MAX_RUNNING_REQUESTS)
            ram_share = int(psutil.virtual_memory().available * fraction // per_token)
            num_tokens = min(usable, ram_share, CPU_MAX_AUTO_TOKENS)
        num_tokens = all_reduce_min_int(num_tokens)  # tensor parallel: every rank's pool holds as many
        if num_tokens < self.context_len // 4:
            raise RuntimeError(
                f"Not enough memory for the KV cache: room for {num_tokens} tokens. "
                "Raise --mem-fraction-static or set --max-total-tokens."
            )
        return num_tokens

    def _plan_cuda_pool(self, per_token: int) -> MemoryPlan:
        """The KV pool by SGLang's rule: free memory after the weights minus the larger of the slack left by
        ``mem_fraction_static`` (default by GPU memory) and an estimate of the runtime's buffers."""
        args = self.server_args
        torch.cuda.empty_cache()
        free_after, total = torch.cuda.mem_get_info()
        chunk = (
            self.chunked_prefill_size if self.chunked_prefill_size is not None else args.max_prefill_tokens
        )
        max_bs = args.cuda_graph_max_bs or default_cuda_graph_max_bs(total / GB, args.max_running_requests)
        graphs = not (args.disable_cuda_graph or args.is_embedding) and args.tp_size == 1
        backend = resolve_attention_backend(args.attention_backend, self.device)
        graphs = graphs and backend in ("triton", "flashinfer")
        elem = torch.tensor([], dtype=self.dtype).element_size()
        plan = plan_kv_pool(
            ModelShape.from_config(self.model_config, elem, args.tp_size, self.num_kv_heads_per_rank),
            total_bytes=total,
            free_before_load=self.free_before_load_bytes,
            free_after_load=free_after,
            kv_bytes_per_token=per_token,
            context_len=self.context_len,
            max_bs=max_bs,
            chunk_tokens=chunk,
            cuda_graphs=graphs,
            mem_fraction_static=args.mem_fraction_static,
            tp_size=args.tp_size,
            min_tokens=self.context_len // 4,
        )
        logger.info(f"Memory budget. {plan.summary()}")
        if plan.estimate_binds:
            logger.warning(
                f"--mem-fraction-static={plan.mem_fraction_static} leaves less than the runtime needs after the "
                "KV pool; the pool was sized by the runtime estimate instead."
            )
        return plan

    def _resolve_max_running_requests(self) -> int:
        """--max-running-requests, else a device default bounded by the pool; capped by the request table size."""
        args = self.server_args
        default_cap = 4096 if self.device.startswith("cuda") else CPU_DEFAULT_MAX_RUNNING_REQUESTS
        value = args.max_running_requests or min(default_cap, max(1, self.max_total_num_tokens // 2))
        table_cap = max(1, MAX_REQ_TO_TOKEN_BYTES // (8 * (self.context_len + 1)))
        return int(min(value, table_cap))

    def _init_memory_pools(self) -> None:
        """Request-to-token table, slot allocator and the K/V buffers of every layer."""
        cfg = self.model_config
        self.req_to_token_pool = ReqToTokenPool(self.max_running_requests, self.context_len + 1, self.device)
        self.token_to_kv_pool_allocator = TokenToKVPoolAllocator(self.max_total_num_tokens, self.device)
        self.token_to_kv_pool = MHATokenToKVPool(
            self.max_total_num_tokens,
            cfg.num_hidden_layers,
            self.num_kv_heads_per_rank,
            cfg.head_dim,
            self.dtype,
            self.device,
        )
        size_gb = self.token_to_kv_pool.total_bytes() / 2 / GB
        logger.info(f"KV Cache is allocated. K size: {size_gb:.2f} GB, V size: {size_gb:.2f} GB.")

    @property
    def num_kv_heads_per_rank(self) -> int:
        """KV heads this rank's pool holds: the built model's (its QKV projection's share), else the config's."""
        return int(getattr(self.model, "num_kv_heads_per_rank", self.model_config.num_key_value_heads))

    @property
    def max_input_len(self) -> int:
        """Longest input the scheduler may accept: the context length."""
        return self.context_len

    # ----- CUDA graphs -----
    def cuda_graphs_wanted(self) -> bool:
        """Decode graphs are captured on CUDA, with a backend that supports them (triton, flashinfer), one rank, a
        KV cache, unless --disable-cuda-graph."""
        args = self.server_args
        return (
            not getattr(args, "disable_cuda_graph", False)
            and self.device.startswith("cuda")
            and self.uses_kv_cache
            and not args.is_embedding
            and args.tp_size == 1
            and self.attn_backend.supports_cuda_graph
        )

    def resolve_cuda_graph_max_bs(self) -> int:
        """--cuda-graph-max-bs, else SGLang's default for this GPU's memory; capped by max_running_requests."""
        from sglkit.runtime.executor.cuda_graph_buckets import default_cuda_graph_max_bs

        max_bs = getattr(self.server_args, "cuda_graph_max_bs", None)
        if max_bs is None:
            gpu_gb = None
            if self.device.startswith("cuda"):
                gpu_gb = torch.cuda.get_device_properties(torch.device(self.device)).total_memory / GB
            max_bs = default_cuda_graph_max_bs(gpu_gb)
        return max(1, min(max_bs, self.max_running_requests))

    def init_cuda_graphs(
        self, graph_factory=None, max_bs: int | None = None, show_progress: bool = True
    ) -> None:
        """Capture the decode graphs (``graph_factory``: tests inject a CPU stand-in for torch.cuda.CUDAGraph)."""
        from sglkit.runtime.executor.cuda_graph_runner import CudaGraphRunner

        max_bs = max_bs or self.resolve_cuda_graph_max_bs()
        self.cuda_graph_runner = CudaGraphRunner(self, max_bs, graph_factory, show_progress)

    def init_torch_compile(self) -> None:
        """Compile the decode forward (--enable-torch-compile): CPU generation models with a KV cache only."""
        if self.device.startswith("cuda"):
            raise ValueError(
                "--enable-torch-compile is implemented for CPU decode only; on CUDA, decode runs as CUDA graphs."
            )
        if not self.uses_kv_cache or self.server_args.is_embedding:
            logger.info("--enable-torch-compile: nothing to compile for a model without decode steps.")
            return
        if self.cpu_decode_stack_runs():
            logger.info(
                "--enable-torch-compile: decode passes run through sglkit's CPU decode stack (every layer in one "
                "C++ call, faster than the compiled forward), so nothing is compiled; SGLKIT_CPU_DECODE_STACK=0 "
                "compiles instead."
            )
            return
        from sglkit.runtime.executor.compiled_decode import CompiledDecodeRunner

        max_bs = min(self.server_args.torch_compile_max_bs, self.max_running_requests)
        self.compiled_decode = CompiledDecodeRunner(self, max_bs)

    def cpu_decode_stack_runs(self) -> bool:
        """Whether this runner's decode passes go through the model's CPU decode stack
        (``sglkit.models.cpu_decode_stack``): the torch_native backend on sglkit's CPU kernels, a model it takes."""
        stack = getattr(getattr(self.model, "model", None), "cpu_decode_stack", None)
        if stack is None or not getattr(self.attn_backend, "use_cpu_kernel", False):
            return False
        return stack.check(self.token_to_kv_pool, self.dtype) is None

    # ----- compute -----
    @torch.inference_mode()
    def forward(self, forward_batch: ForwardBatch) -> torch.Tensor:
        """Run the model on one batch; returns float32 logits [num_logit_rows, vocab]. A decode batch a captured
        graph covers replays it (padded; logits of the real rows); one the compiled forward covers runs it."""
        graphs = self.cuda_graph_runner
        if graphs is not None and graphs.can_run(forward_batch):
            return graphs.replay(forward_batch)
        self.attn_backend.init_forward_metadata(forward_batch)
        compiled = self.compiled_decode
        if compiled is not None and compiled.can_run(forward_batch):
            return compiled.forward(forward_batch)
        hidden = self.model(forward_batch.input_ids, forward_batch.positions, forward_batch)  # [T, H]
        if forward_batch.logits_indices.numel() == 0:
            return torch.empty((0, self.vocab_size), dtype=torch.float32, device=hidden.device)
        return self.model.compute_logits(hidden[forward_batch.logits_indices])

    def sample(self, logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        """logits: [B, V] float32 -> next token ids [B] int64 (unseeded rows draw from the runner's generator)."""
        return self.sampler.sample(logits, info, self.generator)

    # ----- weights -----
    def _load_weights_from(self, model_path: str) -> None:
        with torch.inference_mode():
            load_checkpoint(self.model, model_path)
            pack_linear_weights(self.model)

    def update_weights(self, model_path: str) -> tuple[bool, str]:
        """Load same-shaped weights from ``model_path``; on any failure restore the current weights."""
        logger.info(f"Update weights begin. avail mem={available_memory_gb(self.device):.2f} GB")
        start = time.perf_counter()
        try:
            new_arch = list(getattr(load_config(model_path), "architectures", None) or [])
            old_arch = list(self.model_config.architectures)
            if old_arch and new_arch and old_arch != new_arch:
                raise ValueError(f"architecture {new_arch} differs from the served {old_arch}")
            self._load_weights_from(model_path)
        except Exception as e:  # noqa: BLE001 - every failure is reported and rolled back
            reason = str(e).rstrip(".")
            message = f"Failed to update weights: {reason}.\nRolling back to original weights."
            logger.error(message)
            self._load_weights_from(self.model_path)
            return False, message
        self.model_path = model_path
        logger.info(f"Update weights end. Time elapsed: {time.perf_counter() - start:.2f} s")
        return True, "Succeeded to update model weights."
