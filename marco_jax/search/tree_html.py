"""A search tree (the JSON a search writes) as HTML: a picture and a text list.

The picture is drawn in the browser by ``tree_page.js`` from the tree's JSON, which
the fragment carries: a tidy top-down layout, nodes sized by visits and coloured by
value (a legend gives the scale), the best path drawn thick, reflections as diamonds
with their branch dashed, terminal nodes square, verified answers ticked or crossed;
clicking a node shows it in the node panel. Below it, the same tree as a nested
collapsible text list (searchable, readable without the picture): each node's kind
(v1: action or reflection; v2: sub_task, thinking, double_check, answer, reflection,
thinking_from_scratch, each in its own colour), visits, mean value, terminal marker,
verdict and text, children by visits, the best path highlighted and expanded.
``scripts/show_tree.py`` writes it as a self-contained page; the server's page shows
it while a search grows.
"""

from __future__ import annotations

import hashlib
import html
import json
import pathlib
import re

from marco_jax.grading import same_answer
from marco_jax.search.record import NodeRecord, TreeRecord

# Node types in their colours; any other type gets one of PALETTE by its name.
KIND_COLOURS = {"root": "#0550ae", "action": "#24292f", "reflection": "#8250df",
                "sub_task": "#0969da", "thinking": "#1a7f37", "double_check": "#9a6700",
                "answer": "#cf222e", "thinking_from_scratch": "#bf3989"}
PALETTE = ("#0a3069", "#116329", "#953800", "#6639ba", "#8c6d00", "#a40e26")
LONG_CHARS = 400  # longer texts (or more lines) are folded behind their own <summary>
LONG_LINES = 8
PREVIEW_CHARS = 80

# The pages' style and script (picture, node panel, the list's buttons), beside this module.
CSS = pathlib.Path(__file__).with_name("tree_page.css").read_text(encoding="utf-8")
JS = pathlib.Path(__file__).with_name("tree_page.js").read_text(encoding="utf-8")


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


def render_node_open(node: NodeRecord, best: set[int], is_root: bool, in_reflection: bool) -> str:
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
    if node.rollout_text or node.rollout_value is not None:
        label = f"rollout (value {fmt_value(node.rollout_value)})"
        parts.append(f'<details class="fold"><summary>{html.escape(label)}</summary>'
                     f"<pre>{html.escape(node.rollout_text or '')}</pre></details>")
    return "\n".join(parts)


def render_nodes(nodes: dict[int, NodeRecord], children: dict[int, list[int]], roots: list[int],
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


def render_header(tree: TreeRecord, count: int, max_depth: int) -> list[str]:
    """Title, question, answers (with match), tree size and the config table."""
    rows = [("id", html.escape(str(tree.id if tree.id is not None else "-")))]
    gold, chosen = tree.answer, tree.chosen_answer
    if gold is not None:
        rows.append(("gold answer", html.escape(str(gold))))
    if chosen is not None:
        rows.append(("chosen answer", html.escape(str(chosen))))
    if gold is not None and chosen is not None:
        ok = same_answer(str(chosen), str(gold))
        rows.append(("match", f'<span class="{"match" if ok else "mismatch"}">'
                              f'{"yes" if ok else "no"}</span>'))
    rows += [("nodes", str(count)), ("max depth", str(max_depth))]
    out = [f"<h1>Search tree {html.escape(str(tree.id if tree.id is not None else ''))}</h1>"]
    if tree.question is not None:
        out.append(f"<h2>Question</h2><pre>{html.escape(str(tree.question))}</pre>")
    out.append("<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
    if isinstance(tree.config, dict) and tree.config:
        out.append("<h2>Config</h2><table>" + "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>"
            f"{html.escape(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))}</td></tr>"
            for k, v in tree.config.items()) + "</table>")
    return out


def tree_data(tree: TreeRecord) -> str:
    """The tree's JSON for the picture, safe inside a <script> element (no "</script>")."""
    return json.dumps(tree.to_json(), ensure_ascii=False).replace("<", "\\u003c")


def render_fragment(tree: TreeRecord) -> str:
    """The title, the picture (drawn by tree_page.js's ``MarcoTree.mount`` from the JSON it
    carries), the header tables and the text list, without the page around them (the
    server's page puts it in its own)."""
    nodes = {n.id: n for n in tree.nodes}
    depth = tree.depths()
    title, *header = render_header(tree, len(nodes), max(depth.values()))
    return "\n".join([
        title,
        '<div class="tree-view">'
        f'<script type="application/json" class="tree-data">{tree_data(tree)}</script>'
        '<div class="tree-picture"></div></div>',
        *header,
        f'<details class="tree-list"><summary>The tree as text ({len(nodes)} nodes)</summary>'
        '<div class="toolbar">'
        '<button onclick="setOpen(\'details.node\', true)">expand all</button>'
        '<button onclick="setOpen(\'details.node\', false)">collapse all</button>'
        '<button onclick="bestOnly()">best path only</button></div>',
        *render_nodes(nodes, tree.children(), tree.roots(), set(tree.best_path)),
        "</details>",
    ])


def render(tree: TreeRecord, title: str) -> str:
    """The whole HTML page for a tree: the fragment beside the node panel, everything inline."""
    fragment = render_fragment(tree)
    title = html.escape(f"Search tree {tree.id if tree.id is not None else title}")
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{title}</title>",
        f"<style>{CSS}</style>", f"<script>{JS}</script>", "</head><body>",
        '<div class="columns"><div class="main">', fragment,
        '</div><div class="side" id="node-panel"><p class="hint">Click a node to read it.</p>'
        "</div></div>",
        '<script>MarcoTree.mount(document.querySelector(".tree-view"), '
        'document.getElementById("node-panel"), '
        f'{tree.best_path[-1] if tree.best_path else "null"});</script>',
        "</body></html>", "",
    ])
