"""Check every vLLM API router-r1 calls against an installed vLLM, without a GPU (issue 25).

The project meets vLLM only on GPU machines, and its tests replace vLLM by a fake module, so
nothing else checks that the real package still has the engine arguments, `SamplingParams`
fields, methods and output fields that `router_r1/engines/vllm.py` and
`router_r1/pool/backends/vllm_engine.py` use. This script checks them by import, signature,
dataclass / msgspec fields and, where it can be done on CPU, by behaviour: `top_k=0` (off),
`logprobs_mode="processed_logprobs"`, `generation_config="vllm"` (the checkpoint's
generation_config.json is ignored), `collective_rpc`, the weight-loading path
(worker extension -> `model_runner.get_model().load_weights(weights=...)`), and the project's own
`VLLMGenerator.generate` / `VLLMEngine.generate` run against vLLM's real `SamplingParams`,
`TokensPrompt` and output classes. It prints one row per check and exits 1 if any fails.

Run it in a virtualenv of its own (vLLM pins its own torch; never install it into .venv):

    python -m venv /tmp/vllm && /tmp/vllm/bin/pip install 'vllm==0.34.0'
    PYTHONPATH=. /tmp/vllm/bin/python benchmarks/vllm_api_check.py

The tables below list what the project uses; `tests/test_vllm_api_check.py` reads the project's
source and fails when it uses a vLLM name, keyword, method or attribute that they do not list,
so a new use cannot slip past this check. vLLM is imported only inside `main`.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import inspect
import json
import sys
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

# -- what the project uses -------------------------------------------------------------------
# Symbols, by the dotted path the project imports them from.
SYMBOLS = ("vllm.LLM", "vllm.SamplingParams", "vllm.inputs.TokensPrompt", "vllm.AsyncLLMEngine",
           "vllm.engine.arg_utils.AsyncEngineArgs")

# Keyword arguments the project passes to each constructor (LLM forwards what it does not take
# itself to EngineArgs). AsyncEngineArgs: `model` plus the engine_args of the tests and configs.
KWARGS: dict[str, set[str]] = {
    "vllm.LLM": {"model", "tokenizer", "seed", "dtype", "gpu_memory_utilization", "max_model_len",
                 "tensor_parallel_size", "enable_prefix_caching", "load_format", "logprobs_mode",
                 "generation_config", "worker_extension_cls"},
    "vllm.SamplingParams": {"temperature", "top_p", "top_k", "max_tokens", "stop",
                            "include_stop_str_in_output", "logprobs", "repetition_penalty", "seed",
                            "presence_penalty", "frequency_penalty"},
    "vllm.inputs.TokensPrompt": {"prompt_token_ids"},
    "vllm.engine.arg_utils.AsyncEngineArgs": {"model", "gpu_memory_utilization", "enforce_eager",
                                              # the served router policy (router_r1/engines/vllm_async.py)
                                              "tokenizer", "seed", "dtype", "max_model_len",
                                              "tensor_parallel_size", "enable_prefix_caching",
                                              "logprobs_mode", "generation_config"},
}

# Methods called on instances, with the keywords passed to each.
METHODS: dict[str, dict[str, set[str]]] = {
    "vllm.LLM": {"generate": {"use_tqdm"}, "get_tokenizer": set(), "collective_rpc": {"args"},
                 "reset_prefix_cache": set()},
    "vllm.AsyncLLMEngine": {"from_engine_args": set(), "generate": set(), "abort": set(),
                            "get_tokenizer": set()},
}

# Attribute chains read from instances.
ATTRIBUTES: dict[str, set[str]] = {"vllm.LLM": {"llm_engine.model_config.max_model_len"},
                                   "vllm.AsyncLLMEngine": {"model_config.max_model_len"}}

# Constant values the project passes for engine arguments (`load_format`: the rollout's "dummy"
# and VLLMGenerator's default "auto"; `dtype`: what dtype_name gives for the policy dtypes).
VALUES: dict[str, set[str]] = {"logprobs_mode": {"processed_logprobs"}, "generation_config": {"vllm"},
                               "load_format": {"auto", "dummy"},
                               "dtype": {"auto", "bfloat16", "float16", "float32"}}

# What the worker extension (engines.vllm.WeightLoaderExtension) reaches inside a vLLM worker.
WORKER_CHAIN = ("model_runner", "get_model", "load_weights")
LOAD_WEIGHTS_KW = "weights"
EXTENSION = "router_r1.engines.vllm.WeightLoaderExtension"

# Fields read from vLLM's outputs (RequestOutput.outputs[0] is a CompletionOutput; its
# logprobs are one {token id: Logprob} dict per position).
OUTPUT_FIELDS: dict[str, set[str]] = {
    "vllm.outputs.RequestOutput": {"outputs", "prompt_token_ids"},
    "vllm.outputs.CompletionOutput": {"text", "token_ids", "logprobs", "finish_reason"},
    "vllm.logprobs.Logprob": {"logprob"},
}


# -- the check --------------------------------------------------------------------------------
@dataclasses.dataclass
class Row:
    check: str
    expected: str
    found: str
    ok: bool


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def check(self, name: str, expected: str, fn: Callable[[], tuple[Any, bool]]) -> bool:
        """Run `fn` -> (found, ok); an exception is a failure whose message is what was found."""
        try:
            found, ok = fn()
        except Exception as e:  # noqa: BLE001 -- any error is a failed check, reported
            found, ok = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160], False
        self.rows.append(Row(name, expected, str(found), bool(ok)))
        return bool(ok)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    def table(self, width: int = 64) -> str:
        """One line per check; long cells are cut to `width` (--json keeps them whole)."""
        def cut(x: str) -> str:
            return x if len(x) <= width else x[: width - 3] + "..."

        cells = [(cut(r.check), cut(r.expected), cut(r.found), "ok" if r.ok else "FAIL") for r in self.rows]
        head = ("check", "expected", "found", "ok")
        w = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w[i]) for i, h in enumerate(head)).rstrip(),
                 "  ".join("-" * x for x in w)]
        lines += ["  ".join(c[i].ljust(w[i]) for i in range(4)).rstrip() for c in cells]
        return "\n".join(lines)


def resolve(path: str) -> Any:
    """`a.b.C` -> the object: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(path)


