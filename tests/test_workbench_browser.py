"""The workbench in a real browser: headless Chromium (selenium + chromedriver) against a real
``grouprank serve`` with a small index and the tiny random model.

Skips when chromium, chromedriver or selenium is missing. With ``GROUPRANK_SCREENSHOTS=1`` the comparison
page is saved as docs/workbench-compare.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from grouprank.trec_files import read_qrels
from tests.processes import stop
from worker.judgments import query_id
from worker.settings import Settings

KEY = "carol:browser-secret"
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="needs chromium and chromedriver (apt-get install -y chromium chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, service_index_template: Path, tiny_model_path: str) -> Iterator[str]:
    """``grouprank serve`` on a free port with a copy of the service index; its base URL."""
    root = tmp_path_factory.mktemp("workbench-serve")
    shutil.copytree(service_index_template, root / "index")
    settings = Settings(index_dir=root / "index", rerank_model=tiny_model_path, rerank_options={"group_size": 4},
                        rerank_depth=8, api_keys=(KEY,), default_deadline_ms=60_000)
    env = {k: v for k, v in os.environ.items() if k not in Settings.env_names()}
    env.update(settings.to_env(), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GROUPRANK_PROGRESS="0")
    port = free_port()
    log = root / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "grouprank.cli.main", "serve", "--port", str(port)],
                                   cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 420
        while time.monotonic() < end and process.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail(f"grouprank serve did not get ready:\n{log.read_text(errors='replace')[-3000:]}")
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def ids(driver, column: str) -> list[str]:
    return [li.get_attribute("data-doc") for li in driver.find_elements(By.CSS_SELECTOR, f"#col-{column} li.hit")]


def chosen(driver, doc_id: str) -> list[str]:
    return [b.get_attribute("data-grade") for b in
            driver.find_elements(By.CSS_SELECTOR, f'li.hit[data-doc="{doc_id}"] button.grade.chosen')]


def grade(driver, column: str, doc_id: str, value: int) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#col-{column} li.hit[data-doc="{doc_id}"] '
                                         f'button.grade[data-grade="{value}"]').click()


def test_compare_grade_reload_and_export(server: str, browser) -> None:
    wait = WebDriverWait(browser, 180)
    browser.get(f"{server}/ui")
    browser.find_element(By.ID, "q").send_keys("capital of France")
    Select(browser.find_element(By.ID, "mode")).select_by_value("bm25")
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("5")
    browser.find_element(By.ID, "go").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#col-grouprank li.hit")))
    first, reranked = ids(browser, "first"), ids(browser, "grouprank")
    assert len(first) == len(reranked) == 5 and first[0] == "paris"
    assert "ms" in browser.find_element(By.ID, "timings").text
    assert browser.find_element(By.ID, "model-name").text

    doc = reranked[0]
    grade(browser, "grouprank", doc, 3)  # no API key yet: refused, with the reason on the page
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "grade not saved (401)"))
    assert chosen(browser, doc) == []
    browser.find_element(By.ID, "apikey").send_keys(KEY)
    grade(browser, "grouprank", doc, 3)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"saved: {doc} = 3 (by carol)"))
    grade(browser, "first", "paris", 2) if doc != "paris" else grade(browser, "first", first[1], 0)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "saved:"))
    assert chosen(browser, doc) == ["3", "3"]  # both columns show it
    if os.environ.get("GROUPRANK_SCREENSHOTS") == "1":
        browser.save_screenshot(str(REPO / "docs" / "workbench-compare.png"))

    browser.refresh()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#col-grouprank li.hit")))
    assert chosen(browser, doc) == ["3", "3"], "the grade did not survive a reload"

    qrels_text = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById('export-qrels').href).then(r => r.text()).then(done);")
    assert f"{query_id('capital of France')} 0 {doc} 3" in qrels_text.splitlines()


def test_keys_grade_the_selected_hit_and_a_search_shows_it_is_running(server: str, browser) -> None:
    """Click a hit, press 2: graded (and no longer marked unjudged). Submitting a query disables the button
    and says the LLM stage is running until the next page arrives; an empty query is refused in place."""
    wait = WebDriverWait(browser, 180)
    browser.get(f"{server}/ui?q=a+yellow+fruit&mode=bm25&k=3")  # a query no other test judges
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#col-first li.hit")))
    browser.find_element(By.ID, "apikey").clear()
    browser.find_element(By.ID, "apikey").send_keys(KEY)
    doc = ids(browser, "first")[0]
    browser.find_element(By.CSS_SELECTOR, f'#col-first li.hit[data-doc="{doc}"] .snippet').click()
    browser.find_element(By.TAG_NAME, "body").send_keys("2")
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"saved: {doc} = 2"))
    assert chosen(browser, doc) and set(chosen(browser, doc)) == {"2"}
    assert not browser.find_elements(By.CSS_SELECTOR, f'li.hit.unjudged[data-doc="{doc}"]')

    query = browser.find_element(By.ID, "q")
    query.clear()
    browser.find_element(By.ID, "go").click()  # empty: refused on the page, nothing sent
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "type a query first"))
    query.send_keys("capital of France")
    # the page's own handler runs first; one added after it holds the navigation so the state can be read
    state = browser.execute_script(
        "const form = document.getElementById('search');"
        "form.addEventListener('submit', (e) => e.preventDefault()); form.requestSubmit();"
        "return [document.getElementById('go').disabled, document.getElementById('status').textContent];")
    assert state[0] is True and "reranking" in state[1]


def test_a_two_query_experiment_from_the_page(server: str, browser) -> None:
    """Save a query set from the experiments page, run it, and read the per-query table and the plot.
    Runs after the grading test, whose grade makes "capital of France" a judged query."""
    wait = WebDriverWait(browser, 300)
    browser.get(f"{server}/ui/experiments")
    browser.find_element(By.ID, "apikey").clear()
    browser.find_element(By.ID, "apikey").send_keys(KEY)
    browser.find_element(By.ID, "set-name").send_keys("two queries")
    browser.find_element(By.ID, "set-queries").send_keys("capital of France\nwhich fruit is yellow")
    browser.find_element(By.ID, "save-set").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, 'button.run-set[data-set="two queries"]')))
    Select(browser.find_element(By.ID, "exp-mode")).select_by_value("bm25")
    browser.find_element(By.CSS_SELECTOR, 'button.run-set[data-set="two queries"]').click()
    wait.until(ec.presence_of_element_located((By.ID, "per-query")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#per-query tr")
    assert len(rows) == 4  # header, two queries, totals
    assert "capital of France" in rows[1].text and "→" in rows[1].text  # judged: both orders measured
    assert "mean over 1 judged" in browser.find_element(By.ID, "totals").text
    assert browser.execute_script("return document.getElementById('plot').naturalWidth") > 0
    if os.environ.get("GROUPRANK_SCREENSHOTS") == "1":
        browser.save_screenshot(str(REPO / "docs" / "workbench-experiment.png"))


def test_exported_qrels_are_trainer_readable(server: str, tmp_path: Path) -> None:
    path = tmp_path / "judgments.qrels"
    path.write_text(httpx.get(f"{server}/ui/judgments.qrels").text)
    qrels = read_qrels(path)
    assert 3 in qrels[query_id("capital of France")].values()
