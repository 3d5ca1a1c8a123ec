"""The server's page in a real headless browser (Debian's chromium + chromedriver).

Skipped where they are not installed (``apt-get install chromium chromium-driver``).
With ``MARCO_PAGE_SCREENSHOT=PATH`` the test also saves a screenshot there (how
docs/serve_page.png was made, with the demo model: ``MARCO_PAGE_MODEL=DIR``).
"""

import json
import os
import shutil

import pytest

from marco_jax.loading import load
from serve_test import LiveServer

webdriver = pytest.importorskip("selenium.webdriver")
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()


def test_the_page_streams_an_answer_and_grows_the_tree(browser):
    path = os.environ.get("MARCO_PAGE_MODEL", "builtin:tiny")
    name = os.path.basename(path.rstrip("/"))
    live = LiveServer(load(path), name=name)
    try:
        browser.get(live.url + "/")
        assert browser.find_element(By.ID, "model").text == name
        browser.find_element(By.ID, "question").send_keys(
            "Tom has 3 apples and buys 4 more. How many apples does he have?")
        Select(browser.find_element(By.ID, "mode")).select_by_value("mcts-step")
        browser.find_element(By.ID, "submit").click()
        wait = WebDriverWait(browser, 240)
        wait.until(lambda b: b.find_element(By.ID, "status").text.startswith("done"))
        answer = browser.find_element(By.ID, "answer").text
        tree_id = browser.execute_script("return treeId;")
        tree = json.loads(browser.execute_script(
            f"return fetch('/v1/trees/{tree_id}').then(r => r.text());"))
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "details.node"))
                   == len(tree["nodes"]))
        assert answer.strip() and tree["best_path"]  # the final tree, not a snapshot
        root = browser.find_element(By.CSS_SELECTOR, "details.node.kind-root")
        children = root.find_elements(By.CSS_SELECTOR, ":scope > details.node")
        assert len(children) == sum(n["parent"] == 0 for n in tree["nodes"]) > 0
        child = children[0]
        child.find_element(By.CSS_SELECTOR, ":scope > summary").click()
        node = next(n for n in tree["nodes"] if str(n["id"]) == child.get_attribute("data-id"))
        panel = browser.find_element(By.ID, "node-text")
        assert browser.execute_script("return arguments[0].textContent;", panel) == node["text"]
        assert "value" in browser.find_element(By.CSS_SELECTOR, "#node-panel .stats").text
        if os.environ.get("MARCO_PAGE_SCREENSHOT"):
            browser.save_screenshot(os.environ["MARCO_PAGE_SCREENSHOT"])
    finally:
        live.stop()
