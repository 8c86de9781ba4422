"""Errors a request can end with: the client gets ``status`` and a JSON body naming the problem."""

from __future__ import annotations


class RequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> RequestError:
    """The body is not what the endpoint reads at all (not JSON, not an object)."""
    return RequestError(400, message)


def unprocessable(message: str) -> RequestError:
    """Well-formed JSON whose content is wrong (missing feature, wrong type, empty batch)."""
    return RequestError(422, message)


def too_large(message: str) -> RequestError:
    return RequestError(413, message)


class ModelLoadError(Exception):
    """Why this version cannot serve; the server stays not-ready and logs it."""
