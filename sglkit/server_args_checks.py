"""Validation of ServerArgs (called from ``ServerArgs.__post_init__``): every range and combination check, one
ValueError naming the first argument out of range."""

from __future__ import annotations

from typing import TYPE_CHECKING

SCHEDULE_POLICIES = ("lpm", "fcfs", "lof", "random")
DTYPES = ("auto", "float32", "float16", "bfloat16", "half", "float")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MODEL_IMPLS = ("auto", "sglkit", "transformers")  # as sglkit.models.loader.MODEL_IMPLS
LOAD_FORMATS = ("auto", "safetensors", "dummy")  # as sglkit.models.loader.LOAD_FORMATS
LOAD_BALANCE_METHODS = ("cache_aware", "shortest_queue", "round_robin")  # as sglkit.server.router's
GRAMMAR_BACKENDS = ("xgrammar", "none")  # as sglkit.constrained.GRAMMAR_BACKENDS
SAMPLING_DEFAULTS_MODES = ("model", "openai")  # as sglkit.runtime.frontend.sampling_defaults's
TOOL_CALL_PARSERS = ("qwen25", "hermes", "llama3", "mistral", "pythonic")  # as sglkit.server.function_call's
REASONING_PARSERS = ("qwen3", "deepseek-r1")  # as sglkit.server.reasoning_parser's
# as sglkit.layers.quantization.TORCHAO_CONFIGS (SGLang's weight-only --torchao-config values)
TORCHAO_CONFIGS = ("int8wo", "int4wo-32", "int4wo-64", "int4wo-128", "int4wo-256")

if TYPE_CHECKING:
    from sglkit.server_args import ServerArgs


def validate_server_args(args: ServerArgs) -> None:
    """Raise ValueError naming the first argument out of range."""
    positive = {
        "context_length": args.context_length,
        "max_total_tokens": args.max_total_tokens,
        "max_running_requests": args.max_running_requests,
        "max_prefill_tokens": args.max_prefill_tokens,
        "stream_interval": args.stream_interval,
        "decode_log_interval": args.decode_log_interval,
        "max_queued_requests": args.max_queued_requests,
        "max_inputs_per_request": args.max_inputs_per_request,
        "cuda_graph_max_bs": args.cuda_graph_max_bs,
        "torch_compile_max_bs": args.torch_compile_max_bs,
    }
    for name, value in positive.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    for name in ("req_waiting_timeout", "req_running_timeout"):
        value = getattr(args, name)
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}.")
    for name in ("http_read_timeout", "graceful_shutdown_timeout"):
        value = getattr(args, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}.")
    if (
        args.chunked_prefill_size is not None
        and args.chunked_prefill_size != -1
        and args.chunked_prefill_size < 1
    ):
        raise ValueError(f"chunked_prefill_size must be positive or -1, got {args.chunked_prefill_size!r}.")
    if args.mem_fraction_static is not None and not 0.0 < args.mem_fraction_static < 1.0:
        raise ValueError(f"mem_fraction_static must be in (0, 1), got {args.mem_fraction_static!r}.")
    if args.schedule_policy not in SCHEDULE_POLICIES:
        raise ValueError(f"schedule_policy must be one of {SCHEDULE_POLICIES}, got {args.schedule_policy!r}.")
    if args.grammar_backend not in GRAMMAR_BACKENDS:
        raise ValueError(f"grammar_backend must be one of {GRAMMAR_BACKENDS}, got {args.grammar_backend!r}.")
    if args.sampling_defaults not in SAMPLING_DEFAULTS_MODES:
        raise ValueError(
            f"sampling_defaults must be one of {SAMPLING_DEFAULTS_MODES}, got {args.sampling_defaults!r}."
        )
    if args.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {args.dtype!r}.")
    if args.model_impl not in MODEL_IMPLS:
        raise ValueError(f"model_impl must be one of {MODEL_IMPLS}, got {args.model_impl!r}.")
    if args.load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {args.load_format!r}.")
    if args.device is not None and args.device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {args.device!r}.")
    _validate_torchao_config(args)
    if not 0 <= args.port < 65536:
        raise ValueError(f"port must be in [0, 65535], got {args.port!r}.")
    _validate_parallel(args)
    _validate_data_parallel(args)
    if args.tool_call_parser is not None and args.tool_call_parser not in TOOL_CALL_PARSERS:
        raise ValueError(
            f"tool_call_parser must be one of {TOOL_CALL_PARSERS}, got {args.tool_call_parser!r}."
        )
    if args.reasoning_parser is not None and args.reasoning_parser not in REASONING_PARSERS:
        raise ValueError(
            f"reasoning_parser must be one of {REASONING_PARSERS}, got {args.reasoning_parser!r}."
        )


