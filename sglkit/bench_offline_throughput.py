"""``python -m sglkit.bench_offline_throughput``: see sglkit.bench.offline_throughput."""

from sglkit.bench.offline_throughput import main

if __name__ == "__main__":
    main()
