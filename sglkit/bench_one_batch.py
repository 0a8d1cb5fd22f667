"""``python -m sglkit.bench_one_batch``: see sglkit.bench.one_batch (one static batch, no server)."""

from sglkit.bench.one_batch import main

if __name__ == "__main__":
    main()