def params(fn: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


def fields_of(cls: type) -> set[str]:
    """Field names of a dataclass, a msgspec Struct, a TypedDict or (else) __init__ parameters."""
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    if hasattr(cls, "__struct_fields__"):
        return set(cls.__struct_fields__)
    if hasattr(cls, "__required_keys__"):
        return set(cls.__required_keys__) | set(cls.__optional_keys__)
    return {n for n in params(cls.__init__) if n != "self"}


def literal_values(tp: Any) -> set[Any]:
    """Values of a Literal (inside Optional / Union / Annotated too)."""
    out: set[Any] = set()
    if typing.get_origin(tp) is typing.Literal:
        return set(typing.get_args(tp))
    for a in typing.get_args(tp):
        out |= literal_values(a)
    return out


def field_type(cls: type, name: str) -> Any:
    """The evaluated annotation of one dataclass field (typing.get_type_hints of the whole class
    trips over names vLLM imports only for type checkers)."""
    (f,) = [f for f in dataclasses.fields(cls) if f.name == name]
    if not isinstance(f.type, str):
        return f.type
    return eval(f.type, vars(sys.modules[cls.__module__]))  # noqa: S307 -- vLLM's own annotation


def source_of(obj: Any) -> str:
    return inspect.getsource(obj)


def short(xs: Any) -> str:
    return ", ".join(sorted(map(str, xs))) if xs else "-"


def tiny_model_folder(root: Path, generation_config: dict | None = None) -> Path:
    """A Qwen2 config (no weights) for vLLM's config classes, with a generation_config.json."""
    folder = root / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
           "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_hidden_layers": 2, "vocab_size": 320, "max_position_embeddings": 512,
           "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": True,
           "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(cfg))
    if generation_config is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation_config))
    return folder


