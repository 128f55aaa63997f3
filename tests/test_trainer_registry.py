"""The model registry (atomic serving pointer, history, rollback, pruning), the promotion gate and the
one-run-at-a-time locks (file and Redis)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from grouprank.errors import GroupRankError, NotFoundError
from trainer.evaluation import decide
from trainer.locks import PipelineBusy, file_lock, redis_lock
from trainer.pipeline import Run, _stage_promote, run_pipeline
from trainer.registry import Registry


def model_dir(path: Path, name: str) -> Path:
    """A directory shaped like a saved model (the registry only copies it; no weights needed)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"name": name}))
    (path / "metadata.json").write_text(json.dumps({"stage": "sft", "base_model": "base", "note": name}))
    return path


def test_registry_promote_rollback_prune(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    assert reg.current() is None and reg.versions() == []
    v1 = reg.add(model_dir(tmp_path / "m1", "one"), evaluation={"candidate": {"ndcg@10": 0.3}})
    v2 = reg.add(model_dir(tmp_path / "m2", "two"))
    assert (v1, v2) == ("v0001", "v0002")
    assert reg.current() is None  # adding does not promote
    assert reg.promote(v1).version == v1
    current = reg.current()
    assert current is not None and current.version == v1
    assert json.loads((current.path / "config.json").read_text())["name"] == "one"
    assert reg.info(v1)["evaluation"] == {"candidate": {"ndcg@10": 0.3}}
    reg.promote(v2, {"reason": "better"})
    assert reg.current().version == v2
    assert reg.rollback().version == v1 and reg.current().version == v1
    assert [(e["event"], e["version"], e["previous"]) for e in reg.history()] == [
        ("promote", v1, None), ("promote", v2, v1), ("rollback", v1, v2)]
    assert reg.history()[1]["reason"] == "better"
    assert not list((tmp_path / "registry").glob(".*"))  # no temporary files left behind

    for n in range(3, 6):
        reg.add(model_dir(tmp_path / f"m{n}", str(n)))
    reg.promote("v0005")
    deleted = reg.prune(keep=2)
    # Kept: the newest two (v0004, v0005) and the rollback target of the current model (v0001, promoted before).
    assert deleted == ["v0002", "v0003"]
    assert reg.versions() == ["v0001", "v0004", "v0005"]
    assert reg.rollback().version == "v0001"


def test_a_registered_model_is_readable_by_other_users(tmp_path: Path) -> None:
    """safetensors writes its files 0600 and mkdtemp makes folders 0700: a worker running as another user
    must still read a promoted model."""
    import stat

    source = model_dir(tmp_path / "m", "private")
    (source / "config.json").chmod(0o600)
    reg = Registry(tmp_path / "registry")
    folder = reg.path(reg.add(source))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {
        "config.json": 0o644, "metadata.json": 0o644}


def test_registry_errors(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    with pytest.raises(GroupRankError, match="nothing to roll back"):
        reg.rollback()
    with pytest.raises(NotFoundError, match="v0009"):
        reg.promote("v0009")
    v1 = reg.add(model_dir(tmp_path / "m1", "one"))
    reg.promote(v1)
    with pytest.raises(GroupRankError, match="first promoted model"):
        reg.rollback()
    with pytest.raises(GroupRankError, match="not a model directory"):
        reg.add(tmp_path)


def test_gate_decision() -> None:
    assert decide(0.52, 0.50, 0.01).promote
    assert not decide(0.505, 0.50, 0.01).promote
    assert not decide(0.50, 0.50, 0.0).promote  # a tie does not replace the serving model
    assert "does not beat" in decide(0.4, 0.5, 0.0).reason
    # A calibrated fusion weight of 0: the model adds nothing over the retriever, whatever the metric says.
    assert decide(0.52, 0.50, 0.01, weight=0.3).promote
    zero = decide(0.52, 0.50, 0.01, weight=0.0)
    assert not zero.promote and "adds nothing" in zero.reason and zero.fusion_weight == 0.0
    assert not decide(0.40, 0.50, 0.0, weight=0.5).promote


def adapter_dir(path: Path, weight: float) -> Path:
    """A directory shaped like a saved LoRA adapter with a calibrated fusion weight (no real weights)."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base", "r": 4}))
    (path / "adapter_model.safetensors").write_bytes(b"not really weights")
    (path / "metadata.json").write_text(json.dumps({"stage": "grpo", "fusion_weight": weight}))
    return path


def test_registry_keeps_adapter_folders_and_their_fusion_weight(tmp_path: Path) -> None:
    from reranker.models import model_metadata

    reg = Registry(tmp_path / "registry")
    v1 = reg.add(adapter_dir(tmp_path / "a1", 0.4), evaluation={"run_id": "r1"})
    reg.promote(v1)
    current = reg.current()
    assert current is not None and reg.path(v1) == current.path
    assert (current.path / "adapter_model.safetensors").read_bytes() == b"not really weights"
    assert model_metadata(str(current.path))["fusion_weight"] == 0.4  # what load_reranker fuses with
    assert reg.info(v1)["metadata"] == {"stage": "grpo", "fusion_weight": 0.4}
    # Metadata given to add is merged into the copy's metadata.json (the source folder is left alone).
    v2 = reg.add(adapter_dir(tmp_path / "a2", 0.4), metadata={"fusion_weight": 0.7, "calibration": {"weight": 0.7}})
    assert reg.info(v2)["metadata"] == {"stage": "grpo", "fusion_weight": 0.7, "calibration": {"weight": 0.7}}
    assert json.loads((tmp_path / "a2" / "metadata.json").read_text())["fusion_weight"] == 0.4
    v3 = reg.add(model_dir(tmp_path / "m3", "three"), metadata={"fusion_weight": 0.2})
    assert reg.info(v3)["metadata"]["fusion_weight"] == 0.2 and reg.info(v3)["metadata"]["note"] == "three"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.json").write_text("{}")
    with pytest.raises(GroupRankError, match=r"adapter_config\.json"):
        reg.add(empty)


def test_serving_a_promoted_adapter_fuses_with_its_stored_weight(tiny_model_path: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """worker.tasks serves the registry's current model through load_reranker(model=path), which merges
    the adapter with its base model and takes the weight from its metadata.json."""
    import peft
    from transformers import AutoModelForCausalLM

    from reranker.scoring import fuse
    from worker.settings import Settings
    from worker.tasks import serving_model, serving_reranker

    monkeypatch.setenv("GROUPRANK_CACHE", str(tmp_path / "cache"))
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                                peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "metadata.json").write_text(json.dumps({"stage": "grpo", "fusion_weight": 0.25}))
    reg = Registry(tmp_path / "registry")
    reg.promote(reg.add(tmp_path / "adapter"))
    settings = Settings(registry_dir=tmp_path / "registry", rerank_options={"group_size": 2, "dtype": "float32"})
    assert serving_model(settings) == (str(tmp_path / "registry" / "models" / "v0001"), "v0001")
    served, version = serving_reranker(settings)
    assert version == "v0001" and served.weight == 0.25
    ranking = served.rerank("wing", [{"id": "a", "text": "a wing", "score": 2.0},
                                     {"id": "b", "text": "a pipe", "score": 1.0}])
    expected = fuse(2, {0: ranking.rerank_scores["a"], 1: ranking.rerank_scores["b"]}, [2.0, 1.0], 0.25,
                    served.fallback)
    assert dict(ranking) == pytest.approx({"ab"[i]: s for i, s in zip(expected.order, expected.scores, strict=True)})


def test_rejected_candidate_leaves_the_registry_alone(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    reg.promote(reg.add(model_dir(tmp_path / "m1", "one")))
    run = Run(tmp_path / "run", {"run_id": "r1", "stages": {"evaluate": {"promote": False, "reason": "worse"}}})

    class Config:
        registry_dir = str(tmp_path / "registry")
        keep_models = 5

    assert _stage_promote(Config(), run) == {"promoted": False, "version": None, "current": "v0001"}  # type: ignore[arg-type]
    assert reg.versions() == ["v0001"] and reg.current().version == "v0001"


def test_file_lock_allows_one_run(tmp_path: Path) -> None:
    config = {"work_dir": str(tmp_path / "work"), "registry_dir": str(tmp_path / "reg"),
              "index_dir": str(tmp_path / "no-index"), "queries": "q.tsv", "qrels": "qrels.tsv"}
    with file_lock(tmp_path / "work" / "pipeline.lock"):
        with pytest.raises(PipelineBusy):
            run_pipeline(config)
        assert not (tmp_path / "work" / "runs").exists()  # refused before starting a run
        with pytest.raises(PipelineBusy), file_lock(tmp_path / "work" / "pipeline.lock"):
            pass
    with file_lock(tmp_path / "work" / "pipeline.lock"):  # released: free again
        pass


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    redis = pytest.importorskip("redis")
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server to start a private Redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.skip("redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


def test_redis_lock(redis_url: str) -> None:
    import redis

    key = f"grouprank-test:{uuid.uuid4().hex}"
    with redis_lock(redis_url, key), pytest.raises(PipelineBusy), redis_lock(redis_url, key):
        pass
    with redis_lock(redis_url, key):  # released
        pass
    # A holder that died without releasing (no renewal): the lock frees itself when its TTL runs out.
    client = redis.Redis.from_url(redis_url)
    assert client.lock(key, timeout=1, blocking=False).acquire()
    with pytest.raises(PipelineBusy), redis_lock(redis_url, key):
        pass
    time.sleep(1.5)
    with redis_lock(redis_url, key):
        pass
    # A live holder keeps its lock past the TTL: the renewer extends it.
    with redis_lock(redis_url, key, ttl_s=0.6):
        time.sleep(1.5)
        with pytest.raises(PipelineBusy), redis_lock(redis_url, key):
            pass
