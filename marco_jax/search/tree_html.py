"""A search tree (the JSON a search writes) as HTML: a nested collapsible tree.

Each node shows its kind (v1: action or reflection; v2: sub_task, thinking,
double_check, answer, reflection, thinking_from_scratch, each in its own
colour), visits, mean value, terminal marker, the verifier's verdict on an
answer (correct / wrong) and text; everything grown under a reflection is
marked as its branch. Children are ordered by visits, the best path is
highlighted and expanded. ``scripts/show_tree.py`` writes it as a page; the
server's page shows it while a search grows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import pathlib
import re

from marco_jax.errors import MarcoError

# Node types in their colours; any other type gets one of PALETTE by its name.
KIND_COLOURS = {"root": "#0550ae", "action": "#24292f", "reflection": "#8250df",
                "sub_task": "#0969da", "thinking": "#1a7f37", "double_check": "#9a6700",
                "answer": "#cf222e", "thinking_from_scratch": "#bf3989"}
PALETTE = ("#0a3069", "#116329", "#953800", "#6639ba", "#8c6d00", "#a40e26")
LONG_CHARS = 400  # longer texts (or more lines) are folded behind their own <summary>
LONG_LINES = 8
PREVIEW_CHARS = 80

CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
pre { white-space: pre-wrap; word-break: break-word; margin: .3em 0; padding: .4em;
      background: #f6f6f6; border-radius: 3px; }
.match { color: #1a7f37; font-weight: bold; }
.mismatch { color: #cf222e; font-weight: bold; }
details.node { margin: 3px 0 3px 1.2em; padding: 2px 6px; border-left: 3px solid #ddd; }
details.node > summary { cursor: pointer; }
details.node.best { border-left: 3px solid #1a7f37; background: #f0faf2; }
details.kind-reflection { border-left-style: dashed; background: #fbf5ff; }
details.kind-reflection.best { background: #eef5f0; }
.kind { display: inline-block; min-width: 5.5em; font-weight: bold; }
.kind-reflection > summary .kind { color: #8250df; }
.kind-root > summary .kind { color: #0550ae; }
.stats { color: #555; font-family: monospace; }
.terminal { color: #9a6700; font-weight: bold; }
.verdict-correct { color: #1a7f37; font-weight: bold; }
.verdict-wrong { color: #cf222e; font-weight: bold; }
details.reflection-branch { border-left-style: dashed; border-left-color: #c297ff; }
.preview { color: #777; }
.fold > summary { color: #555; cursor: pointer; font-size: .9em; }
.toolbar button { margin-right: .5em; }
"""

JS = """
function setOpen(selector, open) {
  document.querySelectorAll(selector).forEach(function (d) { d.open = open; });
}
function bestOnly() {
  setOpen("details.node", false);
  setOpen("details.node.best", true);
}
"""


@dataclasses.dataclass
class Node:
    id: int
    parent: int
    text: str
    visits: int
    value: float | None
    terminal: bool
    kind: str
    rollout_text: str | None
    rollout_value: float | None
    correct: bool | None = None


def load_tree(path: pathlib.Path) -> dict:
    """Read the tree JSON; any unreadable or malformed file is a MarcoError naming it."""
    if not path.is_file():
        raise MarcoError(f"{path}: no such file")
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MarcoError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise MarcoError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("nodes"), list):
        raise MarcoError(f'{path}: no "nodes" list in the tree JSON')
    return tree