def _validate_torchao_config(args: ServerArgs) -> None:
    """torchao_config: '' or one of TORCHAO_CONFIGS; CPU only; sglkit's own model implementation only."""
    value = args.torchao_config
    if not value:
        return
    if value not in TORCHAO_CONFIGS:
        raise ValueError(f"torchao_config must be one of {TORCHAO_CONFIGS} (or empty), got {value!r}.")
    if args.device is not None and args.device.split(":")[0] != "cpu":
        raise ValueError(
            f"torchao_config={value!r} is implemented for CPU only (sglkit's int8 / int4 weight-only linears); "
            f"device is {args.device!r}. Drop --torchao-config on CUDA, or use --device cpu."
        )
    if args.model_impl == "transformers":
        raise ValueError(
            "torchao_config quantizes sglkit's own linear layers; use model_impl='auto' or 'sglkit'."
        )


def _validate_data_parallel(args: ServerArgs) -> None:
    """dp_size and load_balance_method, and what data parallelism refuses."""
    if not isinstance(args.dp_size, int) or isinstance(args.dp_size, bool) or args.dp_size < 1:
        raise ValueError(f"dp_size must be a positive integer, got {args.dp_size!r}.")
    if args.load_balance_method not in LOAD_BALANCE_METHODS:
        raise ValueError(
            f"load_balance_method must be one of {LOAD_BALANCE_METHODS}, got {args.load_balance_method!r}."
        )
    if args.dp_size > 1 and getattr(args, "nnodes", 1) > 1:
        raise ValueError(
            "dp_size > 1 is not supported with nnodes > 1: data-parallel replicas run on node 0 only. "
            "Use dp_size=1 for a multi-node launch, or one node per server."
        )


def _validate_parallel(args: ServerArgs) -> None:
    """tp_size / nnodes / node_rank / dist_init_addr / dist_timeout, and what tensor parallelism refuses."""
    for name in ("tp_size", "nnodes"):
        value = getattr(args, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if args.tp_size % args.nnodes:
        raise ValueError(
            f"tp_size ({args.tp_size}) must be divisible by nnodes ({args.nnodes}): each node runs "
            "tp_size / nnodes ranks."
        )
    if not isinstance(args.node_rank, int) or not 0 <= args.node_rank < args.nnodes:
        raise ValueError(f"node_rank must be in [0, nnodes={args.nnodes}), got {args.node_rank!r}.")
    if args.nnodes > 1 and not args.dist_init_addr:
        raise ValueError("dist_init_addr (host:port of node 0) is required when nnodes > 1.")
    if args.dist_init_addr is not None:
        host, _, port = args.dist_init_addr.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"dist_init_addr must be 'host:port', got {args.dist_init_addr!r}.")
    if args.dist_timeout is not None and not args.dist_timeout > 0:
        raise ValueError(f"dist_timeout must be positive (seconds), got {args.dist_timeout!r}.")
    if not isinstance(args.base_gpu_id, int) or args.base_gpu_id < 0:
        raise ValueError(f"base_gpu_id must be a non-negative integer, got {args.base_gpu_id!r}.")
    if args.tp_size > 1 and args.is_embedding:
        raise ValueError(
            "tp_size > 1 is not supported for embedding models (is_embedding=True); use tp_size=1."
        )
    if args.tp_size > 1 and args.model_impl == "transformers":
        raise ValueError(
            "tp_size > 1 needs sglkit's own model implementation: the transformers fallback "
            "(model_impl='transformers') runs unsplit HF layers. Use model_impl='auto' or 'sglkit'."
        )
