"""scripts/show_tree.py: a search tree JSON rendered as one self-contained HTML page."""

import html.parser
import json
import pathlib
import re

from cli_test import assert_one_line_error, run_script

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the browser fixture (conftest.py) fails the tests with why
    pass

TREE = {
    "id": "mgsm-zh-3",
    "question": "珍妮特的鸭子每天下16个蛋。<script>alert(1)</script>",
    "answer": "18",
    "chosen_answer": "18.0",
    "config": {"rollouts": 12, "temperature": 0.7},
    "nodes": [
        {"id": 0, "parent": -1, "text": "问题：\n" + "很长的提示。" * 100, "visits": 12,
         "value": 0.8333, "depth": 0, "terminal": False, "kind": "root"},
        {"id": 1, "parent": 0, "text": "第一步：16 - 3 - 4 = 9", "visits": 3, "value": 0.5,
         "depth": 1, "terminal": False, "kind": "action"},
        {"id": 3, "parent": 0, "text": "Step 1: eggs left", "visits": 8, "value": 0.9,
         "depth": 1, "terminal": False, "kind": "action",
         "rollout_text": "so the answer is 18", "rollout_value": 0.8,
         "tokens": [{"text": t, "confidence": c, "top": [[t, -0.1], ["<i>", -2.5]]}
                    for t, c in (("Step", 0.9), (" 1", 0.8), (":", 0.95), (" eggs", 0.4),
                                 (" left", 0.7))]},
        {"id": 5, "parent": 3, "text": "Wait! Maybe I made some mistakes! <script>x()</script>",
         "visits": 0, "value": None, "depth": 2, "terminal": False, "kind": "reflection"},
        {"id": 7, "parent": 3, "text": "9 * 2 = 18. 答案是 18", "visits": 6, "value": 1.0,
         "depth": 2, "terminal": True, "kind": "action"},
    ],
    "best_path": [0, 3, 7],
}


