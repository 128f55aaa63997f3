"""Service settings, read from ``GROUPRANK_*`` environment variables (one place for API and workers).

``Settings`` is a pydantic-settings model. Building it (``Settings(max_k=5)``) validates the values given
and reads no environment; ``Settings.from_env()`` reads ``GROUPRANK_<FIELD>`` variables through
pydantic-settings' environment source. Either way a bad value raises ``InputError`` naming the field, or
the variable when it came from the environment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from grouprank.errors import InputError
from reranker.backends import DEFAULT_MODEL

if TYPE_CHECKING:
    from indexer.opensearch.settings import OpenSearchConfig

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
QUEUES = ("rerank", "index", "train")
ENV_PREFIX = "GROUPRANK_"

class Settings(BaseSettings):
    """Everything the API and the workers need to agree on.

    The retrieval index is an OpenSearch cluster when ``opensearch_url`` is set (documents behind the alias
    ``opensearch_alias``), else the embedded index at ``index_dir``: ``opensearch_url`` wins when both are.
    ``broker_url`` None means *embedded*: the API reranks in its own process and runs index jobs inline.
    Celery processes (workers, beat) always need a broker and fall back to ``DEFAULT_BROKER_URL``.
    ``key_prefix`` is prepended to every Redis key and queue of the broker and result backend, so several
    deployments (or test sessions) can share one Redis.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid", env_prefix=ENV_PREFIX, env_ignore_empty=True)

    index_dir: Path | None = None
    opensearch_url: str | None = None  # http(s)://[user:password@]host:9200; wins over index_dir
    opensearch_alias: str = "grouprank"
    broker_url: str | None = None
    result_backend: str | None = None  # default: the broker URL
    key_prefix: str = ""
    connect_timeout_s: PositiveFloat = 1.0  # bounds every connection attempt to Redis (publish fails fast)
    visibility_timeout_s: PositiveInt = 3600  # an unacked task is redelivered after this; keep above time limits
    rerank_soft_time_limit_s: PositiveFloat = 60.0
    rerank_time_limit_s: PositiveFloat = 90.0
    index_time_limit_s: PositiveFloat = 3000.0
    result_expires_s: PositiveInt = 86400
    # The reranker every rerank worker (or the embedded API) loads once per process.
    rerank_method: str = "groupwise"
    rerank_model: str = DEFAULT_MODEL
    rerank_backend: str = "transformers"
    rerank_options: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)  # a JSON object
    rerank_depth: PositiveInt = 20  # how many of the retrieved hits /search sends to the reranker
    # Rerank results cached (Redis with a broker, in process when embedded); 0 = no cache. Keyed on the
    # serving model version, so a promotion invalidates it (worker/result_cache.py).
    rerank_cache_ttl_s: NonNegativeFloat = 600.0
    rerank_cache_entries: PositiveInt = 10_000  # in-process cache only
    # Retraining (trainer): the registry the pipeline promotes into; when it holds a promoted model, rerank
    # workers and the embedded API serve that one instead of rerank_model, and switch when it changes.
    registry_dir: Path | None = None
    train_config: Path | None = None  # the pipeline's JSON config (trainer.config.PipelineConfig)
    retrain_every_s: NonNegativeFloat = 0.0  # beat sends a retraining run this often; 0 = never
    train_time_limit_s: PositiveFloat = 6 * 3600.0
    adapt_dir: Path | None = None  # where `train adapt` runs keep their state (default: <index_dir>-adapt)
    adapt_minutes: PositiveFloat = 60.0  # the time budget of an adaptation sent by /admin/retrain or beat
    adapt_every_s: NonNegativeFloat = 0.0  # beat sends an adaptation run this often; 0 = never
    # Requests.
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()  # comma-separated in the environment
    protect_reads: bool = False  # also require a key for /search, /rerank, /tasks and /metrics
    default_deadline_ms: PositiveFloat = 2000.0
    max_deadline_ms: PositiveFloat = 60000.0
    rerank_timeout_s: PositiveFloat = 30.0  # /rerank waits this long for the reranker
    max_query_chars: PositiveInt = 2048
    max_experiment_queries: PositiveInt = 200  # queries per workbench query set / experiment
    max_k: PositiveInt = 100
    max_rerank_documents: PositiveInt = 1000
    max_document_chars: PositiveInt = 100_000
    max_body_bytes: PositiveInt = 5 * 1024 * 1024

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _input_error(exc) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any, **_: Any) -> tuple:
        """Only the values given: the environment is read by ``from_env`` alone, so an app built with
        explicit settings never depends on (or fails on) the variables around it."""
        return (init_settings,)

    @field_validator("opensearch_url", "broker_url", "result_backend", "index_dir", "registry_dir", "train_config",
                     mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value  # e.g. `grouprank serve --opensearch-url ""`

    @field_validator("api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("rerank_options", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"malformed JSON: {exc.msg}") from None
            if not isinstance(value, dict):
                raise ValueError("must be a JSON object")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.opensearch_url is not None:
            self.opensearch_config()  # validates the URL and the alias
        if self.rerank_time_limit_s < self.rerank_soft_time_limit_s:
            raise InputError("must be >= the soft time limit", field="rerank_time_limit_s")
        if self.default_deadline_ms > self.max_deadline_ms:
            raise InputError("must not exceed max_deadline_ms", field="default_deadline_ms")
        if self.retrain_every_s > 0 and self.train_config is None:
            raise InputError("periodic retraining needs a pipeline config", field="train_config")
        if self.adapt_every_s > 0 and (self.index_dir is None or self.opensearch_url):
            raise InputError("periodic adaptation needs the embedded index", field="index_dir")
        # Retraining is exempt: a run can outlast the visibility timeout, and the pipeline's run lock makes
        # a second delivery of it answer "busy" instead of training twice.
        if self.visibility_timeout_s <= max(self.rerank_time_limit_s, self.index_time_limit_s):
            raise InputError(
                "must exceed every task time limit, or a running task is redelivered to a second worker",
                field="visibility_timeout_s",
            )
        return self


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
        """A copy with ``changes``, validated again."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``GROUPRANK_<FIELD>`` variables (upper case, e.g. ``GROUPRANK_BROKER_URL``) of
        ``environ`` (default: the process environment), then ``overrides``. Lists are comma-separated,
        ``rerank_options`` is a JSON object and a blank variable counts as unset."""
        values = {name: value for name, value in _EnvironmentSource(cls, environ)().items() if name not in overrides}
        try:
            return cls(**values, **overrides)
        except InputError as exc:
            if exc.field in overrides:
                raise
            raise InputError(exc.message, source="environment", field=f"{ENV_PREFIX}{(exc.field or '').upper()}") \
                from None

    @classmethod
    def env_names(cls) -> set[str]:
        """The ``GROUPRANK_*`` variable of every setting."""
        return {f"{ENV_PREFIX}{name.upper()}" for name in cls.model_fields}

    def to_env(self) -> dict[str, str]:
        """The ``GROUPRANK_*`` variables that reproduce these settings in another process."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, Mapping):
                value = json.dumps(dict(value))
            elif isinstance(value, bool):
                value = "1" if value else "0"
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env


class _EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (``None``: the process environment)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None) -> None:
        self._environ = os.environ if environ is None else environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name if self.case_sensitive else name.lower(): value for name, value in self._environ.items()
                if not (self.env_ignore_empty and value == "")}


_MESSAGES = {
    "int_parsing": "must be a number, got {input!r}",
    "float_parsing": "must be a number, got {input!r}",
    "int_from_float": "must be a whole number, got {input!r}",
    "greater_than": "must be positive, got {input!r}",
    "greater_than_equal": "must be positive or 0 (off), got {input!r}",  # NonNegativeFloat: 0 = off
    "bool_parsing": "must be 1/0/true/false, got {input!r}",
    "extra_forbidden": "is not a setting",
}


def _input_error(exc: ValidationError) -> InputError:
    """The first error of a pydantic validation as an ``InputError`` naming its field."""
    error = exc.errors()[0]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, InputError):  # raised by a validator with its own field
        return cause
    field = str(error["loc"][0]) if error["loc"] else None
    template = _MESSAGES.get(error["type"])
    message = template.format(input=error.get("input")) if template else error["msg"].removeprefix("Value error, ")
    return InputError(message, field=field)
