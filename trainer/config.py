"""Training configuration as dataclasses (one per stage, trl style), validated on construction.

``PipelineConfig`` nests the stage configs and is what ``run_pipeline`` and ``grouprank train pipeline``
take; as JSON it is an object with the same field names, e.g.::

    {"work_dir": "runs/train", "registry_dir": "models", "index_dir": "indexes/docs",
     "queries": "data/queries.jsonl", "qrels": "data/qrels.tsv", "base_model": "smollm2-135m-instruct",
     "objective": "slots", "mining": {"depth": 20, "group_size": 8}, "sft": {"max_steps": 200},
     "gate": {"margin": 0.005}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from grouprank.errors import InputError

C = TypeVar("C", bound="_Config")


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise InputError(message, field=name)


def _positive_int(value: Any, name: str, minimum: int = 1) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    _check(ok, name, f"must be an integer >= {minimum}, got {value!r}")


def _number(value: Any, name: str, low: float | None = None, high: float | None = None) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    bounds = f" >= {low}" if low is not None else ""
    if low is not None and high is not None:
        bounds = f" in [{low}, {high}]"
    _check(ok, name, f"must be a number{bounds}, got {value!r}")


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    _check(value in allowed, name, f"must be one of {', '.join(allowed)}, got {value!r}")


class _Config:
    """``to_dict`` / ``from_dict`` for the config dataclasses (nested ones included); unknown keys are an
    error naming the key."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: Any, where: str = "") -> C:
        prefix = f"{where}." if where else ""
        if not isinstance(data, dict):
            raise InputError(f"expected a JSON object, got {type(data).__name__}", field=where or None)
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"unknown setting; known: {', '.join(sorted(known))}", field=prefix + unknown[0])
        values = {}
        for name, value in data.items():
            f = known[name]
            default = f.default_factory() if f.default_factory is not MISSING else None  # type: ignore[misc]
            if is_dataclass(default) and isinstance(default, _Config):
                value = type(default).from_dict(value, prefix + name)
            values[name] = value
        try:
            return cls(**values)
        except InputError as exc:
            field_name = exc.field if not exc.field or "." in exc.field else prefix + exc.field
            raise InputError(exc.message, field=field_name) from None
        except TypeError as exc:  # a required field is missing
            raise InputError(str(exc), field=where or None) from None


@dataclass
class MiningConfig(_Config):
    """Hard-candidate mining from an Index (the same ``Index.search`` as serving).

    Each query's hybrid top-``depth`` hits are its candidates. Up to ``groups_per_query`` groups of
    ``group_size`` documents are built per query: at most ``max_positives`` known positives (qrels label > 0;
    with ``unretrieved_positives`` also those the retriever missed) plus hard negatives taken from the top
    ranks. Queries without labels get groups of consecutive top-ranked candidates. ``shuffle`` orders each
    group at random (seeded), so the model cannot learn "the first document is the best".
    Queries are split by ``seed`` into train and test (``test_fraction`` of the judged queries).
    """

    depth: int = 20
    mode: str = "hybrid"
    group_size: int = 8
    groups_per_query: int = 2
    max_positives: int = 3
    unretrieved_positives: bool = True
    shuffle: bool = True
    seed: int = 13
    test_fraction: float = 0.3
    max_queries: int | None = None

    def __post_init__(self) -> None:
        _positive_int(self.depth, "depth")
        _choice(self.mode, ("bm25", "dense", "hybrid"), "mode")
        _positive_int(self.group_size, "group_size", 2)
        _positive_int(self.groups_per_query, "groups_per_query")
        _positive_int(self.max_positives, "max_positives", 0)
        _positive_int(self.seed, "seed", 0)
        _number(self.test_fraction, "test_fraction", 0.0, 0.9)
        if self.max_queries is not None:
            _positive_int(self.max_queries, "max_queries")


@dataclass
class TeacherConfig(_Config):
    """One teacher: ``kind`` "qrels" (gold labels) or "reranker" (an LLM through any reranker backend, with
    ``model``, ``backend`` and extra ``options`` for ``reranker.load_reranker``)."""

    kind: str = "qrels"
    model: str | None = None
    backend: str = "transformers"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice(self.kind, ("qrels", "reranker"), "kind")
        _check(self.kind != "reranker" or bool(self.model), "model", "a reranker teacher needs a model")
        _check(isinstance(self.options, dict), "options", "must be an object")


