"""``python -m sglkit.launch_server``: parse flags into ServerArgs and run the HTTP server.

Multi-node (``--nnodes N --node-rank K --dist-init-addr HOST:PORT``): node 0 serves HTTP and runs ranks
0 .. tp_size/N - 1; node K > 0 runs only its ranks, with no HTTP server, until they exit (non-zero on failure).
"""

from __future__ import annotations

import gc
import os
import sys


def main(argv: list[str] | None = None) -> None:
    """Entry point: flags -> ServerArgs -> launch_server (exits 1 with a clear message on start-up errors)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sglkit.server_args import prepare_server_args

    server_args = prepare_server_args(argv)  # no --model-path: the built-in demo model (ServerArgs' default)
    if server_args.node_rank > 0:
        from sglkit.launch.log_format import configure_logging
        from sglkit.runtime.scheduler.rank_group import run_node

        configure_logging(server_args.log_level)
        code = run_node(server_args)
        gc.freeze()
        sys.exit(code)
    from sglkit.server.replicas import begin_launch

    try:
        replicas = begin_launch(server_args)  # the model loads in the children while the HTTP stack imports
        from sglkit.server.http_server import launch_server

        launch_server(server_args, replicas)
    except RuntimeError as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: uvicorn already shut down gracefully; no traceback
        sys.exit(130)
    finally:
        gc.freeze()  # the process is exiting: skip interpreter shutdown's GC passes (seconds with torch loaded)


if __name__ == "__main__":
    main()
