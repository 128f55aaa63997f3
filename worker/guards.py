"""API keys and request limits."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from worker.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <key>`")


def key_guard(settings: Settings, required: bool) -> Callable[..., Awaitable[None]]:
    """A dependency that checks the API key (``Authorization: Bearer`` or ``X-API-Key``) when
    ``required``. With no keys configured, guarded endpoints are refused: writes stay closed by default."""

    async def check(
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header: Annotated[str | None, Depends(_header)],
    ) -> None:
        if not required:
            return
        if not settings.api_keys:
            raise HTTPException(403, "this endpoint needs an API key and none is configured "
                                     "(set GROUPRANK_API_KEYS on the server)")
        given = header if header is not None else (bearer.credentials if bearer is not None else None)
        if given is None:
            raise HTTPException(401, "missing API key: send `Authorization: Bearer <key>` or `X-API-Key`",
                                headers={"WWW-Authenticate": "Bearer"})
        if not any(secrets.compare_digest(given.encode(), key.encode()) for key in settings.api_keys):
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})

    return check


def limit_error(loc: list[Any], message: str, status: int = 422) -> HTTPException:
    """An error in FastAPI's validation format, naming the field and the limit."""
    return HTTPException(status, [{"loc": loc, "msg": message, "type": "limit"}])


class BodyTooLarge(HTTPException):
    """Raised while reading a body past the limit; an HTTPException, so FastAPI's body parsing passes it
    through and the 413 names the limit."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body too large: the limit is {max_bytes} bytes (max_body_bytes)")


class BodyLimitMiddleware:
    """Answers 413 when a request body exceeds ``max_bytes`` (by Content-Length or while streaming)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Callable) -> None:
        body = json.dumps({"detail": BodyTooLarge(self.max_bytes).detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
