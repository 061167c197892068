"""benchmarks/vllm_api_check.py checks the vLLM API the project uses against a real vLLM; this
test keeps its list complete: it reads the project's source (ast) for every vLLM symbol
imported, every keyword passed to a vLLM constructor, every method called and attribute read
on a vLLM object, every constant engine-argument value, and what the worker extension reaches
inside a vLLM worker, and fails on anything the check's tables do not list. The real check runs
where vLLM is installed (its own virtualenv, never .venv) and is skipped here otherwise."""
from __future__ import annotations

import ast
import importlib.util
from collections import defaultdict
from pathlib import Path

import pytest

from benchmarks import vllm_api_check as check

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("router_r1", "actors", "deployments", "pipelines", "benchmarks")
# Instance attributes holding a vLLM object that other modules reach through the owner
# (router_r1/serving/engines.py: `gen.llm.get_tokenizer()`); any other one counts only as self.<attr>.
CROSS_FILE = {"llm"}


def project_files() -> list[Path]:
    me = Path(check.__file__).resolve()
    return [f for p in PACKAGES for f in sorted((ROOT / p).rglob("*.py")) if f.resolve() != me]


def _chain(node: ast.AST, through_calls: bool = False) -> list[str] | None:
    """`a.b.c` -> ["a", "b", "c"] (`a.b().c` too, with `through_calls`); None when the base is
    not a plain name."""
    parts = []
    while isinstance(node, ast.Attribute) or (through_calls and isinstance(node, ast.Call)):
        if isinstance(node, ast.Call):
            node = node.func
            continue
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _symbol(node: ast.AST, alias: dict[str, str]) -> str | None:
    """The vLLM name `node` refers to through a file's import aliases (`vllm.X`, or an imported
    vLLM name itself), None when it is not a vLLM name."""
    c = _chain(node)
    if not c or c[0] not in alias:
        return None
    base = alias[c[0]]
    return base + "." + c[1] if base == "vllm" and len(c) > 1 else (base if base != "vllm" else None)


class Uses:
    def __init__(self) -> None:
        self.symbols: set[str] = set()
        self.kwargs: dict[str, set[str]] = defaultdict(set)
        self.methods: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        self.attributes: dict[str, set[str]] = defaultdict(set)
        self.values: dict[str, set[str]] = defaultdict(set)
        self.worker_chain: set[str] = set()
        self.load_weights_kw: set[str] = set()


def scan() -> Uses:
    uses = Uses()
    trees = {f: ast.parse(f.read_text(), str(f)) for f in project_files()}
    cross: dict[str, str] = {}  # instance attribute -> vLLM class, for CROSS_FILE names
    per_file: dict[Path, tuple[dict[str, str], dict[str, str], dict[str, str], dict[str, set[str]]]] = {}
    for f, tree in trees.items():
        alias: dict[str, str] = {}  # local name -> vLLM dotted path
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "vllm":
                for a in node.names:
                    alias[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "vllm":
                        alias[(a.asname or a.name).split(".")[0]] = "vllm"
        if not alias:
            continue
        string_sets = {t.id: {e.value for e in n.value.elts if isinstance(e, ast.Constant)}
                       for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Set)
                       for t in n.targets if isinstance(t, ast.Name)}

        def symbol(node: ast.AST) -> str | None:
            return _symbol(node, alias)

        instances: dict[str, str] = {}  # self.<attr> -> vLLM class of the object it holds
        classes: dict[str, str] = {}  # self.<attr> -> vLLM class it holds (called as constructor)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    c = _chain(t)
                    if not c or c[0] != "self" or len(c) != 2:
                        continue
                    v = node.value
                    if isinstance(v, ast.Call):
                        s = symbol(v.func)
                        fc = _chain(v.func) or []
                        if s is None and len(fc) >= 2 and symbol(v.func.value) and fc[-1] == "from_engine_args":
                            s = symbol(v.func.value)
                        if s:
                            instances[c[1]] = s
                            if c[1] in CROSS_FILE:
                                cross[c[1]] = s
                    elif symbol(v):
                        classes[c[1]] = symbol(v)
        per_file[f] = (alias, instances, classes, string_sets)

    for f, tree in trees.items():
        alias, instances, classes, string_sets = per_file.get(f, ({}, {}, {}, {}))

        def symbol(node: ast.AST) -> str | None:
            return _symbol(node, alias)

        def instance_of(c: list[str]) -> tuple[str, list[str]] | None:
            """(vLLM class, rest of the chain) when `c` reaches into a vLLM object."""
            if len(c) >= 3 and c[0] == "self" and c[1] in instances:
                return instances[c[1]], c[2:]
            for i in range(1, len(c) - 1):
                if c[i] in cross and not (c[0] == "self" and i == 1 and c[1] in instances):
                    return cross[c[i]], c[i + 1:]
            return None

        called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) or isinstance(node, ast.Name):
                s = symbol(node)
                if s and id(node) not in inner:
                    uses.symbols.add(s)
            if isinstance(node, ast.Name) and node.id in alias and alias[node.id] != "vllm":
                uses.symbols.add(alias[node.id])
            if isinstance(node, ast.Call):
                c = _chain(node.func) or []
                ctor = symbol(node.func) or (classes.get(c[1]) if len(c) == 2 and c[0] == "self" else None)
                if ctor and not (len(c) > 2 and c[0] in alias and alias[c[0]] == "vllm"):
                    for k in node.keywords:
                        if k.arg:
                            uses.kwargs[ctor].add(k.arg)
                            if isinstance(k.value, ast.Constant) and isinstance(k.value.value, str):
                                uses.values[k.arg].add(k.value.value)
                        else:  # **{...if k in NAMES}: the keys a module-level set allows
                            for n in ast.walk(k.value):
                                if isinstance(n, ast.Name) and n.id in string_sets:
                                    uses.kwargs[ctor] |= string_sets[n.id]
                elif len(c) >= 3 and c[0] in alias and alias[c[0]] == "vllm" and symbol(node.func.value):
                    uses.methods[symbol(node.func.value)][c[-1]] |= {k.arg for k in node.keywords if k.arg}
                inst = instance_of(c)
                if inst and len(inst[1]) == 1:
                    uses.methods[inst[0]][inst[1][0]] |= {k.arg for k in node.keywords if k.arg}
            if isinstance(node, ast.Attribute) and id(node) not in inner and id(node) not in called:
                inst = instance_of(_chain(node) or [])
                if inst:
                    uses.attributes[inst[0]].add(".".join(inst[1]))
        # What the worker extension reaches inside the worker.
        ext_cls = check.EXTENSION.rsplit(".", 1)[1]
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == ext_cls
                    and f.resolve() == (ROOT / (check.EXTENSION.rsplit(".", 1)[0].replace(".", "/") + ".py")).resolve()):
            for node in ast.walk(cls):
                c = _chain(node, through_calls=True) if isinstance(node, ast.Attribute) else None
                if c and c[0] == "self":
                    uses.worker_chain.update(c[1:])
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load_weights":
                    uses.load_weights_kw |= {k.arg for k in node.keywords if k.arg}
    return uses