@dataclass
class SynthesisConfig(_Config):
    """Label synthesis: target = round(10 * (a * pointwise/10 + b * listwise)), the listwise part being
    ``-ln(rank + 1)`` min-max normalised over the group (see ``trainer.synthesis``). Prompts are the engine's
    groupwise prompt with documents cut to ``max_doc_chars`` (use the same value when serving)."""

    a: float = 0.6
    b: float = 0.4
    pointwise: TeacherConfig = field(default_factory=TeacherConfig)
    listwise: TeacherConfig = field(default_factory=TeacherConfig)
    max_doc_chars: int = 300

    def __post_init__(self) -> None:
        _number(self.a, "a", 0.0, 1.0)
        _number(self.b, "b", 0.0, 1.0)
        _check(abs(self.a + self.b - 1.0) < 1e-9, "b", f"a + b must be 1, got {self.a} + {self.b}")
        _positive_int(self.max_doc_chars, "max_doc_chars")


@dataclass
class RewardConfig(_Config):
    """The heterogeneous GRPO reward (see ``trainer.rewards``)::

        R = format + alpha * recall@k + beta * ndcg@k + (1 - alpha - beta) * rbo + gamma * distribution

    ``format`` is 0 for a well-formed answer and ``format_floor`` otherwise (the other terms are then 0, so a
    malformed answer scores exactly the floor). ``relevant_at``: targets >= this form the relevant set of
    recall; ``rbo_p``: RBO persistence; ``temperature``: softmax temperature of the distribution reward.
    """

    alpha: float = 0.2
    beta: float = 0.5
    gamma: float = 0.1
    k: int = 5
    relevant_at: int = 5
    rbo_p: float = 0.9
    temperature: float = 1.0
    format_floor: float = -1.0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            _number(getattr(self, name), name, 0.0, 1.0)
        _check(self.alpha + self.beta <= 1.0 + 1e-9, "beta", "alpha + beta must be <= 1 (RBO gets the rest)")
        _positive_int(self.k, "k")
        _positive_int(self.relevant_at, "relevant_at", 1)
        _number(self.rbo_p, "rbo_p", 0.0, 0.999)
        _number(self.temperature, "temperature", 0.01)
        _number(self.format_floor, "format_floor", -10.0, 0.0)


SLOT_LORA_R = 16
"""The LoRA rank of slot SFT when ``sft.lora_r`` is not set."""


@dataclass
class _TrainStage(_Config):
    """What SFT and GRPO share. ``lora_r`` 0 = full fine-tuning, else LoRA of that rank; None (the default)
    = the objective's default: full fine-tuning for the text stages, ``SLOT_LORA_R`` for slot SFT. The text
    stages merge LoRA into the saved model; the slot stages save the LoRA adapter itself. ``device``:
    "auto" (CUDA when available), "cpu" or "cuda"."""

    max_steps: int = 20
    learning_rate: float = 2e-5
    batch_size: int = 4
    grad_accumulation: int = 1
    lora_r: int | None = None
    lora_alpha: int = 16
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        _positive_int(self.max_steps, "max_steps", 0)
        _number(self.learning_rate, "learning_rate", 0.0, 1.0)
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.grad_accumulation, "grad_accumulation")
        if self.lora_r is not None:
            _positive_int(self.lora_r, "lora_r", 0)
        _positive_int(self.lora_alpha, "lora_alpha")
        _choice(self.device, ("auto", "cpu", "cuda"), "device")
        _positive_int(self.seed, "seed", 0)


@dataclass
class SFTStageConfig(_TrainStage):
    """Supervised fine-tuning on the synthesized groups. ``max_steps`` 0 skips the stage (the base model
    goes on to GRPO; text objective only).

    Text objective: trl's SFTTrainer on the conversations (loss on the answer only), ``max_length`` tokens
    at most. Slots objective (``trainer.slot_sft``): ``batch_size`` groups of the longest length per
    step (more of shorter ones), groups longer than ``max_length`` tokens left out; the lower
    ``freeze_fraction`` of the layers gets no adapter; the loss is the token loss plus ``rank_weight``
    times a ListNet ranking loss at temperature ``tau``."""

    max_length: int = 2048
    warmup_ratio: float = 0.1
    freeze_fraction: float = 0.33
    rank_weight: float = 1.0
    tau: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self.max_length, "max_length", 16)
        _number(self.warmup_ratio, "warmup_ratio", 0.0, 1.0)
        _number(self.freeze_fraction, "freeze_fraction", 0.0, 0.99)
        _number(self.rank_weight, "rank_weight", 0.0, 100.0)
        _number(self.tau, "tau", 0.01, 100.0)


