"""ASGI guards in front of the routes: admission of predictions, and the Host check of a loopback server.

* :class:`Admission` / :class:`AdmissionGate`: a prediction is admitted only while fewer than ``max_concurrency``
  are in flight and fewer than ``max_pending`` images wait for decoding or the model; otherwise it is answered
  503 with ``Retry-After`` at once, before a byte of its body is read (the server then reads and discards the
  rest of that body on the open connection, so the client sees the answer). Every admitted request's images
  fit the model's queue, so an admitted request is never refused after its images were decoded.
* :class:`HostCheck`: a server bound to a loopback address answers only requests whose ``Host`` names a
  loopback address or ``localhost`` (421 otherwise). A web page on another site can make a browser resolve its
  own name to 127.0.0.1 (DNS rebinding) and read the answers; its requests still carry that name as the Host.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, MutableMapping

from transferkit.serve.inputs import RequestError, send_json

__all__ = ["Admission", "AdmissionGate", "HostCheck", "is_loopback", "host_allowed"]

Scope = MutableMapping[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]
PREDICT_PATH = "/v1/predict"


@dataclass
class Admission:
    """The counters the gate decides on: predictions in flight and their images not yet answered."""

    max_concurrency: int
    max_pending: int
    in_flight: int = 0
    images: int = 0  # images of admitted requests between reading and answering (decoding or at the model)
    refused: int = 0
    images_per_s: float = 0.0  # the model's recent pace, for Retry-After (0: not measured yet)

    def refusal(self) -> RequestError | None:
        """Why a new prediction cannot be admitted now, or None."""
        if self.in_flight >= self.max_concurrency:
            what = (f"{self.in_flight} requests are being answered (the limit is --max-concurrency "
                    f"{self.max_concurrency})")
        elif self.images >= self.max_pending:
            what = f"{self.images} images wait to be decoded or run (the limit is --max-pending {self.max_pending})"
        else:
            return None
        return RequestError(503, f"the server is busy: {what}; retry after {self.retry_after()} s (Retry-After), "
                                 "or start it with more --workers or larger limits")

    def retry_after(self) -> int:
        """Seconds until the waiting images are likely through: their count at the model's pace, 1 to 30."""
        pace = self.images_per_s if self.images_per_s > 0 else 10.0
        return int(min(30, max(1, math.ceil(self.images / pace))))

    def as_dict(self) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "max_concurrency": self.max_concurrency, "waiting_images": self.images,
                "max_pending": self.max_pending, "refused_busy": self.refused}


class AdmissionGate:
    """ASGI middleware: POST /v1/predict passes only when :meth:`Admission.refusal` is None."""

    def __init__(self, app: App, admission: Admission) -> None:
        self.app, self.admission = app, admission

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != PREDICT_PATH or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        refusal = self.admission.refusal()
        if refusal is not None:
            self.admission.refused += 1
            await send_json(send, 503, {"error": refusal.message},
                            headers={"Retry-After": str(self.admission.retry_after())})
            return
        self.admission.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.in_flight -= 1


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowed(header: str) -> bool:
    """Whether a ``Host`` header (``name``, ``name:port``, ``[v6]:port``) names a loopback address."""
    value = header.strip()
    if value.startswith("["):
        name = value[1:value.find("]")] if "]" in value else value
    else:
        name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    return is_loopback(name)


class HostCheck:
    """ASGI middleware for a server bound to loopback: requests addressed to another name get 421."""

    def __init__(self, app: App, bound_host: str, port: int | None = None) -> None:
        self.app, self.bound_host, self.port = app, bound_host, port

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = next((value.decode("latin-1") for key, value in scope.get("headers") or [] if key == b"host"), None)
        if host is None or host_allowed(host):  # no Host at all: HTTP/1.0, never a browser
            await self.app(scope, receive, send)
            return
        port = f":{self.port}" if self.port else ""
        await send_json(send, 421, {"error": (
            f"this server listens on {self.bound_host} and answers only requests addressed to this machine "
            f"(Host 127.0.0.1, [::1] or localhost), not Host {host[:100]!r}: a page of another site must not reach "
            f"it (DNS rebinding). Open http://127.0.0.1{port}/ instead, or start the server with --host 0.0.0.0 "
            "(or the address to serve) to answer other names")})
