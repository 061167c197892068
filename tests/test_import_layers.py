"""The house has floors: no import cycle, and no module imports one from a higher layer.

The layers are written once, in docs/architecture.md (the ```layers block, lowest first); this
test reads them there, so the document and the code cannot drift apart. Every import counts,
including imports inside functions and under TYPE_CHECKING: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("router_r1", "actors", "deployments", "pipelines", "experiments", "benchmarks")


def declared_layers() -> list[list[str]]:
    """Layers from docs/architecture.md, lowest first; a line may hold several packages (one layer)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```layers block"
    return [line.split("#")[0].split() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else ():
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (an import of a package's name counts as its
    __init__, also from inside that package: a package face imported by its own modules is a
    dependency like any other)."""

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = m.split(".")[: len(m.split(".")) - node.level + is_pkg]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = [f"{prefix}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                o = owner(t)
                if o and o != m:
                    graph[m].add(o)
    return graph


def layer_of(m: str, layers: list[list[str]]) -> int | None:
    best, best_len = None, -1
    for i, names in enumerate(layers):
        for p in names:
            if (m == p or m.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1
                    stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycle():
    assert cycles(import_graph(modules())) == []


def test_every_module_has_a_layer_and_imports_only_downwards():
    layers, mods = declared_layers(), modules()
    graph = import_graph(mods)
    unplaced = sorted(m for m in mods if layer_of(m, layers) is None)
    assert not unplaced, f"modules in no layer of docs/architecture.md: {unplaced}"
    upward = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts
                    if layer_of(t, layers) > layer_of(m, layers))
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_the_core_is_ray_free_at_import():
    """router_r1/ imports no Ray at module level, except the RLlib router (built on RLlib)."""
    offenders = []
    for m, path in modules().items():
        if not m.startswith("router_r1.") or m.startswith("router_r1.rl_router"):
            continue
        for node in ast.parse(path.read_text()).body:  # module level only: lazy imports are allowed
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{m}: {n}" for n in names if n == "ray" or n.startswith("ray.")]
    assert offenders == []


def test_the_checker_sees_a_cycle_and_an_upward_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    layers = [["router_r1.pool"], ["router_r1.env"]]
    assert layer_of("router_r1.pool.core", layers) == 0 and layer_of("router_r1.env.prompt", layers) == 1
    assert layer_of("router_r1.evaluation", layers) is None


def test_architecture_lists_every_file_and_only_files_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Every file"):]
    listed = set(re.findall(r"^- `([\w/]+\.py)`", section, re.M))
    present = {str(p.relative_to(ROOT)) for m, p in modules().items()
               if p.name != "__init__.py" and not m.startswith("benchmarks")}
    assert sorted(present - listed) == [], "modules missing from docs/architecture.md's file list"
    assert sorted(listed - present) == [], "files listed in docs/architecture.md that do not exist"
