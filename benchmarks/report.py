"""Shared output for benchmark scripts: print the results and optionally save them."""

from __future__ import annotations

import json
import pathlib


def report(results: dict, json_out: pathlib.Path | None) -> None:
    """Print ``results`` as JSON; also write them to ``json_out`` when given."""
    text = json.dumps(results, indent=2)
    print(text)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text)
