"""Service settings, read from ``GROUPRANK_*`` environment variables (one place for API and workers)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grouprank.errors import InputError
from reranker.backends import DEFAULT_MODEL

if TYPE_CHECKING:
    from indexer.opensearch.settings import OpenSearchConfig

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
QUEUES = ("rerank", "index", "train")
ZERO_MEANS_OFF = {"retrain_every_s", "rerank_cache_ttl_s"}  # numeric settings where 0 switches the feature off


@dataclass(frozen=True)
class Settings:
    """Everything the API and the workers need to agree on.

    The retrieval index is an OpenSearch cluster when ``opensearch_url`` is set (documents behind the alias
    ``opensearch_alias``), else the embedded index at ``index_dir``: ``opensearch_url`` wins when both are.
    ``broker_url`` None means *embedded*: the API reranks in its own process and runs index jobs inline.
    Celery processes (workers, beat) always need a broker and fall back to ``DEFAULT_BROKER_URL``.
    ``key_prefix`` is prepended to every Redis key and queue of the broker and result backend, so several
    deployments (or test sessions) can share one Redis.
    """

    index_dir: Path | None = None
    opensearch_url: str | None = None  # http(s)://[user:password@]host:9200; wins over index_dir
    opensearch_alias: str = "grouprank"
    broker_url: str | None = None
    result_backend: str | None = None  # default: the broker URL
    key_prefix: str = ""
    connect_timeout_s: float = 1.0  # bounds every connection attempt to Redis (publish fails fast)
    visibility_timeout_s: int = 3600  # an unacked task is redelivered after this; keep above time limits
    rerank_soft_time_limit_s: float = 60.0
    rerank_time_limit_s: float = 90.0
    index_time_limit_s: float = 3000.0
    result_expires_s: int = 86400
    # The reranker every rerank worker (or the embedded API) loads once per process.
    rerank_method: str = "groupwise"
    rerank_model: str = DEFAULT_MODEL
    rerank_backend: str = "transformers"
    rerank_options: Mapping[str, Any] = field(default_factory=dict)
    rerank_depth: int = 20  # how many of the retrieved hits /search sends to the reranker
    # Rerank results cached (Redis with a broker, in process when embedded); 0 = no cache. Keyed on the
    # serving model version, so a promotion invalidates it (worker/result_cache.py).
    rerank_cache_ttl_s: float = 600.0
    rerank_cache_entries: int = 10_000  # in-process cache only
    # Retraining (trainer): the registry the pipeline promotes into; when it holds a promoted model, rerank
    # workers and the embedded API serve that one instead of rerank_model, and switch when it changes.
    registry_dir: Path | None = None
    train_config: Path | None = None  # the pipeline's JSON config (trainer.config.PipelineConfig)
    retrain_every_s: float = 0.0  # beat sends a retraining run this often; 0 = never
    train_time_limit_s: float = 6 * 3600.0
    # Requests.
    api_keys: tuple[str, ...] = ()
    protect_reads: bool = False  # also require a key for /search, /rerank, /tasks and /metrics
    default_deadline_ms: float = 2000.0
    max_deadline_ms: float = 60000.0
    rerank_timeout_s: float = 30.0  # /rerank waits this long for the reranker
    max_query_chars: int = 2048
    max_experiment_queries: int = 200  # queries per workbench query set / experiment (each is searched and reranked)
    max_k: int = 100
    max_rerank_documents: int = 1000
    max_document_chars: int = 100_000
    max_body_bytes: int = 5 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.opensearch_url == "":
            object.__setattr__(self, "opensearch_url", None)  # an empty value (a blank variable) = not set
        if self.opensearch_url is not None:
            self.opensearch_config()  # validates the URL and the alias
        if self.rerank_time_limit_s < self.rerank_soft_time_limit_s:
            raise InputError("must be >= the soft time limit", field="rerank_time_limit_s")
        if self.default_deadline_ms > self.max_deadline_ms:
            raise InputError("must not exceed max_deadline_ms", field="default_deadline_ms")
        if self.rerank_cache_ttl_s < 0:
            raise InputError("must be >= 0 (0 = no result cache)", field="rerank_cache_ttl_s")
        if self.retrain_every_s < 0:
            raise InputError("must be >= 0 (0 = no periodic retraining)", field="retrain_every_s")
        if self.retrain_every_s > 0 and self.train_config is None:
            raise InputError("periodic retraining needs a pipeline config", field="train_config")
        # Retraining is exempt: a run can outlast the visibility timeout, and the pipeline's run lock makes
        # a second delivery of it answer "busy" instead of training twice.
        if self.visibility_timeout_s <= max(self.rerank_time_limit_s, self.index_time_limit_s):
            raise InputError(
                "must exceed every task time limit, or a running task is redelivered to a second worker",
                field="visibility_timeout_s",
            )

    @property
    def index_backend(self) -> str | None:
        """The retrieval backend: "opensearch" (``opensearch_url`` set), "embedded" (``index_dir`` set) or None."""
        if self.opensearch_url is not None:
            return "opensearch"
        return "embedded" if self.index_dir is not None else None

    def opensearch_config(self) -> OpenSearchConfig:
        """The ``OpenSearchConfig`` for ``opensearch_url`` and ``opensearch_alias``; InputError names the field."""
        from indexer.opensearch.settings import OpenSearchConfig

        try:
            return OpenSearchConfig(url=self.opensearch_url, alias=self.opensearch_alias)
        except InputError as exc:
            raise InputError(exc.message, field=f"opensearch_{exc.field}") from None

    def index_label(self) -> str:
        """Which index this serves, for messages (an OpenSearch URL without its credentials)."""
        if self.index_backend == "opensearch":
            config = self.opensearch_config()
            return f"OpenSearch {config.safe_url} alias {config.alias}"
        return f"embedded {self.index_dir}" if self.index_dir is not None else "no index configured"

    @property
    def embedded(self) -> bool:
        return self.broker_url is None

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or DEFAULT_BROKER_URL

    @property
    def celery_result_backend(self) -> str:
        return self.result_backend or self.celery_broker_url

    def reranker_kwargs(self) -> dict[str, Any]:
        """Arguments for ``reranker.load_reranker``."""
        return {"method": self.rerank_method, "model": self.rerank_model, "backend": self.rerank_backend,
                **self.rerank_options}

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``GROUPRANK_<FIELD>`` variables (upper case, e.g. ``GROUPRANK_BROKER_URL``),
        then ``overrides``. Lists are comma-separated; ``rerank_options`` is a JSON object."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"GROUPRANK_{f.name.upper()}"
            if name in env and f.name not in overrides:
                values[f.name] = _parse(env[name], f.name, name, type(getattr(_DEFAULTS, f.name)))
        values.update(overrides)
        try:
            return cls(**values)
        except InputError as exc:
            raise InputError(exc.message, source="environment", field=f"GROUPRANK_{(exc.field or '').upper()}") \
                from None

    @classmethod
    def env_names(cls) -> set[str]:
        """The ``GROUPRANK_*`` variable of every setting."""
        return {f"GROUPRANK_{f.name.upper()}" for f in fields(cls)}

    def to_env(self) -> dict[str, str]:
        """The ``GROUPRANK_*`` variables that reproduce these settings in another process."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, Mapping):
                value = json.dumps(dict(value))
            elif isinstance(value, bool):
                value = "1" if value else "0"
            env[f"GROUPRANK_{f.name.upper()}"] = str(value)
        return env


def _parse(raw: str, name: str, var: str, kind: type) -> Any:
    def bad(message: str) -> InputError:
        return InputError(message, source="environment", field=var)

    if name in ("index_dir", "registry_dir", "train_config"):
        return Path(raw) if raw else None
    if name in ("broker_url", "result_backend", "opensearch_url"):
        return raw or None
    if kind is bool:
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise bad(f"must be 1/0/true/false, got {raw!r}")
        return raw.lower() in ("1", "true", "yes")
    if kind is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if kind is dict:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise bad(f"malformed JSON: {exc.msg}") from None
        if not isinstance(value, dict):
            raise bad("must be a JSON object")
        return value
    if kind in (int, float):
        try:
            number = kind(raw)
        except ValueError:
            raise bad(f"must be a number, got {raw!r}") from None
        if number < 0 or (number == 0 and name not in ZERO_MEANS_OFF):
            raise bad(f"must be positive, got {raw!r}")
        return number
    return raw


_DEFAULTS = Settings()