def is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_node(raw: object, index: int, path: pathlib.Path) -> Node:
    """Check one node's fields; errors name the node id (or its index if it has none)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), int) or isinstance(raw["id"], bool):
        raise MarcoError(f"{path}: node #{index} in the list has no integer id")
    name = f"{path}: node {raw['id']}"
    parent, visits = raw.get("parent"), raw.get("visits", 0)
    value, rollout_value = raw.get("value"), raw.get("rollout_value")
    if not isinstance(parent, int) or isinstance(parent, bool):
        raise MarcoError(f"{name}: no integer parent")
    if not isinstance(visits, int) or isinstance(visits, bool):
        raise MarcoError(f"{name}: visits must be an integer")
    if not (value is None or is_number(value)) or not (rollout_value is None or is_number(rollout_value)):
        raise MarcoError(f"{name}: value and rollout_value must be numbers or null")
    for key in ("text", "kind", "rollout_text"):
        if key in raw and not isinstance(raw[key], str):
            raise MarcoError(f"{name}: {key} must be a string")
    if raw.get("correct") not in (None, True, False):
        raise MarcoError(f"{name}: correct must be true, false or null")
    return Node(raw["id"], parent, raw.get("text", ""), visits, value, bool(raw.get("terminal")),
                raw.get("kind", "action"), raw.get("rollout_text"), rollout_value,
                raw.get("correct"))


def build(tree: dict, path: pathlib.Path) -> tuple[dict[int, Node], dict[int, list[int]], list[int]]:
    """Nodes by id, children by id (most visited first) and the roots (parent -1)."""
    nodes: dict[int, Node] = {}
    for i, raw in enumerate(tree["nodes"]):
        node = parse_node(raw, i, path)
        if node.id in nodes:
            raise MarcoError(f"{path}: node {node.id}: duplicate id")
        nodes[node.id] = node
    if not nodes:
        raise MarcoError(f"{path}: the tree has no nodes")
    children: dict[int, list[int]] = {i: [] for i in nodes}
    roots = []
    for node in nodes.values():
        if node.parent == -1:
            roots.append(node.id)
        elif node.parent not in nodes:
            raise MarcoError(f"{path}: node {node.id}: parent {node.parent} does not exist")
        else:
            children[node.parent].append(node.id)
    for ids in children.values():
        ids.sort(key=lambda i: (-nodes[i].visits, i))
    return nodes, children, roots


def depths(children: dict[int, list[int]], roots: list[int], path: pathlib.Path) -> dict[int, int]:
    """Depth of every node from its root, walked iteratively; nodes in a cycle are an error."""
    depth = {r: 0 for r in roots}
    stack = list(roots)
    while stack:
        i = stack.pop()
        for c in children[i]:
            depth[c] = depth[i] + 1
            stack.append(c)
    unreached = sorted(set(children) - set(depth))
    if unreached:
        raise MarcoError(f"{path}: node {unreached[0]} is not reachable from a root (parent cycle)")
    return depth


def fmt_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def text_block(text: str, label: str) -> str:
    """Pre-wrapped text; long texts fold behind a summary line."""
    pre = f"<pre>{html.escape(text)}</pre>"
    if len(text) <= LONG_CHARS and text.count("\n") < LONG_LINES:
        return pre
    return (f'<details class="fold"><summary>{html.escape(label)} '
            f"({len(text)} chars, {text.count(chr(10)) + 1} lines)</summary>{pre}</details>")


def preview(text: str) -> str:
    line = text.strip().split("\n", 1)[0]
    return line if len(line) <= PREVIEW_CHARS else line[:PREVIEW_CHARS - 1] + "…"


def kind_colour(kind: str) -> str:
    if kind in KIND_COLOURS:
        return KIND_COLOURS[kind]
    return PALETTE[hashlib.sha256(kind.encode()).digest()[0] % len(PALETTE)]


def render_node_open(node: Node, best: set[int], is_root: bool, in_reflection: bool) -> str:
    """A node's opening <details>, summary line and body, up to where its children go."""
    slug = re.sub(r"[^a-z0-9_-]", "", node.kind.lower())
    classes = ["node", f"kind-{slug}"] + (["best"] if node.id in best else [])
    classes += ["reflection-branch"] if in_reflection else []
    is_open = " open" if node.id in best or is_root else ""
    terminal = ' · <span class="terminal">terminal</span>' if node.terminal else ""
    if node.correct is not None:
        verdict = "correct" if node.correct else "wrong"
        terminal += f' · <span class="verdict-{verdict}">{verdict}</span>'
    parts = [
        f'<details class="{" ".join(classes)}" data-id="{node.id}"{is_open}>',
        f'<summary><span class="kind" style="color: {kind_colour(node.kind)}">'
        f'{html.escape(node.kind)}</span> '
        f'<span class="stats">#{node.id} · visits {node.visits} · value {fmt_value(node.value)}'
        f'</span>{terminal} <span class="preview">{html.escape(preview(node.text))}</span></summary>',
        text_block(node.text, "text"),
    ]
    if node.rollout_text is not None or node.rollout_value is not None:
        label = f"rollout (value {fmt_value(node.rollout_value)})"
        parts.append(f'<details class="fold"><summary>{html.escape(label)}</summary>'
                     f"<pre>{html.escape(node.rollout_text or '')}</pre></details>")
    return "\n".join(parts)


