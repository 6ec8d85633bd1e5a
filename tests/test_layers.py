"""The package's import graph, read from the source (every import, those inside functions included, and the
package __init__ that importing a submodule runs first): no cycle,
and each module imports only its own layer and the layers below it.

    foundation   checks, data, progress, untrusted, shipped, losses (nothing of rlaif's)
    config       rlaif/config/: the run's dataclasses (imports only the checks)
    library      models, pool, lora, layout, generate/, judge/, reward/, principles, trainer, launch, ...
    stages       rlaif/stages/: one module per stage (imports the library, never the runner)
    runner       rounds (schedules the stages), launch_worker (one training process), evaluate
    cli          rlaif/cli/: the verbs and their parsers

A new module that fits no layer fails here until it is placed.
"""

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "rlaif"

LAYERS = [
    ("foundation", ["rlaif", "rlaif.checks", "rlaif.data", "rlaif.progress", "rlaif.untrusted", "rlaif.shipped", "rlaif.losses"]),
    ("config", ["rlaif.config"]),
    ("library", [
        "rlaif.models", "rlaif.lora", "rlaif.layout", "rlaif.manifest", "rlaif.pool", "rlaif.generate",
        "rlaif.endpoints", "rlaif.verdicts", "rlaif.judge", "rlaif.reward", "rlaif.principles", "rlaif.principle_checks", "rlaif.applicability",
        "rlaif.judge_eval", "rlaif.review", "rlaif.kto", "rlaif.rlhb", "rlaif.feedback", "rlaif.privacy", "rlaif.recompute", "rlaif.logprobs", "rlaif.sharding", "rlaif.realign", "rlaif.sampling", "rlaif.trainer", "rlaif.launch", "rlaif.report", "rlaif.eval_report",
    ]),
    ("stages", ["rlaif.stages"]),
    ("runner", ["rlaif.rounds", "rlaif.launch_worker", "rlaif.evaluate", "rlaif.compare"]),
    ("cli", ["rlaif.cli"]),
]  # fmt: skip


def modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


@functools.cache
def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported rlaif module: line}, for every import statement anywhere in the module."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for m, f in mods.items():
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        edges = {}
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = resolve(name) if name.split(".")[0] == "rlaif" else None
                if not target or target == m:
                    continue
                edges.setdefault(target, node.lineno)
                # importing rlaif.a.b runs rlaif/a/__init__.py first (unless the importer is inside rlaif.a)
                parts = target.split(".")
                for i in range(2, len(parts)):
                    parent = ".".join(parts[:i])
                    if parent in mods and not (m == parent or m.startswith(parent + ".")):
                        edges.setdefault(parent, node.lineno)
        graph[m] = edges
    return graph


def layer_of(module: str) -> int:
    best = None  # the longest matching prefix decides ("rlaif" is only the package's own __init__)
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or (p != "rlaif" and module.startswith(p + "."))) and (
                best is None or len(p) > best[1]
            ):
                best = (i, len(p))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return best[0]


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            advanced = False
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(graph[w])))
                    advanced = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    found = cycles(graph)
    detail = [
        f"{sorted(c)}: "
        + "; ".join(f"{a} -> {b} (line {graph[a][b]})" for a in c for b in graph[a] if b in c)
        for c in found
    ]
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_each_module_imports_only_its_layer_and_those_below():
    graph = import_graph()
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]}) at line {line}"
        for m, edges in sorted(graph.items())
        for t, line in edges.items()
        if layer_of(t) > layer_of(m)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_config_layer_imports_only_the_checks():
    graph = import_graph()
    for m, edges in graph.items():
        if layer_of(m) == 1:
            assert set(edges) <= {"rlaif.checks"} | {t for t in edges if t.startswith("rlaif.config")}, m


@pytest.mark.parametrize(
    "edit",
    [
        (
            "rlaif.models",
            "rlaif.pool",
            "cycle",
        ),  # the pool imports models: models importing it closes a cycle
        ("rlaif.trainer", "rlaif.stages.dpo", "layer"),  # the library reaching up into a stage
    ],
)
def test_the_checks_see_a_planted_edge(edit):
    """Each check goes red on the graph with one edge added by hand (the tests above can fail)."""
    src, dst, kind = edit
    graph = dict(import_graph())
    graph[src] = {**graph[src], dst: 1}
    if kind == "cycle":
        assert any(src in c and dst in c for c in cycles(graph))
    else:
        assert layer_of(dst) > layer_of(src)


def test_every_package_is_in_the_wheel():
    """pyproject lists packages explicitly (the shipped data maps folders into rlaif/_shipped): a new
    subpackage left out of the list would be missing from a wheel install."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {m for m, f in modules().items() if f.name == "__init__.py"}
    assert found <= listed, f"add to pyproject.toml's packages: {sorted(found - listed)}"


HEAVY = {
    "torch",
    "transformers",
    "peft",
    "vllm",
    "safetensors",
    "datasets",
    "matplotlib",
    "numpy",
    "accelerate",
    "textual",
    "opacus",
}
"""Libraries imported inside the functions that use them, never at a module's top: the CLI starts (and
`--help` answers) without loading them. rlaif.losses and rlaif.realign import torch at their top, and
rlaif.review.app textual, so they are imported the same way."""
HEAVY_OWN = {"rlaif.losses", "rlaif.realign", "rlaif.review.app"}


def test_imports_inside_functions_are_the_heavy_ones():
    light = []
    for m, f in modules().items():
        for fn in ast.walk(ast.parse(f.read_text())):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module]
                else:
                    continue
                light += [
                    f"{m}:{node.lineno} imports {n} inside {fn.name}(): import it at the module's top"
                    for n in names
                    if n.split(".")[0] not in HEAVY and n not in HEAVY_OWN
                ]
    assert not light, "\n".join(light)


def test_the_cli_starts_without_the_heavy_libraries():
    import subprocess
    import sys

    code = f"import sys, rlaif.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
