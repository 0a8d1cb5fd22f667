"""Models: local HF-format folder -> config, safetensors tensors, and a loaded sglkit model (used by the model runner).

Local folders only (never the hub); safetensors only. ``iterate_weights`` shows SGLang's progress line
``Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:00<00:00,  1.75it/s]``.
``load_model`` builds the model directly on its device (parameters are ``torch.empty``: no random init, and
each keeps the ``weight_loader`` its layer attached), then streams the checkpoint through ``model.load_weights``.

``model_impl`` picks the implementation: "sglkit" (our registry only), "transformers" (the transformers fallback,
``sglkit.models.transformers_backend``: HF layers on our KV pool) or "auto" (ours when the architecture is in
the registry, else the fallback when transformers has it as a causal LM).

``load_format`` (SGLang's ``--load-format``): "auto" / "safetensors" read the folder's safetensors; "dummy"
reads only config.json and fills the parameters with seeded random values on the target device
(``init_dummy_weights``): benchmarks of a model's shape without its weights.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sglkit.core.model_config import ModelConfig, config_dtype
from sglkit.models.registry import get_model_class

__all__ = [
    "DUMMY_WEIGHT_STD",
    "LOAD_FORMATS",
    "MODEL_IMPLS",
    "init_dummy_weights",
    "load_config",
    "find_safetensors_files",
    "iterate_weights",
    "load_checkpoint",
    "resolve_dtype",
    "resolve_model_class",
    "load_model",
]

logger = logging.getLogger(__name__)

MODEL_IMPLS = ("auto", "sglkit", "transformers")  # ServerArgs.model_impl (--model-impl)
LOAD_FORMATS = ("auto", "safetensors", "dummy")  # ServerArgs.load_format (--load-format)
DUMMY_WEIGHT_STD = 0.02  # std of dummy matrices (HF initializer_range): activations stay finite

PROGRESS_DESC = "Loading safetensors checkpoint shards"
PROGRESS_BAR_FORMAT = (
    "{desc}: {percentage:3.0f}% Completed | {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}
_OTHER_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".gguf")


def _model_dir(model_path: str | os.PathLike) -> Path:
    """The folder ``model_path`` as a Path; FileNotFoundError if it is not an existing directory."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"Model path {str(model_path)!r} does not exist or is not a folder. "
            "sglkit loads local HF-format folders only (config.json + *.safetensors); it never downloads."
        )
    return path


def load_config(model_path: str | os.PathLike):
    """Read ``config.json`` of a local model folder into a transformers ``PretrainedConfig`` (offline)."""
    path = _model_dir(model_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"No config.json in model folder {str(path)!r}.")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def find_safetensors_files(model_path: str | os.PathLike) -> list[Path]:
    """Weight files of a folder: the shards listed by model.safetensors.index.json, else model.safetensors,
    else every *.safetensors. FileNotFoundError when there are none (sglkit loads safetensors only)."""
    path = _model_dir(model_path)
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text()).get("weight_map", {})
        root = path.resolve()
        files = []
        for name in sorted(set(weight_map.values())):
            file = (path / name).resolve()
            if not file.is_relative_to(root):
                raise ValueError(f"{index_file.name} points outside the model folder: {name!r}.")
            if not file.is_file():
                raise FileNotFoundError(
                    f"Shard {name!r} listed in {index_file.name} is missing from {str(path)!r}."
                )
            files.append(file)
        if not files:
            raise ValueError(f"{index_file} has an empty weight_map.")
        return files
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    others = sorted(p.name for p in path.iterdir() if p.name.endswith(_OTHER_WEIGHT_SUFFIXES))
    if others:
        raise FileNotFoundError(
            f"No *.safetensors weights in {str(path)!r}, only {others}. sglkit loads safetensors only; "
            "convert the checkpoint (e.g. load it with transformers and save_pretrained(..., safe_serialization=True))."
        )
    raise FileNotFoundError(f"No *.safetensors weights in model folder {str(path)!r}.")


def iterate_weights(
    model_path: str | os.PathLike, show_progress: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, CPU tensor) for every tensor of the folder's safetensors files, one shard at a time."""
    from safetensors import safe_open
    from tqdm import tqdm

    files = find_safetensors_files(model_path)
    bar = tqdm(files, desc=PROGRESS_DESC, bar_format=PROGRESS_BAR_FORMAT, disable=not show_progress)
    for file in bar:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def load_checkpoint(model: torch.nn.Module, model_path: str | os.PathLike) -> None:
    """Load a folder's safetensors into a built model (at start-up and for /update_weights_from_disk).

    A model with its own ``load_checkpoint(path)`` (the transformers fallback: transformers' loading, which
    renames legacy tensor names) uses it; others get ``model.load_weights(iterate_weights(model_path))``.
    """
    own = getattr(model, "load_checkpoint", None)
    if callable(own):
        find_safetensors_files(model_path)  # sglkit's message when the folder has no safetensors
        own(model_path)
    else:
        model.load_weights(iterate_weights(model_path))


