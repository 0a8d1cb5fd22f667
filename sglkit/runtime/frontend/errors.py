"""The front end's refusal (front end, before the scheduler): an input the server answers with HTTP 400.

Defined apart from ``input_processor`` so every front-end module (input limits, embedding input, prompt building)
raises the same error without importing each other.
"""

from __future__ import annotations


class InvalidRequestError(ValueError):
    """A request the server must refuse with HTTP 400; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
