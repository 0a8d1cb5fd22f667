"""ServerArgs: every runtime and server knob in one place — defaults, argparse flags, validation.

Used by ``python -m sglkit.launch_server`` (flags) and ``sglkit.Engine(**kwargs)`` (keywords); names follow SGLang.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
from dataclasses import dataclass, field
from typing import Any

from sglkit.server_args_checks import (
    DTYPES,
    GRAMMAR_BACKENDS,
    LOAD_BALANCE_METHODS,
    LOAD_FORMATS,
    LOG_LEVELS,
    MODEL_IMPLS,
    REASONING_PARSERS,
    SAMPLING_DEFAULTS_MODES,
    SCHEDULE_POLICIES,
    TOOL_CALL_PARSERS,
    TORCHAO_CONFIGS,
    validate_server_args,
)


def _arg(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A dataclass field carrying its argparse help text."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class ServerArgs:
    """All arguments of the sglkit runtime and server (SGLang's names and meanings)."""

    # Model and tokenizer.
    model_path: str | None = _arg(
        None,
        "Folder of an HF-format model (config.json, *.safetensors, tokenizer). "
        "Defaults to the built-in demo model shipped with sglkit.",
    )
    tokenizer_path: str | None = _arg(None, "Folder of the tokenizer; defaults to --model-path.")
    served_model_name: str | None = _arg(
        None,
        "Model name reported by the API (/v1/models); defaults to --model-path "
        "('sglkit-demo' for the built-in demo model).",
    )
    chat_template: str | None = _arg(
        None, "A Jinja chat template (file path or inline string) overriding the tokenizer's."
    )
    dtype: str = _arg(
        "auto",
        "Weight and activation dtype. 'auto': float32 on CPU; on CUDA the checkpoint's dtype "
        "(bfloat16 when its config names none).",
        choices=DTYPES,
    )
    model_impl: str = _arg(
        "auto",
        "Model implementation. 'sglkit': sglkit's own models only; 'transformers': the model's transformers "
        "layers with sglkit's paged attention, radix cache and scheduler (any decoder-only *ForCausalLM of the "
        "installed transformers; generation only); 'auto': sglkit's own when the architecture has one, else "
        "transformers.",
        choices=MODEL_IMPLS,
    )
    load_format: str = _arg(
        "auto",
        "How to get the weights. 'auto' / 'safetensors': the folder's *.safetensors; 'dummy': seeded random "
        "weights of the config's shape made on the device (the folder needs only config.json and a tokenizer), "
        "for benchmarks.",
        choices=LOAD_FORMATS,
    )
    torchao_config: str = _arg(
        "",
        "Weight-only quantization of the linear layers at load, on CPU (SGLang's flag, done by sglkit without "
        "torchao): 'int8wo' (int8, one scale per output channel) or 'int4wo-32' / 'int4wo-64' / 'int4wo-128' / "
        "'int4wo-256' (int4, one scale and zero per group of that many inputs); '' quantizes nothing. "
        "See docs/quantization.md.",
        choices=("", *TORCHAO_CONFIGS),
    )
    context_length: int | None = _arg(
        None,
        "Maximum tokens per request (prompt + output); defaults to, and is capped by, the model's "
        "max_position_embeddings (and its sliding window; for embedding models, a sentence-transformers "
        "max_seq_length).",
    )
    is_embedding: bool = _arg(
        False, "Serve the model as an embedding / reward model (/encode, /classify, /v1/embeddings)."
    )
    device: str | None = _arg(None, "'cuda' or 'cpu'; defaults to cuda when available, else cpu.")
    random_seed: int | None = _arg(
        None,
        "Seed of torch and of the sampling generator used by requests without their own seed "
        "(random when unset).",
    )

    # Memory and scheduling.
    mem_fraction_static: float | None = _arg(
        None,
        "Sizes the KV pool when --max-total-tokens is unset. CUDA: the share of the GPU's total memory for the "
        "weights + KV pool, as SGLang (default by GPU memory: total minus a reserve of 512 MB + 1.5 MB per "
        "chunked-prefill token + 2 MB per --cuda-graph-max-bs, at least 10 GB on a GPU over 60 GB; the rest is "
        "left for activations, CUDA graphs, logits and workspaces, never less than sglkit's estimate of them). "
        "CPU: the pool holds what the model can use (context length x --max-running-requests, default 256), "
        "limited to this share of the available RAM (after loading the weights; default 0.1) and capped at "
        "262144 tokens; its pages are committed as tokens are written. Embedding models ignore it (their pool holds "
        "one batch).",
    )
    max_total_tokens: int | None = _arg(
        None, "Size of the KV pool in tokens (overrides --mem-fraction-static)."
    )
    max_running_requests: int | None = _arg(
        None,
        "Most requests in the running batch at once. Default: half the KV pool's tokens, at most 256 on CPU "
        "and 4096 on CUDA (embedding models: 256 inputs per pass); capped by the request-to-token table.",
    )
    max_prefill_tokens: int = _arg(
        16384, "Token budget of one prefill batch (embedding models: of one pass)."
    )
    chunked_prefill_size: int | None = _arg(
        None,
        "Split prompts longer than this into chunks (-1 disables chunking). "
        "Default 2048 on CPU; on CUDA by GPU memory, as SGLang: 2048 under 20 GB, 4096 under 60 GB, 8192 under "
        "160 GB (H100, H200), else 16384.",
    )
    schedule_policy: str = _arg(
        "lpm",
        "Waiting-queue order: 'lpm' (longest prefix match first), 'fcfs' (arrival order), 'lof' (longest "
        "output, by max_new_tokens, first) or 'random'.",
        choices=SCHEDULE_POLICIES,
    )
    max_queued_requests: int | None = _arg(
        None,
        "Most requests that may wait at once (admitted by the HTTP server but not yet running); a request over "
        "it gets 503 'The request queue is full.' with a Retry-After header. Unset: no limit.",
    )
    max_inputs_per_request: int = _arg(
        2048,
        "Most prompts (inputs x n) one request may carry (a /generate batch, a completions prompt list, "
        "embedding inputs); more is a 400 naming the field.",
    )
    req_waiting_timeout: float | None = _arg(
        None,
        "Abort a request that waited this many seconds without starting (finish_reason abort, HTTP 503 "
        "'Request waiting timeout reached.'). Default: $SGLANG_REQ_WAITING_TIMEOUT, else none.",
    )
    req_running_timeout: float | None = _arg(
        None,
        "Abort a request that has been running this many seconds (finish_reason abort, HTTP 503 "
        "'Request running timeout reached.'). Default: $SGLANG_REQ_RUNNING_TIMEOUT, else none.",
    )
    disable_radix_cache: bool = _arg(False, "Turn the radix prefix cache off.")
    attention_backend: str | None = _arg(
        None,
        "Attention kernels: 'triton' (the default on CUDA; on CPU only under TRITON_INTERPRET=1, for tests), "
        "'torch_native' (the default on CPU; CPU and CUDA); 'flashinfer' (CUDA, float16/bfloat16 models; needs "
        "pip install 'sglkit[flashinfer]'; written against FlashInfer's documented API, not yet run on a GPU).",
    )
    disable_cuda_graph: bool = _arg(
        False,
        "Run decode eagerly. By default, on CUDA with the triton or flashinfer attention backend (one rank), "
        "decode forwards are captured as CUDA graphs at start-up, one per batch size (1, 2, 4, 8, 16, 24, 32, then "
        "every 16 up to --cuda-graph-max-bs), and a decode batch replays the graph of the next captured size.",
    )
    cuda_graph_max_bs: int | None = _arg(
        None,
        "Largest decode batch captured as a CUDA graph (bigger batches run eagerly). Default by GPU memory, as "
        "SGLang: 8 under 20 GB, 48 under 35 GB, 32 under 60 GB, 256 under 160 GB (H100, H200), else 512; capped "
        "by --max-running-requests.",
    )
    enable_torch_compile: bool = _arg(
        False,
        "CPU: compile the model's decode forward with torch.compile (inductor) at start-up (about a minute on "
        "a cold cache, less once inductor's disk cache holds it); packed linears and attention stay eager, the "
        "norms, rotary, activations and residual adds between them are fused. Decode batches of up to "
        "--torch-compile-max-bs requests use it; prefill runs eagerly. Not supported on CUDA yet (decode uses "
        "CUDA graphs there).",
    )
    torch_compile_max_bs: int = _arg(
        32, "Largest decode batch that runs the --enable-torch-compile forward (bigger ones run eagerly)."
    )
    grammar_backend: str = _arg(
        "xgrammar",
        "Constrained decoding (json_schema, regex, ebnf, structural_tag, response_format, tool_choice "
        "required/named): 'xgrammar', or 'none' to refuse constrained requests with a 400.",
        choices=GRAMMAR_BACKENDS,
    )
    sampling_defaults: str = _arg(
        "model",
        "Where unset sampling parameters (temperature, top_p, top_k, min_p, repetition_penalty) come from: "
        "'model' (the model's generation_config.json, when it sets them) or 'openai' (temperature 1, no "
        "filtering).",
        choices=SAMPLING_DEFAULTS_MODES,
    )
    constrained_json_any_whitespace: bool = _arg(
        False,
        "Let JSON-schema output put any whitespace between tokens (the permissive form). By default JSON is "
        "generated with fixed separators and no free whitespace, so a weak model cannot emit whitespace until "
        "max_tokens.",
    )

    # Parallelism (tensor parallel across processes, possibly across nodes).
    tp_size: int = _arg(
        1,
        "Tensor-parallel size: the model's layers are split over this many rank processes (one device each), "
        "which run every batch together; rank 0 decides the batches, the others mirror it.",
        cli_aliases=("--tp",),
    )
    nnodes: int = _arg(
        1, "Number of nodes the tensor-parallel ranks are spread over (tp_size / nnodes each)."
    )
    node_rank: int = _arg(
        0,
        "This node's index in [0, nnodes). Node 0 serves HTTP and runs ranks 0 .. tp_size/nnodes - 1; "
        "node k runs only its ranks and blocks until they exit.",
    )
    dist_init_addr: str | None = _arg(
        None,
        "host:port where rank 0 listens for the other ranks to join (torch.distributed, tcp://). Required when "
        "nnodes > 1; on one node a free local port is picked when unset.",
    )
    dist_timeout: float | None = _arg(
        None,
        "Seconds a torch.distributed collective may wait for the other ranks before failing (default 600); a rank "
        "or node that dies makes the others fail and the server exit instead of hanging.",
    )
    base_gpu_id: int = _arg(0, "On CUDA, the node's local rank r uses device cuda:(base_gpu_id + r).")
    dp_size: int = _arg(
        1,
        "Data-parallel size: this many replicas of the runtime (each tp_size ranks) behind one HTTP server; a "
        "router sends each request to one of them. On CPU each replica gets cores / dp_size threads (unless "
        "OMP_NUM_THREADS is set); on CUDA replica i starts at device base_gpu_id + i * tp_size.",
        cli_aliases=("--dp",),
    )
    load_balance_method: str = _arg(
        "cache_aware",
        "How the router picks a replica (dp_size > 1): 'cache_aware' (the replica that recently served the "
        "longest prefix of the request, unless the load is imbalanced; else the least loaded), "
        "'shortest_queue' (fewest requests in flight) or 'round_robin'.",
        choices=LOAD_BALANCE_METHODS,
    )

    # HTTP server.
    host: str = _arg("127.0.0.1", "Address to bind; the default keeps the server on this machine.")
    port: int = _arg(30000, "Port to listen on.")
    api_key: str | None = _arg(
        None, "Require 'Authorization: Bearer <key>' on every route except /health and /health_generate."
    )
    skip_server_warmup: bool = _arg(
        False, "Skip the warmup request (the server reports ready right after start-up)."
    )
    watchdog_timeout: float = _arg(
        300.0,
        "Kill the scheduler process if it is busy but runs no forward pass for this many seconds; "
        "the HTTP server then reports unhealthy (/health answers 503).",
    )
    skip_tokenizer_init: bool = _arg(
        False,
        "Run without a tokenizer: requests carry input_ids, answers carry output_ids and no text (stop strings, "
        "chat and text prompts are refused).",
    )
    incremental_streaming_output: bool = _arg(
        False,
        "Streamed /generate chunks carry only the new output_ids (and text) since the previous chunk instead of "
        "everything so far.",
    )
    http_read_timeout: float = _arg(
        30.0,
        "Seconds a client may take to send its request headers, and between body chunks; slower clients are "
        "disconnected (slowloris).",
    )
    graceful_shutdown_timeout: float = _arg(
        2.0,
        "On SIGTERM: stop admitting requests (503), give in-flight requests this many seconds to finish, then abort "
        "the rest (JSON 503 for plain requests, an error event and [DONE] for streams) and exit.",
    )
    stream_interval: int = _arg(
        1,
        "Send a streaming chunk every this many generated tokens (the first token at once); "
        "a request's own stream_interval overrides it.",
    )

    # Tool calls and reasoning.
    tool_call_parser: str | None = _arg(
        None,
        "The format tool calls are read in from the model's output (tools with tool_choice 'auto'). 'qwen25'/'hermes' "
        "(<tool_call>{json}</tool_call>), 'llama3' (JSON, after <|python_tag|>, ';'-separated), 'mistral' "
        "([TOOL_CALLS] [...]) or 'pythonic' ([f(a=1)]). Unset: recognised from the chat template when it is "
        "unambiguous (<tool_call> -> qwen25, [TOOL_CALLS] -> mistral, <|python_tag|> -> llama3), else tool calls "
        "stay in the content. tool_choice 'required' or a named function needs no parser (a JSON-schema grammar).",
        choices=TOOL_CALL_PARSERS,
    )
    reasoning_parser: str | None = _arg(
        None,
        "Separate the model's reasoning (<think>...</think>) into reasoning_content: 'qwen3' (reasoning inside "
        "<think>, or from the start when the chat template opened <think>) or 'deepseek-r1' (reasoning until "
        "</think>, the opening tag optional). Requests can turn it off with separate_reasoning=false.",
        choices=REASONING_PARSERS,
    )

    # Logging and metrics.
    log_level: str = _arg("info", "Log level of the server.", choices=LOG_LEVELS)
    log_requests: bool = _arg(
        False,
        "Log the input and output of every finished generation request, and every refused request (4xx) with "
        "its route, param and reason.",
    )
    enable_metrics: bool = _arg(False, "Expose Prometheus metrics at /metrics.")
    decode_log_interval: int = _arg(40, "Log a 'Decode batch' line every this many decode steps.")

    def __post_init__(self) -> None:
        if self.model_path is None:  # the built-in default model, served under its own name
            from sglkit.testing.demo import default_model_name, default_model_path

            self.model_path = default_model_path()
            if self.served_model_name is None:
                self.served_model_name = default_model_name()
        if self.tokenizer_path is None:
            self.tokenizer_path = self.model_path
        if self.served_model_name is None:
            self.served_model_name = self.model_path
        if self.random_seed is None:
            self.random_seed = random.randint(0, 1 << 30)
        for name, env in (
            ("req_waiting_timeout", "SGLANG_REQ_WAITING_TIMEOUT"),
            ("req_running_timeout", "SGLANG_REQ_RUNNING_TIMEOUT"),
        ):
            if getattr(self, name) is None and float(os.environ.get(env) or -1) > 0:  # SGLang's variables
                setattr(self, name, float(os.environ[env]))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first argument out of range (``server_args_checks``)."""
        validate_server_args(self)

    @property
    def tp_size_per_node(self) -> int:
        """Ranks each node runs: tp_size / nnodes."""
        return self.tp_size // self.nnodes

    def resolved_device(self) -> str:
        """The device to run on: the one asked for, else cuda when available, else cpu."""
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per field, with its help text, to ``parser``."""
        for f in dataclasses.fields(ServerArgs):
            flag = "--" + f.name.replace("_", "-")
            meta = dict(f.metadata)
            help_text = meta.pop("help", "")
            flags = (flag, *meta.pop("cli_aliases", ()))
            if f.type in ("bool", bool):
                parser.add_argument(*flags, action="store_true", help=help_text)
                continue
            arg_type = _cli_type(f.type)
            default_text = "" if f.default is None else f" (default: {f.default})"
            parser.add_argument(
                *flags, dest=f.name, type=arg_type, default=f.default, help=help_text + default_text, **meta
            )

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ServerArgs:
        """Build ServerArgs from parsed flags."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: getattr(args, name) for name in names})

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-friendly dict (the API key is masked)."""
        out = dataclasses.asdict(self)
        if out.get("api_key"):
            out["api_key"] = "***"
        return out


def _cli_type(annotation: Any) -> Any:
    text = str(annotation)
    if "int" in text:
        return int
    if "float" in text:
        return float
    return str


def prepare_server_args(argv: list[str] | None = None) -> ServerArgs:
    """Parse command-line flags into ServerArgs."""
    parser = argparse.ArgumentParser(
        prog="python -m sglkit.launch_server",
        description="Serve a language model with sglkit (SGLang native API + OpenAI API).",
    )
    ServerArgs.add_cli_args(parser)
    return ServerArgs.from_cli_args(parser.parse_args(argv))
