"""``python -m sglkit.bench_serving``: see sglkit.bench.serving."""

from sglkit.bench.serving import main

if __name__ == "__main__":
    main()
