"""``grouprank train adapt`` on a small real index: SmolLM2 writes the queries, MiniLM is fine-tuned, a tiny
random Qwen2 stands in for the reranker (its quality is not the point here: the gates and the bookkeeping
are), and a run killed with SIGKILL leaves the index serving as it was and resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.index import Index


@pytest.fixture
def index_path(service_index_template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "index"
    shutil.copytree(service_index_template, path)
    return path


@pytest.fixture(scope="module")
def written(service_index_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The queries SmolLM2 writes for the index's passages (the synthesize stage's cache), once per module."""
    from trainer.readout_data import llm_generator, synthesize_queries

    cache = tmp_path_factory.mktemp("adapt-queries") / "queries.jsonl"
    with Index.open(service_index_template) as index:
        synthesize_queries(llm_generator("smollm2-135m-instruct"), list(index.iter_documents()), 40, cache)
    return cache


def out_with(written: Path, out: Path) -> Path:
    """``out`` holding the written queries: the synthesize stage resumes from them instead of writing again."""
    out.mkdir(parents=True)
    shutil.copy(written, out / "queries.jsonl")
    return out


def small(index: Path, out: Path, model: str, **overrides: object) -> dict:
    return {"index": str(index), "out": str(out), "minutes": 5, "queries": 40, "held_out": 6, "keep_k": 10,
            "depth": 10, "group_size": 3, "rerank_depth": 5, "reranker": model,
            "embedder": {"batch_size": 4, "epochs": 1.0, "max_seq_length": 64}, **overrides}


def test_adapt_promotes_what_passes_its_gates(index_path: Path, tmp_path: Path, tiny_model_path: str,
                                              written: Path) -> None:
    from reranker import load_reranker
    from trainer.adapt import run_adapt

    with Index.open(index_path) as index:
        old_embedder = index.config.embedder
    out = out_with(written, tmp_path / "out")
    report = run_adapt(small(index_path, out, tiny_model_path, margin=-1.0))  # always promote

    mine = report["mine"]
    assert mine["kept"] + mine["dropped"] == mine["train_queries"] > 0
    held = {q["doc_id"] for q in json.loads((tmp_path / "out" / "held-out.json").read_text())}
    mined = [json.loads(line) for line in (tmp_path / "out" / "mined.jsonl").read_text().splitlines()]
    sources = {c["id"] for m in mined for c in m["candidates"] if c["positive"]}
    assert held and not held & sources  # no held-out passage was trained on as a positive

    embedder = report["embedder"]
    assert embedder["promoted"] and embedder["training"]["steps"] >= 1
    with Index.open(index_path) as index:  # the index now serves the adapted embedder
        assert index.config.embedder == embedder["embedder"] != old_embedder
        ids = sorted(d.id for d in index.iter_documents())
        fresh = index.embedder.encode([index.get(i).body for i in ids], 64, False)
        np.testing.assert_allclose(index.embeddings(ids), fresh, atol=2e-2)
        after = index.search_batch([q["query"] for q in json.loads((tmp_path / "out" / "held-out.json").read_text())],
                                   k=10, mode="hybrid")
    held_out = json.loads((tmp_path / "out" / "held-out.json").read_text())
    ranks = [next((r for r, h in enumerate(hits, 1) if h.id == q["doc_id"]), None)
             for q, hits in zip(held_out, after, strict=True)]
    assert embedder["after"]["hybrid_mrr@10"] == pytest.approx(sum(1 / r for r in ranks if r) / len(ranks), abs=2e-3)

    reranker = report["reranker"]
    assert reranker["promoted"] and reranker["training"]["steps"] >= 1
    adapted = load_reranker("groupwise", model=reranker["model"])
    ranking = adapted.rerank("capital of France", ["Paris is the capital of France.", "Bananas are yellow."])
    assert len(ranking) == 2 and ranking.reranked
    assert json.loads((tmp_path / "out" / "report.json").read_text())["run_id"] == report["run_id"]


def test_a_model_that_does_not_win_is_not_promoted(index_path: Path, tmp_path: Path, tiny_model_path: str,
                                                    written: Path) -> None:
    from trainer.adapt import run_adapt

    with Index.open(index_path) as index:
        before = (index.config.embedder, index.generation)
    out = out_with(written, tmp_path / "out")
    report = run_adapt(small(index_path, out, tiny_model_path, margin=1.0, stages=["embedder"]))
    assert not report["embedder"]["promoted"] and "margin 1.0" in report["embedder"]["reason"]
    assert "reranker" not in report
    with Index.open(index_path) as index:
        assert (index.config.embedder, index.generation) == before
    assert not (tmp_path / "out" / "reranker").exists()


def test_one_run_at_a_time(index_path: Path, tmp_path: Path, tiny_model_path: str) -> None:
    from trainer.adapt import run_adapt
    from trainer.locks import PipelineBusy, file_lock

    with file_lock(tmp_path / "out" / "pipeline.lock"), pytest.raises(PipelineBusy):
        run_adapt(small(index_path, tmp_path / "out", tiny_model_path))