class DetailsCollector(html.parser.HTMLParser):
    """Every node <details>: its data-id, classes and open flag."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[int, tuple[set[str], bool]] = {}
        self.order: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "details" and "data-id" in a:
            self.nodes[int(a["data-id"])] = (set(a["class"].split()), "open" in a)
            self.order.append(int(a["data-id"]))


def write_tree(tmp_path: pathlib.Path, tree: object, name: str = "tree.json") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(json.dumps(tree, ensure_ascii=False), encoding="utf-8")
    return path


def render(tmp_path: pathlib.Path, tree: dict) -> str:
    path = write_tree(tmp_path, tree)
    proc = run_script("show_tree.py", str(path))
    assert proc.returncode == 0, proc.stderr
    name = tree["id"] if tree.get("id") is not None else path.stem
    return (tmp_path / f"{name}.html").read_text(encoding="utf-8")


def test_a_trees_file_shows_the_tree_named_by_id(tmp_path):
    path = tmp_path / "trees.jsonl"
    other = {**TREE, "id": "other", "question": "another question\u2028on two lines"}
    path.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in (TREE, other)),
                    encoding="utf-8")
    assert_one_line_error(run_script("show_tree.py", str(path)), "choose one with --id")
    assert_one_line_error(run_script("show_tree.py", str(path), "--id", "nope"),
                          "no tree with id 'nope'")
    proc = run_script("show_tree.py", str(path), "--id", "other")
    assert proc.returncode == 0, proc.stderr
    assert "another question" in (tmp_path / "other.html").read_text(encoding="utf-8")
    with open(path, "a", encoding="utf-8") as f:
        f.write("{torn\n")
    assert_one_line_error(run_script("show_tree.py", str(path), "--id", "other"),
                          "trees.jsonl:3: invalid JSON")


def test_renders_small_tree(tmp_path):
    page = render(tmp_path, TREE)
    assert page.startswith("<!DOCTYPE html>") and 'charset="utf-8"' in page
    assert "<link" not in page and "src=" not in page and "http" not in page
    # Only the page's own scripts (code, the tree's data, drawing it); the texts' <script>
    # come out escaped, in the list as HTML and in the data as JSON.
    assert page.count("<script") == 3 and "<script>alert" not in page and "<script>x()" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;script&gt;x()" in page
    data = re.search(r'<script type="application/json" class="tree-data">(.*?)</script>', page)
    assert {n["id"]: n["text"] for n in json.loads(data.group(1))["nodes"]} == {
        n["id"]: n["text"] for n in TREE["nodes"]}
    assert "珍妮特的鸭子每天下16个蛋" in page and "答案是 18" in page
    assert "rollouts" in page and "temperature" in page and "0.7" in page
    assert '<span class="match">yes</span>' in page
    assert "value 0.833" in page and "value 1.000" in page and "value -" in page
    assert "rollout (value 0.800)" in page and "so the answer is 18" in page
    assert page.count('class="terminal"') == 1
    assert "<th>nodes</th><td>5</td>" in page and "<th>max depth</th><td>2</td>" in page
    assert "(604 chars, 2 lines)" in page  # the long root prompt is folded

    collector = DetailsCollector()
    collector.feed(page)
    nodes = collector.nodes
    assert {i for i, (cls, _) in nodes.items() if "best" in cls} == {0, 3, 7}
    assert {i for i, (_, is_open) in nodes.items() if is_open} == {0, 3, 7}
    assert "kind-reflection" in nodes[5][0] and "kind-reflection" not in nodes[7][0]
    assert collector.order == [0, 3, 7, 5, 1]  # children by visits, most visited first
    # Nesting: node 7 and 5 sit inside node 3, which closes before node 1 opens.
    assert page.index('data-id="3"') < page.index('data-id="5"') < page.index('data-id="1"')
    assert page.count("<details") == page.count("</details>")


def test_output_option_and_mismatch(tmp_path):
    path = write_tree(tmp_path, TREE | {"chosen_answer": "17", "best_path": []})
    out = tmp_path / "sub.html"
    proc = run_script("show_tree.py", str(path), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    page = out.read_text(encoding="utf-8")
    collector = DetailsCollector()
    collector.feed(page)
    assert '<span class="mismatch">no</span>' in page
    assert not any("best" in classes for classes, _ in collector.nodes.values())


def test_deep_and_wide_tree(tmp_path):
    chain = [{"id": i, "parent": i - 1, "text": f"步骤 {i}", "visits": 1, "value": 0.5,
              "kind": "action"} for i in range(1, 3000)]
    wide = [{"id": 3000 + i, "parent": 0, "text": "x", "visits": i, "value": None}
            for i in range(2000)]
    root = {"id": 0, "parent": -1, "text": "根", "visits": 5000, "value": 0.5, "kind": "root"}
    page = render(tmp_path, {"id": "big", "question": "q", "nodes": [root, *chain, *wide],
                             "best_path": list(range(3000))})
    assert "<th>nodes</th><td>5000</td>" in page and "<th>max depth</th><td>2999</td>" in page
    assert page.count("<details class=\"node") == 5000


def test_file_errors(tmp_path):
    proc = run_script("show_tree.py", str(tmp_path / "missing.json"))
    assert_one_line_error(proc, "missing.json: no such file")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_one_line_error(run_script("show_tree.py", str(bad)), "bad.json: invalid JSON")
    path = write_tree(tmp_path, {"id": "x"}, "nonodes.json")
    assert_one_line_error(run_script("show_tree.py", str(path)), 'nonodes.json: no "nodes"')


def test_node_errors(tmp_path):
    orphan = TREE | {"nodes": [*TREE["nodes"], {"id": 42, "parent": 99, "text": "?", "visits": 0}]}
    path = write_tree(tmp_path, orphan)
    assert_one_line_error(run_script("show_tree.py", str(path)), "node 42: parent 99 does not exist")
    cycle = {"nodes": [{"id": 0, "parent": -1}, {"id": 1, "parent": 2}, {"id": 2, "parent": 1}]}
    path = write_tree(tmp_path, cycle)
    assert_one_line_error(run_script("show_tree.py", str(path)), "not reachable from a root")
    path = write_tree(tmp_path, TREE | {"best_path": [0, 3, 8]})
    assert_one_line_error(run_script("show_tree.py", str(path)), "best_path node 8 does not exist")


def test_v2_types_verdicts_and_reflection_branch(tmp_path):
    def node(i, parent, kind, correct=None, terminal=False):
        return {"id": i, "parent": parent, "text": f"<{kind}>{i}</{kind}>", "visits": 1,
                "value": 0.5, "kind": kind, "terminal": terminal, "correct": correct}
    tree = {"id": "v2", "question": "q", "answer": "3", "best_path": [0, 1, 2, 3, 4], "nodes": [
        node(0, -1, "root"), node(1, 0, "sub_task"), node(2, 1, "thinking"),
        node(3, 2, "double_check"), node(4, 3, "answer", True, True),
        node(5, 3, "answer", False, True), node(6, 3, "reflection"),
        node(7, 6, "thinking_from_scratch"), node(8, 7, "thinking")]}
    page = render(tmp_path, tree)
    found = DetailsCollector()
    found.feed(page)
    assert "kind-double_check" in found.nodes[3][0] and "kind-answer" in found.nodes[4][0]
    branch = {i for i, (classes, _) in found.nodes.items() if "reflection-branch" in classes}
    assert branch == {6, 7, 8}
    assert page.count('<span class="verdict-correct">') == 1
    assert page.count('<span class="verdict-wrong">') == 1
    colours = set(re.findall(r'<span class="kind" style="color: (#[0-9a-f]{6})">', page))
    assert len(colours) == 7  # root, sub_task, thinking, double_check, answer, reflection, tfs


def test_the_picture_in_a_browser(tmp_path, browser):
    """The page draws every node, marks the best path and reflections, and shows a clicked
    node (at first the best path's end) in its panel."""
    render(tmp_path, TREE)
    browser.get((tmp_path / "mgsm-zh-3.html").as_uri())
    drawn = {int(g.get_attribute("data-id")): set(g.get_attribute("class").split())
             for g in browser.find_elements(By.CSS_SELECTOR, "svg .tree-node")}
    assert sorted(drawn) == [0, 1, 3, 5, 7]
    assert {i for i, classes in drawn.items() if "best" in classes} == {0, 3, 7}
    assert {i for i, classes in drawn.items() if "reflection-branch" in classes} == {5}
    assert browser.find_elements(By.CSS_SELECTOR, 'svg .tree-node[data-id="5"] path.dot')
    assert browser.find_elements(By.CSS_SELECTOR, 'svg .tree-node[data-id="7"] rect.dot')
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg .edge.best")) == 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg .edge.reflection-branch")) == 1
    # Sized by visits: node 3 (8 visits) larger than node 1 (3) and the unvisited reflection.
    radius = {i: float(browser.find_element(By.CSS_SELECTOR, f'svg .tree-node[data-id="{i}"] '
                                            "circle").get_attribute("r")) for i in (1, 3)}
    assert radius[3] > radius[1]
    # Coloured by value: unvisited grey, the two ends of the scale differ.
    fill = {i: browser.find_element(By.CSS_SELECTOR, f'svg .tree-node[data-id="{i}"] .dot')
            .get_attribute("fill") for i in (1, 5, 7)}
    assert fill[5] == "#d0d7de" and len(set(fill.values())) == 3
    text = browser.find_element(By.ID, "node-text")
    shown = browser.execute_script("return arguments[0].textContent;", text)
    assert shown == "9 * 2 = 18. 答案是 18"
    browser.find_element(By.CSS_SELECTOR, 'svg .tree-node[data-id="3"]').click()
    panel = browser.find_element(By.ID, "node-panel")
    assert browser.execute_script("return arguments[0].textContent;",
                                  browser.find_element(By.ID, "node-text")) == "Step 1: eggs left"
    assert "Rollout (confidence 0.800)" in panel.text and "so the answer is 18" in panel.text
    assert "visits 8 · value 0.900" in panel.find_element(By.CSS_SELECTOR, ".stats").text
    # Its tokens (the record keeps them): tinted text, and a row each with the alternatives.
    tokens = panel.find_elements(By.CSS_SELECTOR, "#node-tokens .token")
    assert [browser.execute_script("return arguments[0].textContent;", t) for t in tokens] \
        == ["Step", " 1", ":", " eggs", " left"]
    rows = panel.find_elements(By.CSS_SELECTOR, ".token-table tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows] == \
        ["0.900", "0.800", "0.950", "0.400", "0.700"]
    assert rows[3].find_elements(By.TAG_NAME, "td")[3].text == "·eggs 90.5% · <i> 8.2%"
    # The text list selects the same way.
    browser.find_element(By.CSS_SELECTOR, "details.tree-list > summary").click()
    browser.find_element(By.CSS_SELECTOR, 'details.node[data-id="1"] > summary').click()
    assert "第一步" in browser.find_element(By.ID, "node-text").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#node-panel .token-table")  # none kept
    assert browser.find_elements(By.CSS_SELECTOR, 'svg .tree-node.selected[data-id="1"]')


def test_a_big_tree_draws_in_a_browser(tmp_path, browser):
    chain = [{"id": i, "parent": i - 1, "text": f"步骤 {i}", "visits": 1, "value": 0.5}
             for i in range(1, 1500)]
    wide = [{"id": 1500 + i, "parent": 0, "text": "x", "visits": i, "value": i / 1000}
            for i in range(1000)]
    root = {"id": 0, "parent": -1, "text": "根", "visits": 2500, "value": 0.5, "kind": "root"}
    render(tmp_path, {"id": "big", "nodes": [root, *chain, *wide], "best_path": [0, 1, 2]})
    browser.get((tmp_path / "big.html").as_uri())
    count = "return document.querySelectorAll('svg .tree-node').length;"
    WebDriverWait(browser, 60).until(lambda b: b.execute_script(count) == 2500)
