"""Service settings from the environment, the Celery app's routing and delivery options, and the CLI's
checks of worker options (no broker needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grouprank.cli.main import app as cli
from grouprank.errors import InputError
from worker.celery_app import RERANK_TASK, create_celery
from worker.settings import DEFAULT_BROKER_URL, Settings

REPO = Path(__file__).resolve().parents[1]


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
    ("GROUPRANK_RETRAIN_EVERY_S", "-1", "must be positive"),
    ("GROUPRANK_RETRAIN_EVERY_S", "soon", "must be a number"),
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


def test_opensearch_settings_come_from_the_environment_and_win_over_the_index_dir() -> None:
    env = {"GROUPRANK_INDEX_DIR": "/srv/index", "GROUPRANK_OPENSEARCH_URL": "https://user:secret@os.example:9200",
           "GROUPRANK_OPENSEARCH_ALIAS": "docs"}
    settings = Settings.from_env(env)
    assert settings.opensearch_url == "https://user:secret@os.example:9200" and settings.opensearch_alias == "docs"
    assert settings.index_backend == "opensearch"
    config = settings.opensearch_config()
    assert (config.url, config.alias) == (settings.opensearch_url, "docs")
    assert settings.index_label() == "OpenSearch https://os.example:9200 alias docs"  # no credentials
    assert Settings.from_env(settings.to_env()) == settings

    # A blank variable (docker compose's ${GROUPRANK_OPENSEARCH_URL:-}) means "not set": the embedded index.
    embedded = Settings.from_env({**env, "GROUPRANK_OPENSEARCH_URL": ""})
    assert embedded.opensearch_url is None and embedded.index_backend == "embedded"
    assert embedded.index_label() == f"embedded {Path('/srv/index')}"
    assert Settings(opensearch_url="").opensearch_url is None  # e.g. `grouprank serve --opensearch-url ""`
    # Every blank variable counts as unset (pydantic-settings' env_ignore_empty): the default applies.
    blank = Settings.from_env({**env, "GROUPRANK_OPENSEARCH_ALIAS": "", "GROUPRANK_MAX_K": ""})
    assert blank.opensearch_alias == "grouprank" and blank.max_k == 100
    assert Settings().index_backend is None and Settings().opensearch_alias == "grouprank"


@pytest.mark.parametrize(("env", "variable", "message"), [
    ({"GROUPRANK_OPENSEARCH_URL": "localhost:9200"}, "GROUPRANK_OPENSEARCH_URL", r"must be an http\(s\) URL"),
    ({"GROUPRANK_OPENSEARCH_URL": "ftp://host"}, "GROUPRANK_OPENSEARCH_URL", r"must be an http\(s\) URL"),
    ({"GROUPRANK_OPENSEARCH_URL": "http://os:9200", "GROUPRANK_OPENSEARCH_ALIAS": "Docs"},
     "GROUPRANK_OPENSEARCH_ALIAS", "lowercase OpenSearch index name"),
    ({"GROUPRANK_OPENSEARCH_URL": "http://os:9200", "GROUPRANK_OPENSEARCH_ALIAS": "a b"},
     "GROUPRANK_OPENSEARCH_ALIAS", "lowercase OpenSearch index name"),
])
def test_bad_opensearch_settings_name_the_variable(env: dict[str, str], variable: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        Settings.from_env(env)
    assert caught.value.field == variable


def test_bad_opensearch_settings_name_the_field() -> None:
    with pytest.raises(InputError) as caught:
        Settings(opensearch_url="not a url")
    assert caught.value.field == "opensearch_url"
    with pytest.raises(InputError) as caught:
        Settings(opensearch_url="http://os:9200", opensearch_alias="has space")
    assert caught.value.field == "opensearch_alias"


def test_without_any_index_the_error_names_both_variables() -> None:
    from grouprank.errors import GroupRankError
    from worker.tasks import get_index

    with pytest.raises(GroupRankError, match="GROUPRANK_INDEX_DIR or GROUPRANK_OPENSEARCH_URL"):
        get_index(Settings())


def test_retraining_settings_and_the_beat_schedule() -> None:
    off = Settings.from_env({"GROUPRANK_RETRAIN_EVERY_S": "0"})  # 0 switches periodic retraining off
    assert off.retrain_every_s == 0 and create_celery(off).conf.beat_schedule == {}
    with pytest.raises(InputError, match="needs a pipeline config") as caught:
        Settings.from_env({"GROUPRANK_RETRAIN_EVERY_S": "60"})
    assert caught.value.field == "GROUPRANK_TRAIN_CONFIG"
    on = Settings.from_env({"GROUPRANK_RETRAIN_EVERY_S": "60", "GROUPRANK_TRAIN_CONFIG": "/etc/pipeline.json",
                            "GROUPRANK_REGISTRY_DIR": "/srv/registry"})
    assert on.train_config == Path("/etc/pipeline.json") and on.registry_dir == Path("/srv/registry")
    [entry] = create_celery(on).conf.beat_schedule.values()
    assert entry == {"task": "grouprank.train.pipeline", "schedule": 60.0, "options": {"queue": "train"}}


def test_adaptation_settings_and_the_beat_schedule() -> None:
    with pytest.raises(InputError, match="needs the embedded index") as caught:
        Settings.from_env({"GROUPRANK_ADAPT_EVERY_S": "3600"})
    assert caught.value.field == "GROUPRANK_INDEX_DIR"
    on = Settings.from_env({"GROUPRANK_ADAPT_EVERY_S": "3600", "GROUPRANK_INDEX_DIR": "/srv/index",
                            "GROUPRANK_ADAPT_MINUTES": "20"})
    assert on.adapt_minutes == 20 and on.adapt_dir is None
    [entry] = create_celery(on).conf.beat_schedule.values()
    assert entry == {"task": "grouprank.train.adapt", "schedule": 3600.0, "options": {"queue": "train"}}


def test_importing_the_api_reads_no_environment_and_app_from_env_names_a_bad_variable() -> None:
    """A bad GROUPRANK_* variable must not break ``import worker.api`` (nor an app built with explicit
    settings); only what reads the environment (``app_from_env``, the module-level Celery ``app``) fails."""
    code = textwrap.dedent("""
        import worker.api
        from grouprank.errors import InputError
        from worker.settings import Settings

        app = worker.api.create_app(Settings(max_k=5, broker_url="redis://127.0.0.1:1/0"))
        assert app.state.settings.max_k == 5
        for name, make in (("app_from_env", worker.api.app_from_env),
                           ("celery app", lambda: __import__("worker.celery_app").celery_app.app)):
            try:
                make()
            except InputError as exc:
                print(f"{name}: {exc.field}: {exc}")
            else:
                print(f"{name}: no error")
    """)
    env = {**os.environ, "GROUPRANK_MAX_K": "many", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    bad = "GROUPRANK_MAX_K: environment: field 'GROUPRANK_MAX_K': must be a number, got 'many'"
    assert result.stdout.splitlines() == [f"app_from_env: {bad}", f"celery app: {bad}"]


def test_explicit_settings_read_no_environment_and_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Settings(...)`` takes only the values given (pydantic-settings with the init source alone);
    ``from_env()`` reads the process environment. Explicit values are checked like variables are."""
    monkeypatch.setenv("GROUPRANK_MAX_K", "7")
    monkeypatch.setenv("GROUPRANK_API_KEYS", "k1,k2")
    assert Settings().max_k == 100 and Settings().api_keys == ()
    assert Settings.from_env().max_k == 7 and Settings.from_env().api_keys == ("k1", "k2")
    assert Settings.from_env(max_k=9).max_k == 9  # overrides win over the environment
    for values, field, message in (({"max_k": 0}, "max_k", "must be positive"),
                                   ({"rerank_cache_ttl_s": -1}, "rerank_cache_ttl_s", "or 0"),
                                   ({"max_kk": 3}, "max_kk", "not a setting")):
        with pytest.raises(InputError, match=message) as caught:
            Settings(**values)
        assert caught.value.field == field
    assert Settings(max_k=3).with_(max_k=4).max_k == 4
    with pytest.raises(InputError, match="must be positive"):
        Settings().with_(max_k=-4)  # a copy is validated again