@dataclass
class GRPOStageConfig(_TrainStage):
    """GRPO with the heterogeneous reward. ``batch_size`` counts completions per step and must be a multiple
    of ``num_generations`` (completions sampled per prompt). ``max_steps`` 0 skips the stage.

    Text objective: trl's GRPOTrainer; ``use_vllm`` generates with vLLM (GPU only; otherwise trl's own
    transformers generation). Slots objective (``trainer.slot_grpo``): the SFT stage's LoRA adapter is
    trained further (``lora_r``/``lora_alpha``, ``grad_accumulation``, ``max_completion_length`` and
    ``use_vllm`` do not apply); ``num_generations`` answers are drawn per group."""

    learning_rate: float = 1e-6
    num_generations: int = 4
    max_completion_length: int = 96
    temperature: float = 1.0
    kl_beta: float = 0.0
    use_vllm: bool = False
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int(self.num_generations, "num_generations", 2)
        _check(self.batch_size % self.num_generations == 0, "batch_size",
               f"must be a multiple of num_generations ({self.num_generations}), got {self.batch_size}")
        _positive_int(self.max_completion_length, "max_completion_length", 4)
        _number(self.temperature, "temperature", 0.01, 5.0)
        _number(self.kl_beta, "kl_beta", 0.0, 10.0)


@dataclass
class ReadoutConfig(_Config):
    """The read-out objective (``trainer.readout_stages``), no labels in training: ``queries`` queries
    synthesized by ``generator`` (default: the base model) from the index's passages, kept when the index's
    hybrid search ranks their passage in its top ``keep_k``, with their top ``depth`` candidates; the BM25 +
    dense teacher calibrated on the judged train queries; a read-out head (``hidden`` 0: linear) trained on
    the base model cut to ``layers`` layers, over groups of ``group_size`` documents cut to ``max_doc_chars``
    (served the same way), ``epochs`` of SFT (the epoch kept is the best on the judged train queries) and
    ``grpo_epochs`` of GRPO."""

    queries: int = 2000
    generator: str | None = None
    keep_k: int = 10
    depth: int = 30
    layers: int = 15
    group_size: int = 20
    max_doc_chars: int = 250
    hidden: int = 0
    epochs: int = 300
    learning_rate: float = 3e-3
    grpo_epochs: int = 2
    max_groups: int | None = None
    seed: int = 2026

    def __post_init__(self) -> None:
        _positive_int(self.queries, "queries")
        _positive_int(self.keep_k, "keep_k")
        _positive_int(self.depth, "depth")
        _check(self.keep_k <= self.depth, "keep_k", f"must be <= depth ({self.depth}), got {self.keep_k}")
        _positive_int(self.layers, "layers")
        _positive_int(self.group_size, "group_size", 2)
        _positive_int(self.max_doc_chars, "max_doc_chars")
        _positive_int(self.hidden, "hidden", 0)
        _positive_int(self.epochs, "epochs")
        _number(self.learning_rate, "learning_rate", 1e-8)
        _positive_int(self.grpo_epochs, "grpo_epochs", 0)
        _positive_int(self.seed, "seed", 0)
        if self.max_groups is not None:
            _positive_int(self.max_groups, "max_groups")


@dataclass
class EvalConfig(_Config):
    """How a model is evaluated: the engine's groupwise reranker over the test queries' mined candidates,
    with these serving settings. Text objective: ``reranker.evaluation.evaluate_reranker`` fusing with
    ``weight``. Slots objective: ``weight`` is not used; each model's fusion weight is calibrated
    (``trainer.calibration``) on the same queries and ``metric`` is the fused metric at that weight."""

    group_size: int = 8
    weight: float = 0.6
    max_doc_chars: int = 300
    backend: str = "transformers"
    batch_queries: int = 8
    metric: str = "ndcg@10"

    def __post_init__(self) -> None:
        _positive_int(self.group_size, "group_size")
        _number(self.weight, "weight", 0.0, 1.0)
        _positive_int(self.max_doc_chars, "max_doc_chars")
        _positive_int(self.batch_queries, "batch_queries")


@dataclass
class GateConfig(_Config):
    """Promotion gate: a candidate is promoted only if ``metric(candidate) > metric(current) + margin``, the
    current model being the registry's (or, before the first promotion, ``baseline_model``, default the
    pipeline's base model), both evaluated on the same held-out queries. With the slots objective the
    candidate's calibrated fusion weight must also be > 0 (a model that adds nothing over the retriever is
    never promoted)."""

    margin: float = 0.0
    baseline_model: str | None = None

    def __post_init__(self) -> None:
        _number(self.margin, "margin", -1.0, 1.0)


