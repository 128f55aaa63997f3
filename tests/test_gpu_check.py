"""bench/gpu_check.py --smoke runs on the CPU and writes every part's numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_writes_all_fields(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--output", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["device"] in ("cpu", "cuda")
    for encoder in ("torch", "torch-bf16", "onnx-int8"):
        assert result["encoding"][encoder]["docs_per_s"] > 0
    for kind in ("flat", "ivf"):
        assert result["dense"][kind]["cpu_qps"] > 0
    rerank = result["rerank"]
    assert rerank["random_weights"] and rerank["parameters"] > 0
    for method in ("groupwise", "listwise", "pointwise"):
        row = rerank[method]
        assert row["wall_s"] > 0 and row["prompt_tokens"] > 0 and row["llm_calls"] > 0
    assert rerank["groupwise"]["decoding"] == "logprobs"  # slot decoding
    assert rerank["groupwise"]["critical_path_depth"] == 1  # all groups in one batch
    assert rerank["listwise"]["critical_path_depth"] > 1
    assert json.loads(proc.stdout) == result
