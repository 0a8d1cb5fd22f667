"""Stored responses (``/v1/responses`` routes): a bounded, in-memory LRU of finished responses.

Each entry keeps the ``response`` object (for ``GET /v1/responses/{id}``), the conversation it ends (chat messages
without ``instructions``, for ``previous_response_id``) and its input items (``/input_items``). The store lives as
long as the server process and holds at most ``capacity`` responses: storing one more forgets the least recently
used, so memory cannot grow without end.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_CAPACITY", "ResponseStore", "StoredResponse"]

DEFAULT_CAPACITY = 1000
"""Responses kept per server process."""


@dataclass
class StoredResponse:
    """One stored response: the object, its conversation and its input items."""

    response: dict[str, Any]
    conversation: list[dict[str, Any]]
    input_items: list[dict[str, Any]]


class ResponseStore:
    """An LRU of ``StoredResponse`` by response id (reads count as use)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: StoredResponse) -> None:
        """Store (or replace) ``entry`` under its response id, forgetting the oldest beyond ``capacity``."""
        key = entry.response["id"]
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, or None (unknown, deleted or forgotten)."""
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        """Forget a response; False when it was not stored."""
        return self._entries.pop(response_id, None) is not None