OBJECTIVES = ("slots", "likelihood", "text", "readout")


@dataclass
class PipelineConfig(_Config):
    """The whole retraining run: mine -> synth -> sft -> grpo -> evaluate -> promote.

    ``queries`` (BEIR queries.jsonl or TSV) and ``qrels`` are split by query into train and held-out test
    queries (only judged queries are used: the gate needs judgements, and qrels teachers need labels).

    ``objective`` picks the training stages: ``"slots"`` (the default) trains a LoRA adapter whose scores
    are read at the answer skeleton's slots (``trainer.slot_sft``, ``trainer.slot_grpo``) and calibrates
    its fusion weight in the gate; ``"likelihood"`` trains the query likelihood (``trainer.likelihood_train``:
    ListNet SFT, then GRPO over Plackett-Luce rankings, one LoRA adapter; what the shipped model is) on the
    same mined and labelled groups, and its gate reads both the groupwise slots and the likelihood and
    calibrates which to serve (one pass unless a mix beats it beyond noise, ``trainer.calibration``);
    ``"text"`` runs trl's SFT and GRPO on the generated answer text;
    ``"readout"`` trains the one-pass read-out head on queries synthesized from the index (``readout``
    settings; the judged train queries only calibrate the teacher and pick the epoch), gated like "slots".

    The retrieval tier mined from is ``index_dir`` (an embedded index) or ``index``, settings for
    ``indexer.open_index`` such as ``{"backend": "opensearch", "url": "http://...:9200", "alias": "docs"}``:
    the trainer searches the same tier that serves. Give one of the two (``index_dir`` may then be "").

    ``work_dir`` holds the runs (``runs/<id>/``: stage outputs and ``state.json``) and the file lock;
    ``redis_url``, when set, takes the one-run-at-a-time lock in Redis instead (key ``lock_key``).
    """

    work_dir: str
    registry_dir: str
    index_dir: str
    queries: str
    qrels: str
    base_model: str = "smollm2-135m-instruct"
    objective: str = "slots"
    mining: MiningConfig = field(default_factory=MiningConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    grpo: GRPOStageConfig = field(default_factory=GRPOStageConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    redis_url: str | None = None
    lock_key: str = "grouprank:train:lock"
    keep_models: int = 5
    index: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.index is not None:
            _check(isinstance(self.index, dict) and bool(self.index), "index",
                   "must be a JSON object of open_index settings (e.g. backend, url, alias)")
            _check(not self.index_dir, "index_dir", "give index_dir or index, not both")
        required = ("work_dir", "registry_dir", "queries", "qrels", "base_model") + (
            () if self.index is not None else ("index_dir",))
        for name in required:
            value = getattr(self, name)
            _check(isinstance(value, str) and bool(value.strip()), name, f"must be a non-empty string, got {value!r}")
        _positive_int(self.keep_models, "keep_models", 2)
        _choice(self.objective, OBJECTIVES, "objective")
        if self.objective in ("slots", "likelihood"):
            _check(self.sft.lora_r != 0, "sft.lora_r",
                   f"must be > 0 with objective {self.objective!r} (its SFT trains a LoRA adapter); "
                   "full fine-tuning needs objective 'text'")
            _check(self.grpo.max_steps == 0 or self.sft.max_steps > 0, "sft.max_steps",
                   f"must be > 0 when grpo.max_steps is (with objective {self.objective!r}, GRPO trains the SFT "
                   "adapter)")

    def fingerprint(self) -> str:
        """A short hash of the settings that shape the model (a run resumes only under the same
        fingerprint); where the lock lives does not count."""
        settings = {k: v for k, v in self.to_dict().items() if k not in ("redis_url", "lock_key")}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        """Read a JSON config file; errors name the file and the setting."""
        path = Path(path)
        if not path.is_file():
            raise InputError("no such config file", source=path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON ({exc.msg})", source=path, line=exc.lineno) from None
        try:
            return cls.from_dict(data)
        except InputError as exc:
            raise InputError(exc.message, source=path, field=exc.field) from None

    def index_target(self) -> str | dict[str, Any]:
        """What ``indexer.open_index`` opens: the ``index`` settings, else the ``index_dir`` directory."""
        return dict(self.index) if self.index is not None else self.index_dir
