"""HF folder -> GGUF with llama.cpp's own ``convert_hf_to_gguf.py``, run in .bench-peers/llamacpp.

``python -m gguf_convert CONVERT_DIR MODEL_DIR OUTFILE OUTTYPE`` (PYTHONPATH = this folder). CONVERT_DIR holds
the converter and its ``conversion/`` package copied from the llama-cpp-python sdist by
scripts/prepare_bench_peers.sh, and the sdist's own ``gguf-py``, which the converter puts first on ``sys.path``:
PyPI's ``gguf`` 0.19.0 is older than this converter (no ``gguf.LazyChunkedTensor``, which it calls).
One tolerance is added: sglkit's test tokenizer is not in the converter's table of known BPE pre-tokenizers,
so an unrecognised one is written as "default" instead of stopping the conversion (the benchmarks feed token
ids, so llama.cpp's tokenizer never runs).
"""

from __future__ import annotations

import os
import sys


def import_converter(convert_dir: str):
    """The converter module; it puts CONVERT_DIR/gguf-py (the sdist's own gguf) first on ``sys.path`` itself."""
    sys.path.insert(0, convert_dir)
    os.environ.pop("NO_LOCAL_GGUF", None)
    import convert_hf_to_gguf

    return convert_hf_to_gguf


def main(argv: list[str]) -> int:
    """Convert; the converter's own exit status."""
    convert_dir, model_dir, outfile, outtype = argv
    converter = import_converter(convert_dir)
    from conversion import base

    original = base.TextModel.get_vocab_base_pre

    def tolerant_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            return "default"

    base.TextModel.get_vocab_base_pre = tolerant_vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", model_dir, "--outfile", outfile, "--outtype", outtype]
    converter.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
