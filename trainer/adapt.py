"""``grouprank train adapt``: adapt the embedder and the reranker to an index's own documents, with no labels.

Stages, each resumable (``OUT/state.json``, rewritten atomically after every stage; a killed run resumes
at the stage it was in):

1. ``synthesize``: the LLM writes a query for passages sampled from the index (``trainer.readout_data``,
   cached line by line in ``OUT/queries.jsonl``).
2. ``mine``: a seeded slice of the queries is held out *before* any filtering (so the gate sees queries the
   current models may fail on); the rest go through the round-trip filter and hard-candidate mining of the
   serving index (``round_trip``).
3. ``embedder``: the index's embedder fine-tuned on (query, source passage, hard negative) triples
   (``trainer.embedder_train``); scored on the held-out queries as served (BM25, dense and their fusion over
   the whole index); if its hybrid MRR@10 beats the current one by ``margin``, it is installed in the index
   and the index switches to it by a reindex (``Index.reindex``: the old generation serves meanwhile).
4. ``reranker``: the current reranker's query likelihood trained on the mined groups (LoRA, merged on save;
   targets from a BM25 + dense teacher, the source passage 10) and compared with the current reranker on the
   held-out queries' hybrid top candidates, served alike; written to ``OUT/reranker`` only if better.
5. ``report``: ``OUT/report.json``, what was kept and dropped, steps, held-out scores, minutes.

The minutes are shared between the stages (``TIME_SHARES``). Nothing here reads qrels or knows a collection:
the held-out metric is whether the source passage comes back (MRR@10).
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from grouprank.errors import InputError
from grouprank.progress import console, enabled, progress_bar
from trainer.calibration import NOISE_SE, paired_margin
from trainer.embedder_train import EmbedderTrainConfig, HeldOut
from trainer.files import read_json, write_json_atomic
from trainer.locks import run_lock

STAGES = ("synthesize", "mine", "embedder", "reranker", "report")
TIME_SHARES = {"synthesize": 0.45, "embedder": 0.15, "reranker": 0.3}  # the rest: filtering, reindex, gates
TEACHER = {"bm25": 0.5, "dense": 0.5}  # no judgments to calibrate on: the two retrievers alike


@dataclass
class AdaptConfig:
    """One adaptation run: which index, where its outputs go, and how long it may take."""

    index: str
    out: str
    minutes: float = 60.0
    writer: str = "smollm2-135m-instruct"  # the LLM that writes the queries
    reranker: str = "grouprank-smollm2-135m"  # the reranker adapted (and compared against)
    queries: int = 3000
    held_out: int = 100
    keep_k: int = 10
    depth: int = 30
    group_size: int = 8
    rerank_depth: int = 20
    reranker_learning_rate: float = 1e-4
    margin: float = 0.0
    noise_se: float = NOISE_SE  # a gain must also exceed this many standard errors of the paired difference
    stages: tuple[str, ...] = ("embedder", "reranker")
    seed: int = 0
    redis_url: str | None = None
    lock_key: str = "grouprank:adapt"
    embedder: EmbedderTrainConfig = field(default_factory=EmbedderTrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.embedder, dict):
            self.embedder = EmbedderTrainConfig(**self.embedder)
        self.stages = tuple(self.stages)
        unknown = [s for s in self.stages if s not in ("embedder", "reranker")]
        if unknown or not self.stages:
            raise InputError(f"unknown stage(s) {unknown}; choose from embedder, reranker", field="stages")
        checks = {"minutes": self.minutes > 0, "queries": self.queries >= 2, "held_out": self.held_out >= 1,
                  "keep_k": self.keep_k >= 1, "depth": self.depth >= self.keep_k, "group_size": self.group_size >= 2,
                  "rerank_depth": self.rerank_depth >= 2, "reranker_learning_rate": self.reranker_learning_rate > 0}
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"out of range: {getattr(self, name)!r}", field=name)

    def seconds(self, stage: str) -> float:
        return self.minutes * 60.0 * TIME_SHARES[stage]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AdaptRun:
    """``OUT``'s state: finished stages and their outputs."""

    def __init__(self, config: AdaptConfig) -> None:
        self.config = config
        self.out = Path(config.out)
        self.path = self.out / "state.json"
        state = read_json(self.path) if self.path.is_file() else None
        if state is None or state.get("status") == "done" or state.get("index") != str(Path(config.index).resolve()):
            state = {"run_id": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"), "status": "running",
                     "index": str(Path(config.index).resolve()), "config": config.to_dict(), "stages": {}}
            self.resumed = False
        else:
            self.resumed = True
        self.state = state

    def save(self) -> None:
        write_json_atomic(self.path, self.state)

    def outputs(self, stage: str) -> dict[str, Any]:
        return self.state["stages"][stage]