def render_nodes(nodes: dict[int, Node], children: dict[int, list[int]], roots: list[int],
                 best: set[int]) -> list[str]:
    """The nested <details> of every node, built with an explicit stack (no recursion)."""
    out: list[str] = []
    stack: list[int | None] = list(reversed(roots))  # None closes the innermost open node
    root_set = set(roots)
    in_reflection: set[int] = set()  # a reflection node and everything under it
    while stack:
        i = stack.pop()
        if i is None:
            out.append("</details>")
            continue
        node = nodes[i]
        if node.kind == "reflection" or node.parent in in_reflection:
            in_reflection.add(i)
        out.append(render_node_open(node, best, i in root_set, i in in_reflection))
        stack.append(None)
        stack.extend(reversed(children[i]))
    return out


def answers_match(gold: str, chosen: str) -> bool:
    """Equal after stripping, or equal as numbers ("18" and "18.0")."""
    gold, chosen = gold.strip(), chosen.strip()
    if gold == chosen:
        return True
    try:
        return float(gold.replace(",", "")) == float(chosen.replace(",", ""))
    except ValueError:
        return False


def render_header(tree: dict, count: int, max_depth: int) -> list[str]:
    """Title, question, answers (with match), tree size and the config table."""
    rows = [("id", html.escape(str(tree.get("id", "-"))))]
    gold, chosen = tree.get("answer"), tree.get("chosen_answer")
    if gold is not None:
        rows.append(("gold answer", html.escape(str(gold))))
    if chosen is not None:
        rows.append(("chosen answer", html.escape(str(chosen))))
    if gold is not None and chosen is not None:
        ok = answers_match(str(gold), str(chosen))
        rows.append(("match", f'<span class="{"match" if ok else "mismatch"}">'
                              f'{"yes" if ok else "no"}</span>'))
    rows += [("nodes", str(count)), ("max depth", str(max_depth))]
    out = [f"<h1>Search tree {html.escape(str(tree.get('id', '')))}</h1>"]
    if tree.get("question") is not None:
        out.append(f"<h2>Question</h2><pre>{html.escape(str(tree['question']))}</pre>")
    out.append("<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
    config = tree.get("config")
    if isinstance(config, dict) and config:
        out.append("<h2>Config</h2><table>" + "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>"
            f"{html.escape(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))}</td></tr>"
            for k, v in config.items()) + "</table>")
    return out


def render_fragment(tree: dict, path: pathlib.Path) -> str:
    """The header and the nested tree, without the page around them (the
    server's page puts it in its own)."""
    nodes, children, roots = build(tree, path)
    depth = depths(children, roots, path)
    best_path = tree.get("best_path") or []
    if not isinstance(best_path, list):
        raise MarcoError(f"{path}: best_path must be a list of node ids")
    for i in best_path:
        if not isinstance(i, int) or i not in nodes:
            raise MarcoError(f"{path}: best_path node {i} does not exist")
    return "\n".join([
        *render_header(tree, len(nodes), max(depth.values())),
        '<h2>Tree</h2><div class="toolbar">'
        '<button onclick="setOpen(\'details.node\', true)">expand all</button>'
        '<button onclick="setOpen(\'details.node\', false)">collapse all</button>'
        '<button onclick="bestOnly()">best path only</button></div>',
        *render_nodes(nodes, children, roots, set(best_path)),
    ])


def render(tree: dict, path: pathlib.Path) -> str:
    """The whole HTML page for a loaded tree JSON."""
    fragment = render_fragment(tree, path)
    title = html.escape(f"Search tree {tree.get('id', path.stem)}")
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{title}</title>",
        f"<style>{CSS}</style>", f"<script>{JS}</script>", "</head><body>", fragment,
        "</body></html>", "",
    ])
