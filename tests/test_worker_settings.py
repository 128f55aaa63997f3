"""Service settings from the environment, the Celery app's routing and delivery options, and the CLI's
checks of worker options (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from grouprank.cli.main import app as cli
from grouprank.errors import InputError
from worker.celery_app import RERANK_TASK, create_celery
from worker.settings import DEFAULT_BROKER_URL, Settings


def test_settings_come_from_grouprank_variables() -> None:
    env = {"GROUPRANK_INDEX_DIR": "/srv/index", "GROUPRANK_BROKER_URL": "redis://r:6379/1",
           "GROUPRANK_API_KEYS": "one, two ,", "GROUPRANK_PROTECT_READS": "true", "GROUPRANK_MAX_K": "50",
           "GROUPRANK_DEFAULT_DEADLINE_MS": "750.5", "GROUPRANK_RERANK_OPTIONS": '{"group_size": 10}',
           "UNRELATED": "x"}
    settings = Settings.from_env(env)
    assert settings.index_dir == Path("/srv/index") and settings.broker_url == "redis://r:6379/1"
    assert settings.api_keys == ("one", "two") and settings.protect_reads is True
    assert settings.max_k == 50 and settings.default_deadline_ms == 750.5
    assert settings.reranker_kwargs()["group_size"] == 10
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings.from_env({}).embedded and Settings.from_env({}).celery_broker_url == DEFAULT_BROKER_URL


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("GROUPRANK_MAX_K", "many", "must be a number"),
    ("GROUPRANK_MAX_K", "0", "must be positive"),
    ("GROUPRANK_PROTECT_READS", "maybe", "1/0/true/false"),
    ("GROUPRANK_RERANK_OPTIONS", "[1, 2]", "JSON object"),
    ("GROUPRANK_RERANK_OPTIONS", "{", "malformed JSON"),
    ("GROUPRANK_VISIBILITY_TIMEOUT_S", "30", "must exceed every task time limit"),
])
def test_bad_settings_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        Settings.from_env({variable: value})
    assert caught.value.field == variable


def test_celery_routes_each_task_to_its_queue_with_late_acks() -> None:
    settings = Settings(key_prefix="p:", visibility_timeout_s=4000)
    celery = create_celery(settings)
    router = celery.amqp.router
    assert router.route({}, RERANK_TASK)["queue"].name == "rerank"
    assert router.route({}, "grouprank.index.reindex")["queue"].name == "index"
    assert router.route({}, "grouprank.train.retrain")["queue"].name == "train"
    conf = celery.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 4000
    assert conf.broker_transport_options["global_keyprefix"] == "p:"
    assert conf.task_annotations[RERANK_TASK]["soft_time_limit"] == settings.rerank_soft_time_limit_s
    assert "max_retries" not in conf.broker_transport_options  # workers keep reconnecting
    assert create_celery(settings, fail_fast=True).conf.broker_transport_options["max_retries"] == 0
    celery.loader.import_default_modules()
    assert {RERANK_TASK, "grouprank.index.reindex", "grouprank.index.upsert"} <= set(celery.tasks)


@pytest.mark.parametrize(("args", "message"), [
    (["--queues", "gpu"], "unknown queue"),
    (["--queues", "rerank", "--concurrency", "2"], "one process"),
    (["--queues", "rerank,index", "--pool", "prefork"], "one process"),
])
def test_worker_cli_refuses_bad_queue_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["worker", *args])
    assert isinstance(result.exception, InputError) and message in str(result.exception)