def _say(message: str) -> None:
    if enabled():
        console.print(message)


def _sample(docs: Iterable[Any], n: int, seed: int) -> list[Any]:
    """A seeded uniform sample of ``n`` documents (reservoir: one pass, memory for ``n`` only)."""
    rng = random.Random(seed)
    out: list[Any] = []
    for i, doc in enumerate(docs):
        if i < n:
            out.append(doc)
        elif (j := rng.randrange(i + 1)) < n:
            out[j] = doc
    return out


def gate(before: list[float], after: list[float], config: AdaptConfig, what: str) -> dict[str, Any]:
    """Promote when the mean per-query gain of ``after`` over ``before`` (the same held-out queries) beats
    ``margin`` plus ``noise_se`` standard errors of the paired difference: a gain within the noise of 100
    held-out queries is not a reason to switch a served model."""
    gain, se = paired_margin(dict(enumerate(after)), dict(enumerate(before)))
    bar = config.margin + config.noise_se * se
    verdict = ">" if gain > bar else "<="
    return {"gain": round(gain, 4), "se": round(se, 4), "promote": gain > bar,
            "reason": f"{what} gain {gain:+.4f} {verdict} margin {config.margin} + {config.noise_se} x SE {se:.4f}"}


def _stage_synthesize(config: AdaptConfig, run: AdaptRun, index: Any) -> dict[str, Any]:
    from trainer.readout_data import llm_generator, synthesize_queries

    docs = _sample(index.iter_documents(), max(2 * config.queries, 1000), config.seed)
    generate = llm_generator(config.writer, seed=config.seed)
    cache = run.out / "queries.jsonl"
    queries = synthesize_queries(generate, docs, config.queries, cache, seed=config.seed,
                                 max_seconds=config.seconds("synthesize"))
    written = sum(1 for line in cache.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(queries) < config.held_out + 2:
        raise InputError(f"only {len(queries)} usable queries were written in the time given; give more minutes "
                         f"or fewer held-out queries", field="minutes")
    return {"passages_tried": written, "queries": len(queries), "unusable": written - len(queries)}


def _queries(run: AdaptRun) -> list[Any]:
    from grouprank.jsonl import iter_jsonl
    from trainer.readout_data import SyntheticQuery

    return [SyntheticQuery(str(o["doc_id"]), str(o["query"])) for _, o in iter_jsonl(run.out / "queries.jsonl")
            if o.get("query")]


def _stage_mine(config: AdaptConfig, run: AdaptRun, index: Any) -> dict[str, Any]:
    from trainer.readout_data import round_trip, write_sets

    queries = _queries(run)[: run.outputs("synthesize")["queries"]]
    random.Random(config.seed).shuffle(queries)
    held, train = queries[: config.held_out], queries[config.held_out:]
    held_docs = {q.doc_id for q in held}
    train = [q for q in train if q.doc_id not in held_docs]
    kept, dropped = round_trip(index, train, keep_k=config.keep_k, depth=config.depth, prefix="adapt")
    write_sets(run.out / "mined.jsonl", kept)
    write_json_atomic(run.out / "held-out.json", [asdict(HeldOut(q.query, q.doc_id)) for q in held])
    return {"held_out": len(held), "train_queries": len(train), "kept": len(kept), "dropped": dropped}


def read_held_out(out: Path) -> list[HeldOut]:
    """The held-out queries of the run in ``out``."""
    return [HeldOut(**q) for q in read_json(out / "held-out.json")]


def _triples(sets: list[Any], negatives: int, seed: int) -> list[Any]:
    """(query, source passage, hard negatives) from mined sets; negatives drawn below the top 3, where a
    passage as relevant as the source is less likely (GPL's false-negative concern)."""
    from trainer.embedder_train import Triple

    rng = random.Random(seed)
    out = []
    for s in sets:
        positive = next(c for c in s.candidates if c.positive)
        pool = [c for c in s.candidates[3:] if not c.positive]
        picks = rng.sample(pool, min(len(pool), max(negatives, 1)))
        out.append(Triple(s.query, _body(positive), [_body(c) for c in picks]))
    return out


def _body(c: Any) -> str:
    return f"{c.title}\n{c.text}" if c.title else c.text


def _stage_embedder(config: AdaptConfig, run: AdaptRun, index: Any) -> dict[str, Any]:
    from indexer.embedder import load_embedder, resolve
    from trainer.embedder_train import held_out_retrieval, train_embedder
    from trainer.readout_data import read_sets

    partial = run.state.setdefault("partial", {})
    trained = run.out / "embedder"
    if "embedder_training" not in partial:
        triples = _triples(read_sets(run.out / "mined.jsonl"), config.embedder.hard_negatives, config.seed)
        train_config = replace(config.embedder, max_seconds=config.seconds("embedder"))
        with progress_bar("embedder steps", None) as bar:
            partial["embedder_training"] = train_embedder(resolve(index.embedder.name), triples, trained,
                                                          train_config, lambda *_: bar.advance())
        partial["embedder_training"]["triples"] = len(triples)
        run.save()
    held = read_held_out(run.out)
    if "embedder_before" not in partial:
        partial["embedder_before"] = held_out_retrieval(index, held, None)
        run.save()
    candidate = load_embedder(str(trained), index.config.encoder)
    started = time.monotonic()
    docs = list(index.iter_documents())
    vectors = candidate.encode([d.body for d in docs], index.config.batch_size, enabled())
    encode_s = time.monotonic() - started
    after = held_out_retrieval(index, held, lambda q: candidate.encode(q, 8, False), ([d.id for d in docs], vectors))
    before = dict(partial["embedder_before"])
    decision = gate(before.pop("hybrid_rr"), after.pop("hybrid_rr"), config, "hybrid MRR@10")
    result = {"training": partial["embedder_training"], "before": before, "after": after,
              "gain": decision["gain"], "se": decision["se"], "reason": decision["reason"],
              "encode_docs_per_s": round(len(docs) / max(encode_s, 1e-9), 1),
              "hours_per_million_docs": round(1e6 / max(len(docs) / max(encode_s, 1e-9), 1e-9) / 3600, 2)}
    if not decision["promote"]:
        return {**result, "promoted": False}
    name = f"embedders/adapted-{run.state['run_id']}"
    if not (index.path / name).is_dir():
        index.install_embedder(trained, name.split("/", 1)[1])
    started = time.monotonic()
    generation = None
    if index.store.embedder != name:
        generation = index.reindex(config=replace(index.config, embedder=name), progress=enabled())
    return {**result, "promoted": True, "embedder": name, "generation": generation,
            "reindex_seconds": round(time.monotonic() - started, 1)}


def rerank_mrr(model: str, index: Any, held: list[HeldOut], depth: int) -> dict[str, Any]:
    """MRR@10 of each held-out query's source passage after reranking its hybrid top ``depth`` with
    ``model`` as it is served (its own settings, no deadline), and of the first stage's order; the
    reranked reciprocal rank per query (``reranked_rr``)."""
    from reranker import load_reranker
    from reranker.types import Candidate, RerankRequest

    hits = index.search_batch([q.query for q in held], k=depth, mode="hybrid")
    reranker = load_reranker("groupwise", model=model)
    requests = [RerankRequest(q.query, [Candidate.from_hit(h) for h in hs]) for q, hs in zip(held, hits, strict=True)]
    rankings = []
    with progress_bar(f"held-out reranking ({Path(model).name})", len(requests)) as bar:
        for start in range(0, len(requests), 8):
            rankings += reranker.rerank_batch(requests[start:start + 8])
            bar.advance(len(requests[start:start + 8]))

    def rr(orders: list[list[str]]) -> list[float]:
        ranks = [next((r for r, d in enumerate(o[:10], 1) if d == q.doc_id), None)
                 for q, o in zip(held, orders, strict=True)]
        return [round(1 / r, 4) if r else 0.0 for r in ranks]

    reranked = rr([[doc for doc, _ in r] for r in rankings])
    first = rr([[h.id for h in hs] for hs in hits])
    return {"reranked_mrr@10": round(sum(reranked) / len(reranked), 4),
            "first_stage_mrr@10": round(sum(first) / len(first), 4), "reranked_rr": reranked}


def _stage_reranker(config: AdaptConfig, run: AdaptRun, index: Any) -> dict[str, Any]:
    import torch

    from grouprank.precision import bf16_supported
    from reranker.models import model_metadata
    from reranker.serving import ServingConfig
    from trainer.likelihood_train import LikelihoodTrainConfig, encode_likelihood_groups, train_likelihood_sft
    from trainer.modeldir import load_model, save_model_dir
    from trainer.readout_data import read_sets, teacher_scores
    from trainer.slot_dataset import TeacherGroup

    partial = run.state.setdefault("partial", {})
    candidate_dir = run.out / "reranker-candidate"
    # documents cut as the reranker serves them (the library's default where its metadata says nothing)
    max_doc_chars = int(ServingConfig.from_model(config.reranker).settings.get("max_doc_chars", 3000))
    if "reranker_training" not in partial:
        sets = read_sets(run.out / "mined.jsonl")
        groups = [TeacherGroup(s.qid, s.query, s.candidates, teacher_scores(s.candidates, TEACHER)) for s in sets]
        model, tokenizer = load_model(config.reranker, "cpu", torch.bfloat16 if bf16_supported("cpu") else None)
        examples = encode_likelihood_groups(groups, tokenizer, max_doc_chars, max_docs=config.group_size,
                                            seed=config.seed)
        train_config = LikelihoodTrainConfig(epochs=1.0, learning_rate=config.reranker_learning_rate,
                                             seed=config.seed, max_seconds=config.seconds("reranker"))
        with progress_bar("reranker steps", len(examples)) as bar:
            model, info = train_likelihood_sft(model, tokenizer, examples, train_config, lambda *_: bar.advance())
        metadata = {k: v for k, v in (model_metadata(config.reranker) or {}).items()
                    if k in ("serving", "fusion_weight", "calibration", "objective", "base_model")}
        save_model_dir(candidate_dir, model.merge_and_unload(), tokenizer, {
            **metadata, "stage": "adapt", "adapted_from": config.reranker, "run_id": run.state["run_id"],
            "likelihood_config": train_config.to_dict(), "metrics": info["metrics"], "groups": len(examples)})
        partial["reranker_training"] = {**info["metrics"], "groups": len(examples)}
        run.save()
    held = read_held_out(run.out)
    depth = min(config.rerank_depth, len(index))
    if "reranker_before" not in partial:
        partial["reranker_before"] = rerank_mrr(config.reranker, index, held, depth)
        run.save()
    before = dict(partial["reranker_before"])
    after = rerank_mrr(str(candidate_dir), index, held, depth)
    decision = gate(before.pop("reranked_rr"), after.pop("reranked_rr"), config, "reranked MRR@10")
    result = {"training": partial["reranker_training"], "before": before, "after": after,
              "gain": decision["gain"], "se": decision["se"], "reason": decision["reason"]}
    if not decision["promote"]:
        return {**result, "promoted": False}
    from trainer.files import replace_dir

    final = run.out / "reranker"
    replace_dir(candidate_dir, final)
    return {**result, "promoted": True, "model": str(final)}


def _stage_report(config: AdaptConfig, run: AdaptRun, index: Any) -> dict[str, Any]:
    stages = run.state["stages"]
    report = {"run_id": run.state["run_id"], "index": run.state["index"], "minutes_given": config.minutes,
              "minutes_taken": round(sum(s.get("seconds", 0) for s in stages.values()) / 60, 1),
              **{name: stages[name] for name in STAGES[:-1] if name in stages}}
    write_json_atomic(run.out / "report.json", report)
    return {"report": str(run.out / "report.json")}


STAGE_FUNCTIONS: dict[str, Callable[[AdaptConfig, AdaptRun, Any], dict[str, Any]]] = {
    "synthesize": _stage_synthesize,
    "mine": _stage_mine,
    "embedder": _stage_embedder,
    "reranker": _stage_reranker,
    "report": _stage_report,
}


def run_adapt(config: AdaptConfig | dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) an adaptation under the training lock; returns the report (also in
    ``OUT/report.json``). A stage's error marks the run failed and is re-raised; a rerun resumes there."""
    from indexer.index import Index

    if isinstance(config, dict):
        config = AdaptConfig(**config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, config.redis_url, config.lock_key), Index.open(config.index) as index:
        run = AdaptRun(config)
        _say(f"adaptation run {run.state['run_id']} ({'resumed' if run.resumed else 'new'}) in {out}")
        run.state.update(status="running", error=None)
        run.save()
        for stage in STAGES:
            if stage in run.state["stages"] or (stage in ("embedder", "reranker") and stage not in config.stages):
                continue
            _say(f"[bold]stage {stage}[/]")
            started = time.monotonic()
            try:
                outputs = STAGE_FUNCTIONS[stage](config, run, index)
            except BaseException as exc:
                run.state.update(status="failed", failed_stage=stage, error=f"{type(exc).__name__}: {exc}")
                run.save()
                raise
            run.state["stages"][stage] = {**outputs, "seconds": round(time.monotonic() - started, 1)}
            run.save()
        run.state.update(status="done")
        run.save()
    return read_json(out / "report.json")