def run_checks(report: Report, project: bool = True) -> None:
    import vllm

    ok = report.check
    ok("vllm version", "installed", lambda: (vllm.__version__, True))

    # -- imports
    objs: dict[str, Any] = {}
    for sym in SYMBOLS:
        def imp(sym=sym):
            objs[sym] = resolve(sym)
            return type(objs[sym]).__name__ if not inspect.isclass(objs[sym]) else objs[sym].__qualname__, True
        ok(f"import {sym}", "importable", imp)
    LLM, SamplingParams = objs.get("vllm.LLM"), objs.get("vllm.SamplingParams")
    AsyncLLMEngine = objs.get("vllm.AsyncLLMEngine")
    from vllm.engine.arg_utils import EngineArgs

    engine_fields = fields_of(EngineArgs)

    # -- engine arguments
    def llm_kwargs():
        own = params(LLM.__init__)
        var_kw = any(p.kind is p.VAR_KEYWORD for p in own.values())
        forwards = "EngineArgs(" in source_of(LLM.__init__) and "**kwargs" in source_of(LLM.__init__)
        missing = {k for k in KWARGS["vllm.LLM"] if k not in own and not (var_kw and forwards and k in engine_fields)}
        return (f"missing: {short(missing)}" if missing else "all (LLM parameters or EngineArgs fields)"), not missing
    ok("LLM(...) keywords", short(KWARGS["vllm.LLM"]), llm_kwargs)

    def async_args():
        missing = KWARGS["vllm.engine.arg_utils.AsyncEngineArgs"] - fields_of(objs["vllm.engine.arg_utils.AsyncEngineArgs"])
        return (f"missing: {short(missing)}" if missing else "all fields"), not missing
    ok("AsyncEngineArgs(...) keywords", short(KWARGS["vllm.engine.arg_utils.AsyncEngineArgs"]), async_args)

    def literal_arg(name: str):
        def fn():
            allowed = literal_values(field_type(EngineArgs, name))
            bad = VALUES[name] - allowed
            return f"allowed: {short(allowed)}", bool(allowed) and not bad
        return fn
    ok("EngineArgs.logprobs_mode", short(VALUES["logprobs_mode"]), literal_arg("logprobs_mode"))
    ok("EngineArgs.dtype", short(VALUES["dtype"]), literal_arg("dtype"))

    def logprobs_processed():
        # "processed": after the sampler's processing, temperature included (what the learner scores)
        from vllm.config import model as model_cfg

        modes = getattr(model_cfg, "PROCESSED_LOGPROBS_MODES", None)
        if modes is not None:
            return f"PROCESSED_LOGPROBS_MODES = {short(modes)}", "processed_logprobs" in modes
        return "named in vllm.config.model", "processed_logprobs" in source_of(model_cfg)
    ok("logprobs_mode processed = after temperature", "processed_logprobs", logprobs_processed)

    def load_formats():
        from vllm.model_executor import model_loader

        table = getattr(model_loader, "_LOAD_FORMAT_TO_MODEL_LOADER", None)
        known = set(table) if table is not None else literal_values(field_type(EngineArgs, "load_format"))
        bad = VALUES["load_format"] - known
        return f"{short(VALUES['load_format'] & known)} registered", not bad
    ok("EngineArgs.load_format", short(VALUES["load_format"]), load_formats)

    with tempfile.TemporaryDirectory() as tmp:
        gen_cfg = {"top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05, "temperature": 0.7}
        folder = tiny_model_folder(Path(tmp), gen_cfg)

        def generation_config():
            from vllm.config import ModelConfig

            if "generation_config" not in engine_fields:
                return "no EngineArgs.generation_config", False
            # vLLM's own config object on CPU: "auto" merges the checkpoint's sampling
            # defaults, "vllm" must not.
            auto = ModelConfig(model=str(folder), tokenizer=str(folder), generation_config="auto",
                               skip_tokenizer_init=True).get_diff_sampling_param()
            off = ModelConfig(model=str(folder), tokenizer=str(folder), generation_config="vllm",
                              skip_tokenizer_init=True).get_diff_sampling_param()
            return f"auto -> {sorted(auto)}; vllm -> {sorted(off)}", bool(auto) and not off
        ok("generation_config='vllm' ignores generation_config.json", "auto: top_k..., vllm: {}",
           generation_config)

        def model_config_logprobs():
            from vllm.config import ModelConfig

            mc = ModelConfig(model=str(folder), tokenizer=str(folder), skip_tokenizer_init=True,
                             logprobs_mode="processed_logprobs", max_model_len=256)
            try:
                ModelConfig(model=str(folder), tokenizer=str(folder), skip_tokenizer_init=True,
                            logprobs_mode="processed")
                rejected = False
            except Exception:  # noqa: BLE001 -- pydantic's or vLLM's validation error
                rejected = True
            return (f"logprobs_mode={mc.logprobs_mode}, max_model_len={mc.max_model_len}, "
                    f"bad mode rejected={rejected}"), (mc.logprobs_mode == "processed_logprobs"
                                                       and mc.max_model_len == 256 and rejected)
        ok("ModelConfig(logprobs_mode, max_model_len)", "accepted; invalid mode rejected", model_config_logprobs)

    def worker_extension_arg():
        return ("EngineArgs field" if "worker_extension_cls" in engine_fields else "absent",
                "worker_extension_cls" in engine_fields and "worker_extension_cls" in source_of(
                    importlib.import_module("vllm.v1.worker.worker_base")))
    ok("worker_extension_cls", "EngineArgs field, mixed into workers", worker_extension_arg)

    # -- SamplingParams
    def sp_fields():
        missing = KWARGS["vllm.SamplingParams"] - fields_of(SamplingParams)
        return (f"missing: {short(missing)}" if missing else
                f"all ({'msgspec Struct' if hasattr(SamplingParams, '__struct_fields__') else type(SamplingParams).__name__})"), not missing
    ok("SamplingParams fields", short(KWARGS["vllm.SamplingParams"]), sp_fields)

    big_seed = (1 << 63) - 1

    def project_params():
        if project:
            from router_r1.env.protocol import STOP_STRINGS
        else:
            STOP_STRINGS = ("</search>", "</answer>")
        sp = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=16, stop=list(STOP_STRINGS),
                            include_stop_str_in_output=True, logprobs=0, repetition_penalty=1.0,
                            seed=big_seed)
        return (f"top_k={sp.top_k} logprobs={sp.logprobs} seed={sp.seed} type={sp.sampling_type.name}",
                sp.top_k == 0 and sp.logprobs == 0 and sp.seed == big_seed
                and sp.sampling_type.name == "RANDOM_SEED")
    ok("SamplingParams as VLLMGenerator builds it", "valid; top_k 0, logprobs 0, seeded", project_params)

    def top_k_semantics():
        zero = SamplingParams(top_k=0).top_k
        default = SamplingParams().top_k
        try:
            SamplingParams(top_k=-2)
            validated = False
        except Exception:  # noqa: BLE001 -- VLLMValidationError / ValueError
            validated = True
        # What the sampler does with it: top_k <= 0 means the whole vocabulary.
        src = ""
        for mod in ("vllm.v1.worker.gpu.sample.states", "vllm.v1.worker.gpu_input_batch"):
            try:
                src = source_of(importlib.import_module(mod))
                break
            except Exception:  # noqa: BLE001 -- module absent or needs CUDA to import
                continue
        off = "top_k <= 0" in src or "top_k > 0" in src or "top_k if top_k > 0" in src
        return (f"top_k=0 accepted (default {default}); -2 rejected={validated}; sampler: 0 = whole vocab={off}",
                zero == 0 and default in (0, -1) and validated and off)
    ok("top_k=0 means no top-k", "accepted, off", top_k_semantics)

    def seed_transport():
        # SamplingParams cross to the engine core process as msgpack: the largest seed the
        # project makes must survive that.
        import msgspec

        sp = SamplingParams(temperature=1.0, seed=big_seed)
        back = msgspec.msgpack.decode(msgspec.msgpack.encode(sp), type=SamplingParams)
        return f"seed {back.seed} after msgpack", back.seed == big_seed
    ok("seed < 2**63 through msgpack", str(big_seed), seed_transport)

    def greedy():
        sp = SamplingParams(temperature=0.0, top_p=0.5, seed=3)
        return f"type={sp.sampling_type.name} top_p={sp.top_p}", sp.sampling_type.name == "GREEDY"
    ok("temperature=0 is greedy", "GREEDY", greedy)

    def tokens_prompt():
        missing = KWARGS["vllm.inputs.TokensPrompt"] - fields_of(objs["vllm.inputs.TokensPrompt"])
        p = objs["vllm.inputs.TokensPrompt"](prompt_token_ids=[1, 2, 3])
        return (f"missing: {short(missing)}" if missing else f"{p}"), not missing and p["prompt_token_ids"] == [1, 2, 3]
    ok("TokensPrompt(prompt_token_ids=...)", "TypedDict key", tokens_prompt)

    # -- LLM methods and attributes
    def method_row(cls_path: str, cls: Any, name: str, kws: set[str], extra: Callable[[dict], tuple[str, bool]] | None = None):
        def fn():
            m = getattr(cls, name)
            ps = params(m)
            missing = {k for k in kws if k not in ps}
            msg, good = (extra(ps) if extra else ("", True))
            if missing:
                msg = f"missing: {short(missing)}; {msg}"
            return (f"({', '.join(n for n in ps if n not in ('self', 'cls'))}){' ' + msg if msg else ''}",
                    not missing and good)
        ok(f"{cls_path.split('.')[-1]}.{name}", f"keywords {short(kws)}" if kws else "callable", fn)

    def llm_generate(ps):
        ann = str(ps["sampling_params"].annotation) if "sampling_params" in ps else ""
        return ("one SamplingParams per prompt" if "Sequence" in ann or "list" in ann else "single only",
                "prompts" in ps and ("Sequence" in ann or "list" in ann))

    def required_none(ps):
        req = [n for n, p in ps.items() if n != "self" and p.default is p.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        return (f"required: {req}" if req else ""), not req

    def rpc(ps):
        return ("method by name" if "method" in ps else "no method parameter"), "method" in ps and "args" in ps

    llm_extra = {"generate": llm_generate, "get_tokenizer": required_none, "collective_rpc": rpc,
                 "reset_prefix_cache": required_none}
    for name, kws in METHODS["vllm.LLM"].items():
        method_row("vllm.LLM", LLM, name, kws, llm_extra.get(name))

    def reset_returns():
        ret = inspect.signature(LLM.reset_prefix_cache).return_annotation
        return f"returns {ret}", "bool" in str(ret)
    ok("LLM.reset_prefix_cache result", "bool (False: not reset)", reset_returns)

    def attribute_chain():
        from vllm.config import ModelConfig

        init = source_of(LLM.__init__)
        engine_cls = resolve("vllm.LLMEngine")
        engine_init = source_of(engine_cls.__init__)
        has = ["self.llm_engine =" in init, "self.model_config" in engine_init,
               "max_model_len" in fields_of(ModelConfig)]
        return (f"LLM.llm_engine={has[0]}, {engine_cls.__name__}.model_config={has[1]}, "
                f"ModelConfig.max_model_len={has[2]}"), all(has)
    for chain in ATTRIBUTES["vllm.LLM"]:
        ok(f"LLM.{chain}", "set by LLM / LLMEngine / ModelConfig", attribute_chain)

    # -- AsyncLLMEngine (the pool's vLLM backend; the served router policy, engines/vllm_async.py)
    def from_engine_args(ps):
        return "", next(iter(n for n in ps if n not in ("cls", "self")), "") in ("engine_args",)

    def async_generate(ps):
        order = [n for n in ps if n != "self"][:3]
        return (f"async generator={inspect.isasyncgenfunction(AsyncLLMEngine.generate)}",
                order == ["prompt", "sampling_params", "request_id"]
                and inspect.isasyncgenfunction(AsyncLLMEngine.generate))

    def abort(ps):
        return (f"coroutine={inspect.iscoroutinefunction(AsyncLLMEngine.abort)}",
                "request_id" in ps and inspect.iscoroutinefunction(AsyncLLMEngine.abort))

    def get_tokenizer(ps):
        # VLLMEngine._render awaits the result only when it is awaitable: either form is fine.
        return ("coroutine" if inspect.iscoroutinefunction(AsyncLLMEngine.get_tokenizer) else "plain method"), True

    def async_attribute_chain():
        from vllm.config import ModelConfig

        has = ["self.model_config" in source_of(AsyncLLMEngine.__init__),
               "max_model_len" in fields_of(ModelConfig)]
        return (f"{AsyncLLMEngine.__name__}.model_config={has[0]}, ModelConfig.max_model_len={has[1]}"), all(has)
    for chain in ATTRIBUTES["vllm.AsyncLLMEngine"]:  # the served router policy (engines/vllm_async.py)
        ok(f"AsyncLLMEngine.{chain}", "set by AsyncLLMEngine / ModelConfig", async_attribute_chain)

    async_extra = {"from_engine_args": from_engine_args, "generate": async_generate, "abort": abort,
                   "get_tokenizer": get_tokenizer}
    for name, kws in METHODS["vllm.AsyncLLMEngine"].items():
        method_row("vllm.AsyncLLMEngine", AsyncLLMEngine, name, kws, async_extra.get(name))

    # -- outputs
    for path, names in OUTPUT_FIELDS.items():
        def out_fields(path=path, names=names):
            missing = names - fields_of(resolve(path))
            return (f"missing: {short(missing)}" if missing else "all"), not missing
        ok(f"{path.split('.')[-1]} fields", short(names), out_fields)

    # -- weight loading: worker extension -> model runner -> model.load_weights(weights=...)
    def worker_chain():
        worker_mod = importlib.import_module("vllm.v1.worker.gpu_worker")
        worker_src = source_of(worker_mod)
        runner_src = ""
        for mod in ("vllm.v1.worker.gpu.model_runner", "vllm.v1.worker.gpu_model_runner"):
            try:
                runner_src += source_of(importlib.import_module(mod))
            except Exception:  # noqa: BLE001 -- one of them may be absent
                pass
        has = ["self.model_runner" in worker_src, "def get_model(self)" in runner_src]
        return f"Worker.model_runner={has[0]}, runner.get_model={has[1]}", all(has)
    ok("worker.model_runner.get_model()", "present", worker_chain)

    def no_clash():
        worker = importlib.import_module("vllm.v1.worker.gpu_worker").Worker
        ext = resolve(EXTENSION) if project else None
        names = [a for a in dir(ext) if not a.startswith("__")] if ext is not None else ["load_hf_state_dict"]
        clash = [a for a in names if hasattr(worker, a)]
        return (f"clashes: {clash}" if clash else f"{names} free on Worker"), not clash
    ok("extension methods free on Worker", "no clash (vLLM asserts it)", no_clash)

    def load_weights():
        from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

        ps = params(Qwen2ForCausalLM.load_weights)
        return f"Qwen2ForCausalLM.load_weights({', '.join(n for n in ps if n != 'self')})", LOAD_WEIGHTS_KW in ps
    ok(f"model.load_weights({LOAD_WEIGHTS_KW}=...)", f"keyword {LOAD_WEIGHTS_KW!r}", load_weights)

    if project:
        project_checks(report, objs)


def project_checks(report: Report, objs: dict[str, Any]) -> None:
    """The project's own vLLM code, with stand-ins only for the GPU engine: real SamplingParams,
    TokensPrompt and output classes go in and come out."""
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    SamplingParams = objs["vllm.SamplingParams"]

    def completion(ids: list[int], text: str) -> Any:
        return CompletionOutput(index=0, text=text, token_ids=ids, cumulative_logprob=None,
                                logprobs=[{t: Logprob(logprob=-0.25 * (k + 1), rank=1, decoded_token=None)}
                                          for k, t in enumerate(ids)], finish_reason="stop")

    def request_output(prompt_ids: list[int], out: Any) -> Any:
        known = {"request_id": "r", "prompt": None, "prompt_token_ids": prompt_ids, "prompt_logprobs": None,
                 "outputs": [out], "finished": True}
        ps = params(RequestOutput.__init__)
        kw = {n: known.get(n) for n, p in ps.items() if n != "self" and p.default is p.empty
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        kw.update({n: v for n, v in known.items() if n in ps})
        return RequestOutput(**kw)

    class Tok:
        eos_token_id = 2
        chat_template = None

        def encode(self, text, add_special_tokens=False):
            return [ord(c) % 300 + 3 for c in text]

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(32 + (i % 90)) for i in ids)

    def generator():
        from router_r1.engines import vllm as ours

        seen: list[Any] = []

        class StubLLM:  # the GPU engine; everything handed to it and back is vLLM's own
            def generate(self, prompts, params, use_tqdm=True):
                seen.extend(params)
                assert all(isinstance(p, SamplingParams) for p in params)
                return [request_output(p["prompt_token_ids"], completion([5, 6, 7], "abc")) for p in prompts]

            def collective_rpc(self, method, args=()):
                seen.append(method)
                return [None]

            def reset_prefix_cache(self):
                return True

        gen = ours.VLLMGenerator.__new__(ours.VLLMGenerator)
        gen.llm, gen.tokenizer, gen.eos, gen.max_context = StubLLM(), Tok(), {2}, 512
        a = gen.generate([[1, 2, 3]] * 4, max_new_tokens=8, temperature=1.0, seed=7)
        b = gen.generate([[1, 2, 3]] * 4, max_new_tokens=8, temperature=1.0, seed=8)  # the next turn
        seeds = [p.seed for p in seen]
        gen.load_buckets([{}])
        ext_ok = hasattr(ours.WeightLoaderExtension, seen[-1])
        lp = a[0].logprobs
        good = (len(a) == len(b) == 4 and a[0].ids == [5, 6, 7] and lp == [-0.25, -0.5, -0.75]
                and len(set(seeds)) == 8 and all(0 <= s < 1 << 63 for s in seeds) and ext_ok
                and all(p.top_k == 0 and p.logprobs == 0 for p in seen if isinstance(p, SamplingParams)))
        return (f"8 rows, {len(set(seeds))} distinct seeds; logprobs {lp}; rpc '{seen[-1]}' on extension={ext_ok}",
                good)
    report.check("VLLMGenerator.generate / load_buckets", "real params in, real outputs parsed", generator)

    def weight_transport():
        # LLM.collective_rpc -> SyncMPClient.call_utility("collective_rpc", method, timeout, args,
        # kwargs): the client msgpack-encodes (client, call id, method, args) with MsgpackEncoder
        # and the engine-core process decodes it untyped (MsgpackDecoder()), then hands args to
        # the workers. A bucket must come out of that as the same tensors.
        import torch
        from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

        from router_r1.engines import vllm as ours

        state = {"model.embed_tokens.weight": torch.randn(300, 64).to(torch.bfloat16),
                 "model.norm.weight": torch.randn(64), "lm_head.bias": torch.zeros(0)}

        def hop(method: str, args: tuple) -> list:
            msg = (0, 1, "collective_rpc", (method, None, args, None))
            return MsgpackDecoder().decode(MsgpackEncoder().encode(msg))[3][2]

        raw = hop("load_hf_state_dict", (state,))[0]["model.embed_tokens.weight"]
        loaded: dict[str, Any] = {}

        class Model:
            def load_weights(self, weights):
                loaded.update(weights)
                return set(loaded)

        class Runner:
            def get_model(self):
                return Model()

        worker = type("Worker", (ours.WeightLoaderExtension,), {})()  # as vLLM mixes it in
        worker.model_runner = Runner()

        class StubLLM:  # the project's own load_buckets, through the real encoder and decoder
            def collective_rpc(self, method, args=()):
                return [getattr(worker, method)(*hop(method, args))]

            def reset_prefix_cache(self):
                return True

        gen = ours.VLLMGenerator.__new__(ours.VLLMGenerator)
        gen.llm = StubLLM()
        gen.load_buckets([state])
        exact = set(loaded) == set(state) and all(
            loaded[k].dtype == v.dtype and loaded[k].shape == v.shape and torch.equal(loaded[k], v)
            for k, v in state.items())
        return (f"bit-exact={exact} (a raw tensor would arrive as {type(raw).__name__} "
                f"{str(raw)[:40]})"), exact
    report.check("load_buckets through collective_rpc's msgpack hop", "bit-exact tensors in the worker",
                 weight_transport)

    def engine_args_of_the_project():
        # VLLMGenerator's own LLM(...) keywords, captured, then built into vLLM's configs on CPU.
        import torch
        import vllm
        from vllm.engine.arg_utils import EngineArgs

        from router_r1.engines import vllm as ours

        captured: dict[str, Any] = {}

        class Captured(Exception):
            pass

        class Recorder:
            def __init__(self, **kw):
                captured.update(kw)
                raise Captured

        saved = vllm.__dict__.get("LLM")
        vllm.LLM = Recorder
        try:
            with tempfile.TemporaryDirectory() as tmp:
                folder = tiny_model_folder(Path(tmp), {"top_k": 20, "repetition_penalty": 1.05})
                try:
                    ours.VLLMGenerator(folder, seed=5, dtype="bfloat16", load_format="dummy",
                                       gpu_memory_utilization=0.3)
                except Captured:
                    pass
                # skip_tokenizer_init: the tiny folder has no tokenizer (the check's addition)
                ea = EngineArgs(**captured, skip_tokenizer_init=True)
                mc, lc = ea.create_model_config(), ea.create_load_config()
                diff = mc.get_diff_sampling_param()
        finally:
            if saved is None:
                del vllm.LLM  # back to vLLM's lazy attribute
            else:
                vllm.LLM = saved
        ext = captured.get("worker_extension_cls", "")
        good = (mc.dtype == torch.bfloat16 and mc.logprobs_mode == "processed_logprobs" and diff == {}
                and lc.load_format == "dummy" and ea.enable_prefix_caching is True and ext == EXTENSION
                and resolve(ext) is ours.WeightLoaderExtension)
        return (f"{len(captured)} keywords -> dtype={mc.dtype}, logprobs_mode={mc.logprobs_mode}, "
                f"checkpoint sampling defaults={diff}, load_format={lc.load_format}, "
                f"prefix caching={ea.enable_prefix_caching}, extension resolves="
                f"{resolve(ext) is ours.WeightLoaderExtension}"), good
    report.check("VLLMGenerator's LLM(...) -> EngineArgs -> ModelConfig", "built on CPU as meant",
                 engine_args_of_the_project)

    def pool_engine():
        from router_r1.pool.backends.vllm_engine import _SAMPLING_KEYS, VLLMEngine

        real_async = inspect.iscoroutinefunction(objs["vllm.AsyncLLMEngine"].get_tokenizer)

        class StubAsyncLLM:  # get_tokenizer in the installed vLLM's form
            if real_async:
                async def get_tokenizer(self):
                    return Tok()
            else:
                def get_tokenizer(self):
                    return Tok()

            async def generate(self, prompt, sampling_params, request_id):
                assert isinstance(sampling_params, SamplingParams) and isinstance(prompt, str)
                yield request_output([1, 2], completion([9, 9], "hi"))

            async def abort(self, request_id):
                pass

        eng = VLLMEngine.__new__(VLLMEngine)
        eng.engine, eng._sampling_cls, eng._tokenizer = StubAsyncLLM(), SamplingParams, None
        params = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8, "stop": ["\n"], "seed": 1,
                  "presence_penalty": 0.0, "frequency_penalty": 0.0, "api_key": "x"}
        out = asyncio.run(eng.generate([{"role": "user", "content": "hi"}], params))
        return f"{out}; sampling keys {short(_SAMPLING_KEYS)}", out == ("hi", 2, 2, "stop")
    report.check("VLLMEngine.generate (pool backend)", "real SamplingParams, RequestOutput", pool_engine)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-project", action="store_true",
                    help="check vLLM alone, without importing router_r1 (its own code paths are skipped)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        print(f"vLLM is not importable here ({e}); run this under the virtualenv that has it", file=sys.stderr)
        return 2
    report = Report()
    run_checks(report, project=not args.no_project)
    print(report.table())
    n_bad = len(report.failed)
    print(f"\nvLLM {report.rows[0].found}: {len(report.rows) - n_bad} checks passed, {n_bad} failed")
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in report.rows], indent=1))
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