def test_the_gate_wants_a_gain_beyond_the_noise(tmp_path: Path) -> None:
    from trainer.adapt import AdaptConfig, gate

    config = AdaptConfig(index=str(tmp_path), out=str(tmp_path))  # margin 0, 2 standard errors
    assert gate([0.0] * 4, [1.0] * 4, config, "x")["promote"]  # the same gain on every query: no noise
    noisy = gate([0.0, 0.5, 0.0, 0.4], [0.5, 0.2, 0.4, 0.2], config, "x")  # +0.1 on average, SE 0.20
    assert noisy["gain"] == pytest.approx(0.1) and noisy["se"] == pytest.approx(0.2041, abs=1e-4)
    assert not noisy["promote"] and "<= margin 0.0 + 2.0 x SE" in noisy["reason"]
    assert gate([0.0, 0.5, 0.0, 0.4], [0.5, 0.2, 0.4, 0.2], AdaptConfig(index=".", out=".", noise_se=0.0),
                "x")["promote"]
    assert not gate([1.0] * 4, [0.0] * 4, AdaptConfig(index=".", out=".", margin=-0.5, noise_se=0.0), "x")["promote"]


def test_bad_settings_name_the_field(index_path: Path, tmp_path: Path) -> None:
    from grouprank.errors import InputError
    from trainer.adapt import AdaptConfig

    with pytest.raises(InputError) as caught:
        AdaptConfig(index=str(index_path), out=str(tmp_path), depth=5, keep_k=10)
    assert caught.value.field == "depth"
    with pytest.raises(InputError) as caught:
        AdaptConfig(index=str(index_path), out=str(tmp_path), stages=("retriever",))
    assert caught.value.field == "stages"


def test_sigkill_leaves_the_index_serving_and_a_rerun_resumes(index_path: Path, tmp_path: Path,
                                                              tiny_model_path: str, written: Path) -> None:
    out = out_with(written, tmp_path / "out")
    args = [sys.executable, "-m", "grouprank.cli.main", "train", "adapt", "--index", str(index_path), "--out",
            str(out), "--queries", "40", "--held-out", "6", "--model", tiny_model_path, "--stage", "embedder"]
    with Index.open(index_path) as index:
        before = (index.config.embedder, index.generation, index.search("capital of Germany", k=1)[0].id)
    log = (tmp_path / "stderr.txt").open("w")  # a file, not a pipe: a full pipe would stall the child
    quiet = {**os.environ, "GROUPRANK_PROGRESS": "0"}
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=quiet)
    state = out / "state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:  # kill once mining is done
        if state.is_file() and "mine" in json.loads(state.read_text()).get("stages", {}):
            break
        time.sleep(0.2)
    assert process.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = json.loads(state.read_text())
    assert killed["status"] == "running" and "embedder" not in killed["stages"]
    with Index.open(index_path) as index:
        assert (index.config.embedder, index.generation, index.search("capital of Germany", k=1)[0].id) == before

    log.close()
    rerun = subprocess.run(args, capture_output=True, text=True, env=quiet)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads(rerun.stdout)
    assert report["run_id"] == killed["run_id"]  # the same run, resumed
    assert report["synthesize"] == killed["stages"]["synthesize"]  # not run again (its seconds included)
    assert report["embedder"]["training"]["steps"] >= 1


def test_the_service_adapts_on_request_and_serves_what_won(service_index_template: Path, tmp_path: Path,
                                                           tiny_model_path: str, written: Path) -> None:
    """``POST /admin/retrain {"adapt": true}`` in the embedded service (no broker: the job runs in the API
    process): the adapted reranker is promoted into the registry and served, the report is in /admin/model."""
    from fastapi.testclient import TestClient

    from worker.api import create_app
    from worker.settings import Settings

    shutil.copytree(service_index_template, tmp_path / "index")
    out_with(written, tmp_path / "adapt")
    settings = Settings(index_dir=tmp_path / "index", registry_dir=tmp_path / "registry", adapt_dir=tmp_path / "adapt",
                        rerank_model=tiny_model_path, api_keys=("k",), default_deadline_ms=30_000)
    auth = {"Authorization": "Bearer k"}
    with TestClient(create_app(settings)) as client:
        assert client.post("/admin/retrain", json={"adapt": True}).status_code == 401
        bad = client.post("/admin/retrain", headers=auth, json={"adapt": True, "stages": ["retriever"]})
        assert bad.status_code == 422 and "stages" in json.dumps(bad.json())
        assert client.get("/admin/model").json()["adaptation"] is None
        task = client.post("/admin/retrain", headers=auth,
                           json={"adapt": True, "minutes": 5, "queries": 40, "held_out": 6, "stages": ["reranker"]})
        assert task.status_code == 202
        end = time.monotonic() + 600
        while (status := client.get(f"/tasks/{task.json()['task_id']}").json())["state"] not in ("SUCCESS", "FAILURE"):
            assert time.monotonic() < end, status
            time.sleep(0.5)
        assert status["state"] == "SUCCESS", status
        report = status["result"]
        model = client.get("/admin/model").json()
        assert model["adaptation"]["run_id"] == report["run_id"]
        if report["reranker"]["promoted"]:  # a random tiny model may or may not win: the registry says which
            assert model["version"] == report["reranker"]["version"] and model["history"][-1]["adaptation"]
        else:
            assert model["version"] is None and model["model"] == tiny_model_path
