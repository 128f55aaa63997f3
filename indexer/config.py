"""An index's settings, fixed at creation and saved as ``DIR/config.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from grouprank.errors import InputError

DENSE_INDEX_TYPES = ("flat", "hnsw", "ivf")
FUSIONS = ("rrf", "weighted")
MODES = ("bm25", "dense", "hybrid")
# How the embedder runs (see indexer.embedder); fixed per index, so queries are encoded as documents were.
ENCODERS = ("auto", "torch", "torch-bf16", "onnx-int8", "openvino", "openvino-bf16")
# "auto", resolved when an index is created and stored resolved: on CPUs that compute bf16 natively,
# "openvino-bf16" where OpenVINO is installed, else "torch-bf16" (both within 0.005 NDCG@10 of float32 on
# Cranfield, OpenVINO at 2.5x float32's docs/s and 2.1x its query speed: docs/results.md, "Embedder encoders");
# "torch" elsewhere (on an H200 the bf16 cast made MiniLM slower: docs/results.md, "GPU check").
DEFAULT_ENCODER = "auto"
LEGACY_ENCODER = "torch"  # what a config.json written before the setting existed means
DENSE_DEVICES = ("auto", "cpu", "cuda")


def resolve_encoder(encoder: str, device: str = "cpu") -> str:
    """The encoder "auto" stands for on ``device`` ("cpu" or "cuda"); any other name as it is."""
    if encoder != "auto":
        return encoder
    import importlib.util

    from grouprank.precision import bf16_supported

    if device != "cpu" or not bf16_supported("cpu"):
        return "torch"
    return "openvino-bf16" if importlib.util.find_spec("openvino") is not None else "torch-bf16"


def check_choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise an InputError naming both."""
    if value not in allowed:
        raise InputError(f"unknown {name} {value!r}; expected one of: {', '.join(allowed)}", field=name)
    return value


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"must be an integer >= {minimum}, got {value!r}", field=name)
    return value


def check_weight(value: Any, name: str = "dense_weight") -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise InputError(f"must be a number between 0 and 1, got {value!r}", field=name)
    return float(value)


@dataclass
class IndexConfig:
    """How an index embeds, stores and fuses. Invalid values raise ``InputError`` at construction."""

    embedder: str = "all-MiniLM-L6-v2"  # alias of the packaged MiniLM, a HF id or a local path
    dense_index: str = "flat"  # "flat" (exact inner product) | "hnsw" | "ivf"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    ivf_nlist: int = 256
    ivf_nprobe: int = 16
    fusion: str = "rrf"  # "rrf" | "weighted"
    rrf_k: int = 60
    dense_weight: float = 0.5  # weighted fusion: w * dense + (1 - w) * bm25, after min-max normalisation
    depth: int = 100  # candidates taken from each retriever before fusion
    batch_size: int = 64  # embedding batch size
    encoder: str = DEFAULT_ENCODER  # "auto" | "torch" (float32) | "torch-bf16" | "onnx-int8"
    dense_device: str = "auto"  # "auto" (CUDA when torch and a faiss GPU build see one) | "cpu" | "cuda"

    def __post_init__(self) -> None:
        if not isinstance(self.embedder, str) or not self.embedder.strip():
            raise InputError(f"must be a non-empty string, got {self.embedder!r}", field="embedder")
        check_choice(self.dense_index, DENSE_INDEX_TYPES, "dense_index")
        check_choice(self.fusion, FUSIONS, "fusion")
        check_choice(self.encoder, ENCODERS, "encoder")
        check_choice(self.dense_device, DENSE_DEVICES, "dense_device")
        for name in (
            "hnsw_m",
            "hnsw_ef_construction",
            "hnsw_ef_search",
            "ivf_nlist",
            "ivf_nprobe",
            "depth",
            "batch_size",
        ):
            check_int(getattr(self, name), name)
        check_int(self.rrf_k, "rrf_k", minimum=0)
        self.dense_weight = check_weight(self.dense_weight)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | Path | None = None, stored: bool = False) -> IndexConfig:
        """Settings from a mapping; ``stored``: it is a saved ``config.json``, where a missing encoder
        means the one used before the setting existed (``LEGACY_ENCODER``), not today's default."""
        if not isinstance(data, dict):
            raise InputError(f"expected a JSON object, got {type(data).__name__}", source=source)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                source=source,
                field=unknown[0],
            )
        if stored and "encoder" not in data:
            data = {**data, "encoder": LEGACY_ENCODER}
        try:
            return cls(**data)
        except InputError as exc:
            raise InputError(exc.message, source=source, field=exc.field) from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> IndexConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON: {exc.msg}", source=path, line=exc.lineno) from None
        return cls.from_dict(data, source=path, stored=True)


@dataclass(frozen=True)
class SearchArgs:
    """Validated search arguments, with the index's defaults filled in."""

    queries: list[str]
    k: int
    mode: str
    depth: int
    fusion: str
    dense_weight: float


def search_args(
    queries: Sequence[str], k: int, mode: str, depth: int | None, fusion: str | None, dense_weight: float | None,
    config: IndexConfig,
) -> SearchArgs:
    """Check what a caller asked for (InputError naming the field) and apply ``config``'s defaults.

    Both retrieval backends (embedded and OpenSearch) use this, so they reject the same inputs."""
    if isinstance(queries, str):
        raise InputError("search_batch takes a list of queries; use search() for one", field="queries")
    for n, query in enumerate(queries, start=1):
        if not isinstance(query, str) or not query.strip():
            where = "query" if len(queries) == 1 else f"query #{n}"
            raise InputError(f"{where} is empty; give some words to search for", field="query")
    check_choice(mode, MODES, "mode")
    check_int(k, "k")
    return SearchArgs(
        queries=list(queries),
        k=k,
        mode=mode,
        depth=max(check_int(depth, "depth") if depth is not None else config.depth, k),
        fusion=check_choice(fusion if fusion is not None else config.fusion, FUSIONS, "fusion"),
        dense_weight=check_weight(dense_weight if dense_weight is not None else config.dense_weight),
    )
