"""The model registry: trained models by version, and an atomic pointer to the one serving.

Layout::

    ROOT/models/<version>/   a model directory (weights, tokenizer, metadata.json, evaluation.json), or a
                             LoRA adapter folder (adapter_config.json, adapter weights, metadata.json,
                             evaluation.json) that ``reranker.models`` merges with its base model
    ROOT/CURRENT             the serving version's name, replaced atomically (rename)
    ROOT/history.jsonl       one line per promotion or rollback
    ROOT/registry.lock       fcntl lock held by writers

Readers never lock: ``Registry(root).current()`` reads one small file, so a worker can call it before each
task and reload its model when ``version`` changed. Versions are ``v0001``, ``v0002``, ... in order added.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grouprank.atomic import make_public
from grouprank.errors import GroupRankError, InputError, NotFoundError
from reranker.models import HEAD_FILE
from trainer.files import write_atomic, write_json_atomic
from trainer.modeldir import METADATA, now_iso, read_metadata

EVALUATION = "evaluation.json"
MODEL_FILES = ("config.json", "adapter_config.json", HEAD_FILE)
"""A registry version holds a model folder (``config.json``) or a LoRA adapter folder (``adapter_config.json``)."""


def is_model_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in MODEL_FILES)


@dataclass(frozen=True)
class CurrentModel:
    """The serving model: its registry version and the folder to load (``load_reranker(model=str(path))``)."""

    version: str
    path: Path


class Registry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.models = self.root / "models"

    # -- reading (no lock) ---------------------------------------------------------------------------
    def current(self) -> CurrentModel | None:
        """The promoted model, or None before the first promotion."""
        try:
            version = (self.root / "CURRENT").read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return CurrentModel(version, self.models / version) if version else None

    def versions(self) -> list[str]:
        if not self.models.is_dir():
            return []
        return sorted(p.name for p in self.models.iterdir() if p.is_dir() and not p.name.startswith("."))

    def path(self, version: str) -> Path:
        path = self.models / version
        if not (path / METADATA).is_file() and not is_model_dir(path):
            known = ", ".join(self.versions()) or "none"
            raise NotFoundError(f"no model version {version!r} in {self.root} (versions: {known})")
        return path

    def history(self) -> list[dict[str, Any]]:
        path = self.root / "history.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def info(self, version: str) -> dict[str, Any]:
        """A version's metadata and evaluation (what the gate measured), for listings."""
        path = self.path(version)
        evaluation = path / EVALUATION
        return {
            "version": version,
            "path": str(path),
            "metadata": {k: v for k, v in (read_metadata(path) or {}).items() if k != "train_log"},
            "evaluation": json.loads(evaluation.read_text(encoding="utf-8")) if evaluation.is_file() else None,
        }

    # -- writing (under the registry lock) -----------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "registry.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def add(self, model_dir: str | Path, evaluation: dict[str, Any] | None = None,
            metadata: dict[str, Any] | None = None) -> str:
        """Copy a model or LoRA adapter directory into the registry as a new version (not promoted); returns
        the version. ``metadata`` fields (e.g. a calibrated ``fusion_weight``) are merged into the copy's
        ``metadata.json``."""
        source = Path(model_dir)
        if not is_model_dir(source):
            raise InputError("not a model directory (no config.json, adapter_config.json or read-out head)",
                             source=source)
        with self._locked():
            numbers = [int(v[1:]) for v in self.versions() if v[1:].isdigit()]
            version = f"v{max(numbers, default=0) + 1:04d}"
            self.models.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.models))
            try:
                shutil.copytree(source, tmp, dirs_exist_ok=True)
                if evaluation is not None:
                    write_json_atomic(tmp / EVALUATION, evaluation)
                if metadata:
                    write_json_atomic(tmp / METADATA, {**(read_metadata(tmp) or {}), **metadata})
                make_public(tmp)
                os.rename(tmp, self.models / version)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return version

    def promote(self, version: str, reason: dict[str, Any] | None = None) -> CurrentModel:
        """Make ``version`` the serving model (atomic pointer switch) and record it in the history."""
        with self._locked():
            self.path(version)
            previous = self.current()
            self._switch(version)
            self._log({"event": "promote", "version": version,
                       "previous": previous.version if previous else None, **(reason or {})})
        return CurrentModel(version, self.models / version)

    def rollback(self, to: str | None = None) -> CurrentModel:
        """Serve ``to``, or by default the model that served before the current one."""
        with self._locked():
            current = self.current()
            if to is None:
                if current is None:
                    raise GroupRankError(f"nothing to roll back: no model was promoted in {self.root}")
                to = next((e["previous"] for e in reversed(self.history())
                           if e.get("version") == current.version and e.get("previous")), None)
                if to is None:
                    raise GroupRankError(f"nothing to roll back to: {current.version} is the first promoted model")
            self.path(to)
            self._switch(to)
            self._log({"event": "rollback", "version": to, "previous": current.version if current else None})
        return CurrentModel(to, self.models / to)

    def prune(self, keep: int) -> list[str]:
        """Delete the oldest versions beyond the newest ``keep``; the current model and the one it would roll
        back to are always kept. Returns the deleted versions."""
        with self._locked():
            current = self.current()
            protected = set()
            if current is not None:
                protected.add(current.version)
                for e in reversed(self.history()):
                    if e.get("version") == current.version and e.get("previous"):
                        protected.add(e["previous"])
                        break
            versions = self.versions()
            doomed = [v for v in versions[: max(0, len(versions) - keep)] if v not in protected]
            for v in doomed:
                shutil.rmtree(self.models / v, ignore_errors=True)
        return doomed

    def _switch(self, version: str) -> None:
        write_atomic(self.root / "CURRENT", (version + "\n").encode())

    def _log(self, event: dict[str, Any]) -> None:
        with open(self.root / "history.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"at": now_iso(), **event}) + "\n")
            f.flush()
            os.fsync(f.fileno())
