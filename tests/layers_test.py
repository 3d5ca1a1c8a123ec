"""The README's architecture, enforced: every module imports only from its own
layer or the layers below it (engine and train beside each other, neither
importing the other), and no import cycle exists between modules."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "marco_jax"

# Bottom to top, as drawn in README.md's architecture section.
LAYERS = [
    {"errors", "prompts", "loops"},
    {"model_config", "run_config", "grading", "tokenizer", "topology", "files", "cli",
     "distributed", "run_lock"},
    {"model", "sharding", "checkpoint", "demo_model"},
    {"loading"},
    {"engine", "train"},
    {"search", "scoring"},
    {"serve"},
    {"commands"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each library module -> the library modules it imports."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t not in (name, "marco_jax")}
        out[name] = found
    return out


def unit(module: str) -> str:
    """The layer unit a module belongs to: its top-level module or subpackage."""
    return module.split(".")[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets
                  if m != "marco_jax" and unit(m) != unit(t)
                  and (LEVEL[unit(t)] > LEVEL[unit(m)]
                       or {unit(m), unit(t)} == {"engine", "train"}))


def first_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path + [module, target]
            if target not in state and (cycle := visit(target, path + [module])):
                return cycle
        state[module] = 2
        return None

    return next((c for m in sorted(graph) if m not in state and (c := visit(m, []))), None)


def test_every_module_has_a_layer():
    assert {unit(m) for m in imports() if m != "marco_jax"} <= set(LEVEL)


def test_imports_run_downwards_only_and_never_in_a_circle():
    graph = imports()
    assert upward_imports(graph) == []
    assert first_cycle(graph) is None


def test_the_checks_see_an_upward_import_and_a_cycle():
    graph = imports()
    graph["marco_jax.model"] = graph["marco_jax.model"] | {"marco_jax.engine.engine"}
    assert upward_imports(graph) == ["marco_jax.model imports marco_jax.engine.engine"]
    assert first_cycle(graph) is not None  # the engine imports the model


def test_the_readme_names_every_module():
    """The architecture section's table has a line for every module."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Architecture"):readme.index("\n## ", readme.index(
        "## Architecture") + 1)]
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if path.name != "__init__.py" and f"`{relative}`" not in section and not (
                path.parent.name == "checkpoint" and f"`{path.name}`" in section):
            missing.append(relative)
    assert missing == []
