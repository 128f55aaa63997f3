"""Schemathesis generates valid and invalid requests from the API's OpenAPI schema: none may get a 5xx.

The app is embedded (no broker) on a real index copy with the tiny model; requests carry the API key, so
write endpoints run for real. Bounded by ``max_examples`` per operation.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from worker.api import create_app
from worker.settings import Settings

KEY = "fuzz-key"
# The schema does not depend on settings; the app that answers is the fixture below.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, service_index_template: Path, tiny_model_path: str):
    index_dir = tmp_path_factory.mktemp("fuzz") / "index"
    shutil.copytree(service_index_template, index_dir)
    app = create_app(Settings(
        index_dir=index_dir, rerank_model=tiny_model_path, rerank_options={"group_size": 4}, rerank_depth=4,
        api_keys=(KEY,), max_k=10, max_rerank_documents=6, max_document_chars=2000,
        default_deadline_ms=1000, max_deadline_ms=2000, max_body_bytes=256 * 1024, max_experiment_queries=3,
    ))
    yield app
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()  # schemathesis keeps the app's lifespan running; stop its threads


# /readyz answers 503 by design while the model loads; /metrics and /healthz take no input. /admin/retrain is
# left out: a valid body ({"adapt": true}) starts a real adaptation job (minutes of LLM query writing and
# training) that outlived this test and drew from torch's global generator while later tests ran (a seeded
# sampling test then diverged); its validation is tested in test_adapt.py and test_worker_settings.py.
@schema.exclude(path_regex="^/(readyz|metrics|healthz|admin/retrain)$").parametrize()
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_no_request_gets_a_server_error(case, fuzz_app) -> None:
    # An experiment runs whole query sets through search and rerank: it may take longer than the
    # client's default 10 s on a busy machine.
    response = case.call(app=fuzz_app, headers={"X-API-Key": KEY}, timeout=300)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} " \
                                       f"{response.text[:500]}"
