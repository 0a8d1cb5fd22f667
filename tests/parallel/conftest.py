"""tests/parallel: spawned gloo ranks (see spawn.py) import this directory's helpers by module name."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
