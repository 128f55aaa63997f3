"""The decoder stack of a causal LM run by OpenVINO's CPU plugin: the forward passes that read scores.

The likelihood, read-out and fixed-feed slot passes need no generation and no KV cache, only one forward
of the decoder stack (the LM head is applied in torch at the few positions read). ``OpenVINODecoder``
converts that stack with ``openvino.convert_model`` (traced in float32, dynamic batch and length), saves
the graph in the cache (``$GROUPRANK_CACHE/openvino/``, keyed by the model's files, so the ~30 s
conversion happens once per model) and compiles it at ``precision``: ``"bf16"`` where the CPU computes
bfloat16 natively, where it is 1.1-1.4x faster than torch (docs/results-engines.md), else ``"f32"``. It is called
like the torch stack: ``decoder(input_ids=, attention_mask=).last_hidden_state``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from grouprank.errors import require
from reranker.models import cache_root, publish_dir

GRAPH_FILE = "decoder.xml"


def graph_folder(path: str, layers: int) -> Path:
    """Where the converted graph of the model folder ``path`` (cut to ``layers``) is cached: keyed by the
    folder, its files' sizes and times, the depth and the OpenVINO version."""
    import openvino as ov

    root = Path(path)
    files = sorted(p for p in root.glob("*") if p.is_file()) if root.is_dir() else []
    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    key = hashlib.sha256(f"{root.resolve()}|{stamp}|{layers}|{ov.__version__}".encode()).hexdigest()[:16]
    return cache_root() / "openvino" / key


def convert(decoder: Any) -> Any:
    """``decoder`` (a transformers decoder stack) as an OpenVINO model with inputs ``input_ids`` and
    ``attention_mask`` (i64, any batch and length) and the last hidden states as output."""
    import copy

    import openvino as ov
    import torch

    class Stack(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    stack = Stack(copy.deepcopy(decoder).float().eval())
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0  # traced with padding, so the graph keeps the mask's path
    sample = {"input_ids": torch.ones(2, 8, dtype=torch.long), "attention_mask": mask}
    shapes = [(name, ov.PartialShape([-1, -1]), ov.Type.i64) for name in sample]
    with torch.no_grad():
        return ov.convert_model(stack, example_input=sample, input=shapes)


class OpenVINODecoder:
    """A causal LM's decoder stack compiled by OpenVINO for the CPU (see the module docstring)."""

    def __init__(self, decoder: Any, path: str, precision: str, dtype: Any) -> None:
        ov = require("openvino", "openvino")
        import torch

        self.precision = precision
        self.dtype = dtype
        folder = graph_folder(path, len(decoder.layers))
        core = ov.Core()
        if (folder / GRAPH_FILE).is_file():
            graph = core.read_model(folder / GRAPH_FILE)
        else:
            graph = convert(decoder)
            # another process may win the race to publish it: its graph is as good
            publish_dir(folder, lambda staging: ov.save_model(graph, staging / GRAPH_FILE, compress_to_fp16=False))
        self.compiled = core.compile_model(graph, "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads()})

    def __call__(self, input_ids: Any, attention_mask: Any, **_: Any) -> Any:
        """The last hidden states, as a torch tensor in the model's dtype (the head is applied in torch)."""
        import torch

        request = self.compiled.create_infer_request()  # one per call: callers may share the backend
        out = request.infer({"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()})
        hidden = torch.from_numpy(out[0].copy())
        return SimpleNamespace(last_hidden_state=hidden.to(self.dtype))
