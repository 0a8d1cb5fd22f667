"""``python -m sglkit.launch_server``: parse flags into ServerArgs and run the HTTP server."""

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
    from sglkit.server.http_server import launch_server

    try:
        launch_server(server_args)
    except RuntimeError as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: uvicorn already shut down gracefully; no traceback
        sys.exit(130)
    finally:
        gc.freeze()  # the process is exiting: skip interpreter shutdown's GC passes (seconds with torch loaded)


if __name__ == "__main__":
    main()