def test_scan_finds_the_known_uses():
    """The scanner itself: it must see what the vLLM files are known to do."""
    u = scan()
    assert {"vllm.LLM", "vllm.SamplingParams", "vllm.inputs.TokensPrompt", "vllm.AsyncLLMEngine",
            "vllm.engine.arg_utils.AsyncEngineArgs"} <= u.symbols
    assert {"logprobs_mode", "generation_config", "worker_extension_cls"} <= u.kwargs["vllm.LLM"]
    assert {"top_k", "seed", "presence_penalty"} <= u.kwargs["vllm.SamplingParams"]  # the pool's via _SAMPLING_KEYS
    assert {"collective_rpc", "reset_prefix_cache", "generate", "get_tokenizer"} <= set(u.methods["vllm.LLM"])
    assert {"from_engine_args", "generate", "abort", "get_tokenizer"} <= set(u.methods["vllm.AsyncLLMEngine"])
    assert "llm_engine.model_config.max_model_len" in u.attributes["vllm.LLM"]
    assert u.values["logprobs_mode"] == {"processed_logprobs"} and "vllm" in u.values["generation_config"]
    assert {"model_runner", "load_weights"} <= u.worker_chain and u.load_weights_kw == {"weights"}


def test_the_check_lists_every_vllm_use_of_the_project():
    u = scan()
    assert u.symbols <= set(check.SYMBOLS), f"not in SYMBOLS: {u.symbols - set(check.SYMBOLS)}"
    for sym, kws in u.kwargs.items():
        assert kws <= check.KWARGS.get(sym, set()), f"{sym}: keywords not in KWARGS: {kws - check.KWARGS.get(sym, set())}"
    for sym, methods in u.methods.items():
        listed = check.METHODS.get(sym, {})
        assert set(methods) <= set(listed), f"{sym}: methods not in METHODS: {set(methods) - set(listed)}"
        for m, kws in methods.items():
            assert kws <= listed[m], f"{sym}.{m}: keywords not in METHODS: {kws - listed[m]}"
    for sym, chains in u.attributes.items():
        assert chains <= check.ATTRIBUTES.get(sym, set()), f"{sym}: attributes not in ATTRIBUTES: {chains}"
    for kw, values in u.values.items():
        if kw in ("model", "tokenizer", "worker_extension_cls"):  # paths and the extension's own name
            continue
        assert values <= check.VALUES.get(kw, set()), f"{kw}={values - check.VALUES.get(kw, set())} not in VALUES"
    assert u.worker_chain <= set(check.WORKER_CHAIN), f"worker: {u.worker_chain - set(check.WORKER_CHAIN)}"
    assert u.load_weights_kw <= {check.LOAD_WEIGHTS_KW}
    assert u.values["worker_extension_cls"] <= {check.EXTENSION} or not u.values["worker_extension_cls"]


def test_extension_name_is_the_class_vllm_is_given():
    from router_r1.engines import vllm as ours

    assert f"{ours.__name__}.{ours.WeightLoaderExtension.__name__}" == check.EXTENSION


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_check_says_where_vllm_is_missing(capsys):
    assert check.main([]) == 2
    assert "not importable" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (its own venv)")
def test_check_passes_against_the_installed_vllm():
    assert check.main([]) == 0
