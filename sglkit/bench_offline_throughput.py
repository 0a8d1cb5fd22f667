"""``python -m sglkit.bench_offline_throughput``: see sglkit.bench.offline_throughput (with --is-embedding:
sglkit.bench.embedding_throughput)."""

import sys

from sglkit.bench.offline_throughput import main

if "--is-embedding" in sys.argv[1:]:
    from sglkit.bench.embedding_throughput import main

if __name__ == "__main__":
    main()
