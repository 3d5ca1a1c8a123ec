"""Render one search tree (written by the search) as a self-contained HTML page.

    python scripts/show_tree.py TREES.jsonl --id ID [--output OUT.html]
    python scripts/show_tree.py TREE.json [--output OUT.html]

The page (``marco_jax.search.tree_html``, its CSS and JS inlined: no network) draws the
tree as a picture: a top-down layout, nodes sized by visits and coloured by value (with
a legend), the best path drawn thick, reflections as diamonds with their branch dashed,
terminal nodes square, verified answers ticked or crossed. Clicking a node shows its
text, statistics and rollout in the panel beside it, and, when the search kept them
(``search.py --tree-tokens``), its tokens tinted by confidence with each token's top-5
alternatives; the same tree follows as a collapsible text list. Default output:
``ID.html`` beside the file.
"""

from __future__ import annotations

import argparse
import pathlib

from marco_jax.cli import run, summary
from marco_jax.errors import MarcoError
from marco_jax.search.record import read_trees
from marco_jax.search.tree_html import render


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("trees", type=pathlib.Path,
                        help="a search's --trees file (JSON lines) or one tree's JSON file")
    parser.add_argument("--id", help="the problem whose tree to show (needed when the file "
                                     "holds several)")
    parser.add_argument("--output", type=pathlib.Path,
                        help="HTML file to write (default: ID.html beside TREES)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    trees = read_trees(args.trees)
    if args.id is not None:
        trees = [t for t in trees if str(t.id) == args.id]
        if not trees:
            raise MarcoError(f"{args.trees}: no tree with id {args.id!r}")
    elif len(trees) > 1:
        ids = ", ".join(str(t.id) for t in trees[:5])
        raise MarcoError(f"{args.trees} holds {len(trees)} trees ({ids}, ...): "
                         "choose one with --id")
    tree = trees[-1]
    name = args.trees.stem if tree.id is None else str(tree.id)
    output = args.output or args.trees.parent / f"{name}.html"
    try:
        output.write_text(render(tree, name), encoding="utf-8")
    except OSError as e:
        raise MarcoError(f"{output}: cannot write: {e.strerror}") from None
    print(f"wrote {output}")


def cli() -> None:
    """The console command (errors as one line, exit 2)."""
    run(main)


if __name__ == "__main__":
    cli()
