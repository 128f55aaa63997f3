"""Model directories: a Hugging Face folder (weights, tokenizer, chat template) plus ``metadata.json``.

``metadata.json`` records where the model came from and how it scored::

    {"stage": "sft" | "grpo", "base_model": "smollm2-135m-instruct", "base_path": "...",
     "data_sha256": "...", "data_rows": 120, "config": {...}, "metrics": {...},
     "created_at": "2025-01-01T12:00:00+00:00", "parent": {metadata of the base, if it was one of ours}}
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Any

from grouprank.atomic import make_public
from grouprank.errors import NotFoundError
from grouprank.loading import model_loading
from trainer.files import read_json, replace_dir, write_json_atomic

METADATA = "metadata.json"


def read_metadata(model_dir: str | Path) -> dict[str, Any] | None:
    """The metadata of one of our model directories, or None for any other model."""
    path = Path(model_dir) / METADATA
    return read_json(path) if path.is_file() else None


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when available, else "cpu"."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name: str, device: str, dtype: Any = None) -> tuple[Any, Any]:
    """A causal LM and its tokenizer by name (alias, folder or HF id), in ``dtype`` (default float32: trl's
    bf16 mode (``common_args``) computes in bfloat16 under autocast and keeps float32 master weights, so
    small updates are not rounded away)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reranker.models import resolve_model

    path = resolve_model(name)
    dtype = dtype or torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        with model_loading():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as exc:
        raise NotFoundError(f"cannot load base model {name!r} (resolved to {path!r}): {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_model_dir(out_dir: str | Path, model: Any, tokenizer: Any, metadata: dict[str, Any]) -> Path:
    """Write the model, tokenizer and metadata to a temporary sibling, then rename it to ``out_dir``
    (replacing an older one), so ``out_dir`` is either complete or absent."""
    final = Path(out_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", suffix=".tmp", dir=final.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / METADATA, {"created_at": now_iso(), **metadata})
        make_public(tmp)
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def base_description(name: str) -> dict[str, Any]:
    """``base_model`` / ``base_path`` / ``parent`` fields for a model trained from ``name``."""
    from reranker.models import resolve_model

    path = resolve_model(name)
    parent = read_metadata(path) if Path(path).is_dir() else None
    root = parent.get("base_model", name) if parent else name
    return {"base_model": root, "base_path": str(path), "parent": parent}
