"""Render one search tree (JSON written by the search) as a self-contained HTML page.

    python scripts/show_tree.py TREE.json [--output OUT.html]

The page is a nested collapsible tree (``marco_jax.search.tree_html``): each node
shows its kind in its own colour, visits, mean value, terminal marker, the
verifier's verdict on an answer and text; reflection branches are marked, the
best path is highlighted and expanded. Default output: TREE with the suffix .html.
"""

from __future__ import annotations

import argparse
import pathlib

from marco_jax.cli import run
from marco_jax.errors import MarcoError
from marco_jax.search.record import TreeRecord
from marco_jax.search.tree_html import render


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", type=pathlib.Path, help="search tree JSON file")
    parser.add_argument("--output", type=pathlib.Path,
                        help="HTML file to write (default: TREE with suffix .html)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    output = args.output or args.tree.with_suffix(".html")
    page = render(TreeRecord.load(args.tree), args.tree.stem)
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as e:
        raise MarcoError(f"{output}: cannot write: {e.strerror}") from None
    print(f"wrote {output}")


if __name__ == "__main__":
    run(main)
