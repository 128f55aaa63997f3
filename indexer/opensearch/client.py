"""The opensearch-py client (an optional dependency), retries, and errors turned into ours."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from grouprank.errors import GroupRankError, NotFoundError, require
from indexer.opensearch.settings import OpenSearchConfig

T = TypeVar("T")

# A request refused with one of these is worth sending again: 429 is OpenSearch's "too many
# requests" (a full write queue), 5xx a node in trouble.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def opensearchpy() -> Any:
    """The ``opensearchpy`` module, or MissingExtraError naming the ``opensearch`` extra."""
    return require("opensearchpy", "opensearch")


def connect(config: OpenSearchConfig) -> Any:
    """A client for ``config.url``. It never retries by itself: bulk writes retry in ``with_retries``,
    with a backoff, and searches fail fast (the search API has its own fallbacks)."""
    module = opensearchpy()
    return module.OpenSearch(
        hosts=[config.url],
        timeout=config.timeout_s,
        max_retries=0,
        retry_on_timeout=False,
        verify_certs=config.verify_certs,
        ssl_show_warn=config.verify_certs,
    )


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an opensearch-py error; None for a connection error or timeout."""
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def retryable(exc: BaseException) -> bool:
    module = opensearchpy()
    if isinstance(exc, module.ConnectionError):  # includes timeouts: bulk writes by id are idempotent
        return True
    return isinstance(exc, module.TransportError) and status_of(exc) in RETRY_STATUSES


def backoff(config: OpenSearchConfig, attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): backoff_s, 2 * backoff_s, ..."""
    return config.backoff_s * 2 ** (attempt - 1)


def with_retries(config: OpenSearchConfig, call: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, sent again after a backoff while it fails with 429, 5xx or a lost connection."""
    for attempt in range(1, config.retries + 2):
        try:
            return call()
        except Exception as exc:
            if attempt > config.retries or not retryable(exc):
                raise
            sleep(backoff(config, attempt))
    raise AssertionError("unreachable")


def reason(exc: BaseException) -> str:
    """A one-line description of an opensearch-py error: status, type and reason from the body."""
    info = getattr(exc, "info", None)
    error = info.get("error") if isinstance(info, dict) else None
    if isinstance(error, dict):
        cause = (error.get("root_cause") or [error])[0]
        text = f"{cause.get('type', 'error')}: {cause.get('reason', '')}"
    else:
        text = str(getattr(exc, "error", "") or exc)
    status = status_of(exc)
    return f"{status} {text}" if status else text


@contextlib.contextmanager
def translated(config: OpenSearchConfig, what: str) -> Iterator[None]:
    """Turn opensearch-py errors into GroupRankErrors that name the cluster and what was being done."""
    module = opensearchpy()
    try:
        yield
    except module.ConnectionError as exc:
        raise GroupRankError(f"cannot reach OpenSearch at {config.safe_url} while {what}: {exc.error}") from exc
    except module.NotFoundError as exc:
        raise NotFoundError(f"OpenSearch at {config.safe_url}, {what}: {reason(exc)}") from exc
    except module.TransportError as exc:
        raise GroupRankError(f"OpenSearch at {config.safe_url} refused {what}: {reason(exc)}") from exc