def resolve_dtype(dtype: str | torch.dtype, config, device: str | torch.device) -> torch.dtype:
    """Model dtype: "auto" -> float32 on CPU, the config's dtype elsewhere (bfloat16 if unset; ``config`` is a
    transformers config or a ModelConfig);
    "float32"/"float", "float16"/"half", "bfloat16" (or a torch.dtype) as given."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if torch.device(device).type == "cpu":
            return torch.float32
        return config_dtype(config) or torch.bfloat16
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose 'auto' or one of {sorted(_DTYPES)}.")
    return _DTYPES[dtype]


def resolve_model_class(
    architectures: list[str], is_embedding: bool = False, model_impl: str = "auto", hf_config: Any = None
) -> type[torch.nn.Module]:
    """The model class for ``architectures`` under ``model_impl`` ("auto", "sglkit" or "transformers").

    "sglkit" uses the registry only; "transformers" the fallback only; "auto" the registry, else the fallback.
    ``hf_config`` (optional) must then be of the transformers class's config type. ValueError when nothing fits
    (the registry's message, and why the fallback cannot run the model).
    """
    if model_impl not in MODEL_IMPLS:
        raise ValueError(f"model_impl must be one of {MODEL_IMPLS}, got {model_impl!r}.")
    registry_error: ValueError | None = None
    if model_impl != "transformers":
        try:
            return get_model_class(architectures, is_embedding=is_embedding)
        except ValueError as e:
            if model_impl == "sglkit" or is_embedding:
                raise
            registry_error = e
    if is_embedding:
        raise ValueError(
            "The transformers fallback (model_impl='transformers') serves generation models only; "
            "embedding models need an sglkit implementation (model_impl='auto' or 'sglkit')."
        )
    from sglkit.models.transformers_backend import TransformersForCausalLM, unsupported_reason

    reason = unsupported_reason(architectures, hf_config)
    if reason is not None:
        if registry_error is not None:
            raise ValueError(f"{registry_error} The transformers fallback cannot run them either: {reason}")
        raise ValueError(
            f"The transformers fallback (model_impl='transformers') cannot run this model: {reason}"
        )
    return TransformersForCausalLM


@torch.no_grad()
def init_dummy_weights(model: torch.nn.Module, seed: int = 0, std: float = DUMMY_WEIGHT_STD) -> None:
    """Fill every parameter of ``model`` in place, on its device: matrices ~ normal(0, std), biases 0, and
    1-D scales (norm weights) 1 (``1 - weight_offset`` for Gemma's zero-centred norms).

    Deterministic: parameters are filled in name order from one generator seeded with ``seed`` on the device.
    """
    params = dict(model.named_parameters())
    offsets = {
        f"{prefix}.weight" if prefix else "weight": float(getattr(module, "weight_offset", 0.0) or 0.0)
        for prefix, module in model.named_modules()
    }
    generators: dict[torch.device, torch.Generator] = {}
    for name in sorted(params):
        param = params[name].data
        if name.endswith("bias"):
            param.zero_()
        elif param.dim() <= 1:
            param.fill_(1.0 - offsets.get(name, 0.0))
        else:
            if param.device not in generators:
                generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
            param.normal_(0.0, std, generator=generators[param.device])


def load_model(
    model_path: str | os.PathLike,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device = "cpu",
    is_embedding: bool = False,
    model_impl: str = "auto",
    load_format: str = "auto",
    seed: int = 0,
    torchao_config: str = "",
) -> tuple[torch.nn.Module, ModelConfig]:
    """Build the model of a local folder on ``device`` in ``dtype``, load its weights; (model, ModelConfig).

    The ModelConfig keeps the transformers config in ``.hf_config``. ``is_embedding`` picks the embedding /
    reward variant of the architecture; ``model_impl`` the implementation (see ``resolve_model_class``; the
    choice is logged). ``load_format="dummy"`` skips the checkpoint (only config.json is read) and fills the
    weights by ``init_dummy_weights(model, seed)``. ``torchao_config`` ("int8wo", "int4wo-G"; CPU) quantizes the
    "proj" linears once loaded (``sglkit.layers.linear.quantize_linear_weights``). The model is in eval mode with
    gradients off.
    """
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {load_format!r}.")
    hf_config = load_config(model_path)
    model_config = ModelConfig.from_hf(hf_config)
    model_cls = resolve_model_class(list(model_config.architectures), is_embedding, model_impl, hf_config)
    impl = getattr(model_cls, "implementation", "sglkit")
    logger.info(
        f"Model implementation: {impl} ({model_cls.__name__} for {list(model_config.architectures)}, "
        f"model_impl={model_impl})"
    )
    torch_dtype = resolve_dtype(dtype, hf_config, device)
    if torchao_config and impl != "sglkit":
        raise ValueError(
            f"torchao_config needs an sglkit model implementation; {model_cls.__name__} is {impl}'s."
        )
    if load_format == "dummy" and impl != "sglkit":
        raise ValueError(
            f"load_format='dummy' needs an sglkit model implementation; {model_cls.__name__} is {impl}'s."
        )
    with torch.device(device):  # parameters are torch.empty: every one is overwritten by the checkpoint
        model = model_cls(model_config, dtype=torch_dtype)
    if load_format == "dummy":
        init_dummy_weights(model, seed)
    else:
        load_checkpoint(model, model_path)
    if torchao_config:
        from sglkit.layers.linear import quantize_linear_weights

        quantize_linear_weights(model, torchao_config)
    model.eval()
    model.requires_grad_(False)
    return model, model_config
