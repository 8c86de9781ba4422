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


class StoreFailure(Exception):
    """The artifact store or the label database cannot take a write now.

    The request that hit it gets a 503 (nothing unrecorded is acknowledged; the client retries, maybe on
    another replica) and the replica is not ready, with ``problem`` as the reason, until a probe succeeds.
    """

    def __init__(self, store: str, state: str, reason: str) -> None:
        super().__init__(f"{store} is {state}: {reason}")
        self.store = store  # "the artifact store" | "the label database"
        self.reason = reason

    @property
    def problem(self) -> str:
        return str(self)

    def request_message(self, what: str) -> str:
        return f"cannot record {what} in {self.store} ({self.reason}); retry later"
