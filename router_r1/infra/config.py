"""One typed configuration, loaded from YAML, shared by training, evaluation and serving.

Each part of the system owns one section; unknown keys are errors, so a typo never silently
falls back to a default. Paths are resolved relative to the YAML file's folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router_r1.env.episode import EpisodeConfig
from router_r1.env.prompt import PromptLayout, PromptOptions
from router_r1.env.reward import RewardConfig
from router_r1.pool.descriptors import PoolSpec, load_pool
from router_r1.pool.runtime import PoolRuntimeConfig

# Where a renamed warm-start subject's new name comes from (WarmStartConfig.swap_names).
SwapNames = Literal["all", "training"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyModelConfig(_Section):
    """A router built from config (router_r1.engines.model.build_tiny_policy): a transformers
    architecture and its sizes, randomly initialised, with a tokenizer trained locally."""

    architecture: str = "qwen2"  # a transformers model type (AutoConfig.for_model)
    hidden_size: int = Field(default=128, ge=1)
    num_hidden_layers: int = Field(default=2, ge=1)
    num_attention_heads: int = Field(default=4, ge=1)
    num_key_value_heads: int = Field(default=2, ge=1)
    intermediate_size: int = Field(default=256, ge=1)
    max_position_embeddings: int = Field(default=2048, ge=1)


class PolicyConfig(_Section):
    """The router LLM: a local checkpoint, or a tiny model built from config (demo, tests)."""

    checkpoint: str | None = None  # local HF checkpoint directory
    # The policy's weights everywhere (learner, reference, rollouts, weight sync, saved policy):
    # "auto" is the checkpoint's own config.json dtype (float32 for a tiny model built from config).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    tokenizer_vocab_size: int = 2000  # locally trained tokenizer for tiny models
    use_chat_template: bool = True  # when the checkpoint's tokenizer has one
    # How the prompt lays out the instructions and the candidates (router_r1.env.prompt.PromptLayout):
    # "full" (the paper's instructions; price, latency, size and description per model) or
    # "compact" (short instructions and one short line per model: for tiny routers whose context
    # is small). Rollouts, warm-start traces, serving and evaluation all render with it.
    prompt_layout: PromptLayout = "full"
    # Keep only the last N tokens of the question in the prompt (None: the whole question). For
    # tiny routers on long benchmark prompts (RouterBench's few-shot examples come first, the
    # question itself last); the replayed call still receives the full question.
    max_question_tokens: int | None = Field(default=None, ge=1)

    def prompt_options(self, conversation: bool = False) -> PromptOptions:
        """How this policy's prompt is rendered; saved with every checkpoint it writes
        (`conversation`: trained with earlier turns in its prompt, RunConfig.prompt_options)."""
        return PromptOptions(layout=self.prompt_layout, max_question_tokens=self.max_question_tokens,
                             use_chat_template=self.use_chat_template, conversation=conversation)


class RolloutConfig(_Section):
    num_actors: int = 1
    episodes_per_actor: int = 16
    # Rollouts ahead of the learner (pipelines/train.py): 0 is the synchronous step (sync, roll
    # out, update); k > 0 keeps the rollouts of the next k steps running while the learner
    # updates, so a step trains on episodes of weights at most k versions old, corrected by
    # truncated importance weights (learner.behaviour_is_cap; router_r1.rl.algos).
    max_staleness: int = Field(default=0, ge=0)
    # Continuous batching over episodes (router_r1.env.episode.run_episodes): the longest a
    # generation batch waits for routed calls about to return, e.g. 0.05 with candidates that take
    # seconds. None: every batch waits for every call (turn-synchronous; a run repeats exactly).
    batch_wait_s: float | None = Field(default=None, ge=0.0)
    engine: Literal["transformers", "vllm"] = "transformers"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_restarts: int = 2
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources (cluster.yaml)
    torch_threads: int | None = Field(default=None, ge=1)  # CPU threads; None: Ray's (= num_cpus)
    # vLLM engine (rollout.engine: vllm): the share of each GPU it may take (weights + KV cache)
    # and the GPUs one engine spans; an actor needs num_gpus >= tensor_parallel_size.
    gpu_memory_utilization: float = Field(default=0.4, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int | None = Field(default=None, ge=1)  # None: the checkpoint's context length

    @model_validator(mode="after")
    def _tp_fits(self) -> RolloutConfig:
        if self.engine == "vllm" and self.tensor_parallel_size > max(1.0, self.num_gpus):
            raise ValueError(f"rollout.tensor_parallel_size {self.tensor_parallel_size} needs "
                             f"rollout.num_gpus >= {self.tensor_parallel_size} (one GPU per shard)")
        return self


class LearnerConfig(_Section):
    """The learner (actors/learner.py; the maths and its papers in router_r1/rl/algos.py)."""

    algorithm: Literal["grpo", "ppo"] = "grpo"
    lr: float = 1e-5
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    group_size: int = 4  # GRPO: samples per question
    clip_eps: float = 0.2
    # Rollouts ahead of the learner (rollout.max_staleness > 0): the cap of the truncated
    # importance weights pi_prox / mu of rows sampled by older weights (router_r1.rl.algos.behaviour_weights).
    behaviour_is_cap: float = Field(default=2.0, gt=0.0)
    kl_coef: float = 0.001
    entropy_coef: float = 0.0
    # How per-token losses become one loss per optimizer step (algos.loss_weights): "token-mean"
    # (every policy token alike), "seq-mean-token-mean" (DeepSeekMath GRPO: mean per episode, then
    # over episodes), "seq-mean-token-sum" (Dr. GRPO: sum per episode, mean over episodes).
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"  # KL(pi || ref) per token (algos.kl_penalty)
    gamma: float = 1.0  # PPO
    gae_lambda: float = 1.0  # PPO
    value_coef: float = 0.5  # PPO
    vf_clip: float | None = Field(default=0.2, gt=0.0)  # PPO value clipping range; None: no clipping
    vf_lr: float | None = None
    ppo_epochs: int = 1
    micro_batch_size: int = 8
    grad_accum: int = 1
    grad_clip: float = 1.0
    bf16: bool = False  # bf16 autocast for the learner's forward passes
    # float32: the learner trains float32 master weights (and float32 AdamW state) of a bf16/fp16
    # policy, computing under autocast in the policy dtype; what it publishes and saves is cast to
    # policy.dtype. None: the learner's weights and optimizer state are in policy.dtype.
    master_dtype: Literal["float32"] | None = None
    gradient_checkpointing: bool = False
    # Tokens per float32 chunk when the learner takes log-probs and entropy (router_r1.rl.logprobs):
    # no full-vocabulary float32 tensor is built; the result is the same for any value.
    logprob_chunk: int = Field(default=1024, ge=1)
    # Rows that begin alike (the prompt's instructions and descriptors) run that shared prefix
    # through the trunk once per micro-batch (router_r1.rl.policy_model.PolicyWithValue): same logits and
    # gradients, about half the compute on the demo. Off: every row runs whole.
    share_prefix: bool = True
    # Published weights are cut into buckets of about this many MB, one object-store ref each.
    sync_bucket_mb: float = Field(default=256.0, gt=0)
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    # Data-parallel learner actors (torch.distributed; actors/learner_group.py). The update does
    # not depend on it: an optimizer step holds micro_batch_size * grad_accum rows in all, split
    # over the learners, each running its part in micro-batches of at most micro_batch_size rows.
    num_learners: int = Field(default=1, ge=1)
    # With num_learners > 1, what the learners shard among themselves (docs/cluster.md; the update
    # is the unsharded one either way): "none" (DDP: each holds everything), "zero1" (AdamW state:
    # torch ZeroRedundancyOptimizer, ZeRO stage 1, 8 bytes per parameter become 8/N), "fsdp2"
    # (weights, gradients and AdamW state: torch fully_shard per decoder layer, router_r1.rl.fsdp).
    sharding: Literal["none", "zero1", "fsdp2"] = "none"
    # CPU threads for torch; None: what Ray gives (OMP_NUM_THREADS = num_cpus). The driver's step is
    # synchronous (rollouts, then the update), so a CPU learner may use cores its actor does not
    # reserve: the demo's learner (num_cpus 1) updates with 2 threads while the rollouts wait.
    torch_threads: int | None = Field(default=None, ge=1)
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources (cluster.yaml)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "shard_optimizer" in data:
            raise ValueError(f"learner.shard_optimizer is now learner.sharding: write `sharding: "
                             f"{'zero1' if data['shard_optimizer'] else 'none'}` (or fsdp2, which shards weights "
                             "and gradients too; docs/cluster.md)")
        return data


class WarmStartConfig(_Section):
    """Supervised warm start on generated well-formed traces (tiny models only)."""

    steps: int = 0
    lr: float = 1e-3
    # The multiplier of `lr` at SFT step k (router_r1.rl.schedule.lr_lambda): warmup, then constant or decay to 0.
    warmup_steps: int = Field(default=0, ge=0)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    batch_size: int = 16
    num_traces: int = 512
    # Share of each demonstrated policy. Simulator (router_r1.worlds.sim.traces.TRACE_POLICIES):
    # None is the default mix (60% expert, 40% random); {random: 1.0} teaches the format, the moves
    # and copying an answer out of <information>, but not which model to trust: that is left to RL.
    # Replay (router_r1.worlds.replay.world.TRACE_POLICIES): `task` (default) or `per_task`.
    trace_mix: dict[str, float] | None = None
    # Replay `per_task` traces: per task, the cheapest model whose training-split accuracy is within
    # this margin of the task's best (router_r1.worlds.replay.routing.per_task_routes).
    task_margin: float = Field(default=0.0, ge=0.0, le=1.0)
    # Share of simulator traces whose question's subject is renamed to another entity of its kind
    # throughout (router_r1.worlds.sim.traces.swap_subject): fresh names in every trace, so names
    # can only be written by copying them out of the question.
    subject_swap: float = Field(default=0.0, ge=0.0, le=1.0)
    # Where a renamed subject's new name comes from: "all" (every entity of the kind, held-out
    # entities included, as pretraining text would name them; the facts a renamed trace states
    # about it are false) or "training" (only entities training questions may ask about: no
    # trace asks about a held-out entity, though one may still be written as another question's
    # answer or hop; docs/training.md, the demo now).
    swap_names: SwapNames = "all"
    # Share of simulator traces played over a random synthetic pool each, routed by the
    # descriptor-only expert (router_r1.worlds.sim.synthetic): teaches reading descriptors, so
    # that a model unseen in training is called where its description says it is strong.
    synthetic_pools: float = Field(default=0.0, ge=0.0, le=1.0)

    @field_validator("trace_mix")
    @classmethod
    def _weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        # The policy names are the world's own: each world checks them in `from_config`
        # (router_r1.worlds.base.check_trace_mix), before Ray starts.
        if v is not None and (any(w < 0 for w in v.values()) or sum(v.values()) <= 0):
            raise ValueError("trace_mix weights must be >= 0 with a positive sum")
        return v


class SimDataOptions(_Section):
    """Which simulator questions a run uses (router_r1.worlds.sim.world)."""

    train_size: int | None = Field(default=None, ge=1)  # None: data.limit, else the whole split
    val_size: int = Field(default=64, ge=1)  # validation questions played greedily
    two_hop_fraction: float | None = Field(default=None, ge=0.0, le=1.0)  # None: the world's mix
    # How validation is held out (router_r1.worlds.sim.knowledge): "entity" (validation asks about
    # entities no training question is about) or "question" (validation questions are not training
    # questions, but every subject they name is named in training; the entity-held-out test split
    # is then played too, as the harder test). None: the pool file's (default "entity").
    split: Literal["entity", "question"] | None = None
    heldout_size: int = Field(default=64, ge=0)  # split "question": held-out-entity questions played
    # The share of each split's questions (train, val, held out, warm-start traces) that are
    # follow-ups: a two-hop chain's first hop as an earlier turn, the question referring back to it
    # (router_r1.worlds.sim.knowledge.follow_up), answerable only by reading the conversation.
    # > 0 also saves the policy with PromptOptions.conversation (Serve then renders a request's
    # conversation). 0: single questions only, as before.
    conversation_share: float = Field(default=0.0, ge=0.0, le=1.0)


class DataConfig(_Section):
    """The run's world (router_r1.worlds.base): `kind` picks a built-in one; `custom` names a
    user's class in `world` ("package.module:ClassName") and passes it `options`."""

    kind: Literal["simulated", "qa", "replay", "custom"] = "simulated"
    world: str | None = None  # custom worlds: "package.module:ClassName"
    options: dict[str, Any] = Field(default_factory=dict)  # custom worlds: keyword arguments
    train: list[str] = Field(default_factory=list)  # dataset files (qa/replay)
    eval: list[str] = Field(default_factory=list)
    limit: int | None = None
    sim: SimDataOptions = Field(default_factory=SimDataOptions)  # simulated-world options
    val_fraction: float = 0.1
    # The seed of the train/validation split (qa/replay: of `train`; simulated: which questions
    # are drawn for each split); None: the run's `seed`. A run can then be repeated under another
    # seed on the same held-out questions.
    split_seed: int | None = None
    # Every world: the first N validation questions the driver plays greedily at the start and
    # end of training (None: all of them). The full split is evaluated by `router-r1 evaluate`.
    val_size: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _custom_world(self) -> DataConfig:
        if (self.kind == "custom") != (self.world is not None):
            raise ValueError("data.world names the class of a custom world: set it exactly when "
                             "data.kind is 'custom'")
        if self.options and self.kind != "custom":
            raise ValueError("data.options are a custom world's; built-in worlds take their own keys")
        return self


class TrainConfig(_Section):
    steps: int = 10
    log_every: int = Field(default=1, ge=1)  # without a progress bar: one log line every N RL steps
    checkpoint_every: int = 5
    # Complete checkpoints kept under output_dir/checkpoints (the newest N); None: all of them.
    keep_checkpoints: int | None = Field(default=None, ge=1)
    # What a learner checkpoint holds beside the model, scheduler, counters and RNG: AdamW state
    # (2x the weights in the optimizer's dtype) and the KL reference (1x in policy.dtype). Without
    # them a resume restarts AdamW's moments at zero / takes the resumed policy as the reference,
    # and is no longer bit-exact with an uninterrupted run.
    checkpoint_optimizer: bool = True
    checkpoint_reference: bool = True
    sample_every: int = 5  # log sample trajectories every K steps
    eval_every: int = 0


class MlflowConfig(_Section):
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"  # MLFLOW_TRACKING_URI overrides
    experiment: str = "router-r1"
    enabled: bool = True


class RayConfig(_Section):
    address: str | None = None  # None: start a local Ray; "auto" or ray://... to join a cluster
    num_cpus: int | None = None
    object_store_memory: int | None = None
    namespace: str = "router_r1"


class ServeConfig(_Section):
    model_name: str = "router-r1"
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: dict[str, str] = Field(default_factory=dict)  # key -> tenant; or env ROUTER_R1_API_KEYS
    max_prompt_chars: int = 8000
    request_timeout_s: float = 60.0
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.02
    # How concurrent router turns share the policy (docs/serving.md): "continuous", a turn joins
    # the running batch at the next forward step and leaves it when it ends (transformers'
    # continuous batching; on vLLM, its async engine); "turn", @serve.batch: one batch is one
    # turn of every request ready within batch_wait_timeout_s, and it ends before the next
    # starts. max_batch_size bounds the rows either way; 1 is unbatched. (The Serve app's; the
    # in-process router_r1.Router batches per turn.)
    batching: Literal["turn", "continuous"] = "continuous"
    # Continuous batching on transformers: KV-cache slots (tokens) of the replica's paged cache;
    # None: max_batch_size x min(context window, 4096) on CPU, sized from free memory on GPU.
    kv_cache_tokens: int | None = Field(default=None, ge=64)
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 16
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    # Added for the serving app (issue 6).
    max_ongoing_requests: int = 64  # per replica; must cover max_batch_size for batching to fill
    engine: Literal["transformers", "vllm"] = "transformers"  # the router policy's generator
    gpu_memory_utilization: float = Field(default=0.5, gt=0.0, le=1.0)  # vLLM: the replica's GPU share
    temperature: float = 0.0  # router sampling when the request gives none (greedy by default)
    max_turns_limit: int = 8  # largest per-request max_turns accepted
    max_new_tokens_limit: int = 512  # largest per-request max_turn_tokens (per router turn) accepted
    answer_reserve_fraction: float = Field(default=0.25, ge=0.0, lt=1.0)  # share of the deadline
    # kept for the router's final turn: candidate calls are cut at (1 - this) x request_timeout_s
    torch_threads: int | None = None  # intra-op threads for CPU generation; None = torch default
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources (cluster.yaml)
    # OpenAI fields the app does not implement (logprobs, tools, ...) are a 400 naming them; with
    # drop_params (LiteLLM's convention) they are left out instead, and the response's
    # x-router-r1-dropped-params header lists them.
    drop_params: bool = False
    # A pool model that answers the conversation itself when the router ends without a valid
    # answer (the response says router_r1.fallback: true); None: such a request is a 502.
    fallback_model: str | None = None
    max_body_bytes: int = Field(default=2_000_000, ge=1024)  # a larger request body is a 413
    # The conversation is the input: the router's prompt holds the system prompt and the turns
    # before the last user message, within max_history_tokens and the context window (oldest
    # user/assistant turns cut first, system turns last; docs/serving.md). "auto": when the
    # checkpoint's prompt options say it was trained so (PromptOptions.conversation), else the
    # last user message only, the prompt it was trained on; "on"/"off" force it.
    conversation: Literal["auto", "on", "off"] = "auto"
    max_history_tokens: int = Field(default=1024, ge=0)
    # What a candidate model is sent for a routed call: "query", the router's sub-question alone
    # (the router must make it self-contained); "conversation", the turns the router's prompt
    # holds, then the sub-question.
    candidate_context: Literal["query", "conversation"] = "query"


class EvalConfig(_Section):
    output_dir: str = "outputs/eval"
    concurrency: int = 32


class RunConfig(_Section):
    """Everything a run needs. `pool` is the path of the model-descriptor file."""

    name: str = "router-r1"
    seed: int = 0
    output_dir: str = "outputs/run"
    pool: str = "pool_simulated.yaml"
    pool_runtime: PoolRuntimeConfig = Field(default_factory=PoolRuntimeConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    episode: EpisodeConfig = Field(default_factory=EpisodeConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    warmstart: WarmStartConfig = Field(default_factory=WarmStartConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def prompt_options(self) -> PromptOptions:
        """The policy's prompt options as a checkpoint of this run records them: `conversation`
        when training shows conversations (the simulator's follow-ups, data.sim.conversation_share)."""
        convo = self.data.kind == "simulated" and self.data.sim.conversation_share > 0
        return self.policy.prompt_options(conversation=convo)

    def load_pool(self) -> PoolSpec:
        return load_pool(self.pool)

    @property
    def split_seed(self) -> int:
        """The seed of the train/validation split: `data.split_seed`, else `seed`."""
        return self.seed if self.data.split_seed is None else self.data.split_seed

    def check_training(self) -> None:
        """Refuse, in one line, settings under which RL training would silently be wrong. Called
        by the train driver and the learner (evaluation and serving may sample greedily)."""
        e, lc = self.episode, self.learner
        if lc.algorithm == "grpo" and lc.group_size < 2:
            raise ValueError(f"learner.group_size is {lc.group_size}: GRPO needs >= 2 samples per question "
                             "(a group of one has zero advantage)")
        if e.temperature <= 0:
            raise ValueError(f"episode.temperature is {e.temperature}: RL training samples, so it must be > 0 "
                             "(greedy groups give equal rewards, zero advantages and no sampler log-probs)")
        if e.top_p != 1.0:
            raise ValueError(f"episode.top_p is {e.top_p}: training must sample with top_p 1.0, the "
                             "distribution the learner scores (top-p would make every update off-policy)")

    def flat(self) -> dict[str, Any]:
        """Flattened `a.b.c -> value` view, for MLflow params. Holds no secrets by design:
        API keys live in environment variables named by the descriptors, never in config."""
        out: dict[str, Any] = {}

        def walk(prefix: str, v: Any) -> None:
            if isinstance(v, dict):
                for k, x in v.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), x)
            else:
                out[prefix] = v

        d = self.model_dump()
        d["serve"].pop("api_keys", None)
        walk("", d)
        return out


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    def fix(p: str) -> str:
        q = Path(p)
        return p if q.is_absolute() or not (base / q).exists() else str((base / q).resolve())

    if isinstance(raw.get("pool"), str):
        raw["pool"] = fix(raw["pool"])
    data = raw.get("data") or {}
    for key in ("train", "eval"):
        if isinstance(data.get(key), list):
            data[key] = [fix(p) for p in data[key]]
    if isinstance((raw.get("policy") or {}).get("checkpoint"), str):
        raw["policy"]["checkpoint"] = fix(raw["policy"]["checkpoint"])
    return raw


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Dotted `overrides` ("learner.lr": 1e-4) set into the raw config mapping `raw`, in place."""
    for key, value in (overrides or {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a RunConfig from YAML (or defaults), apply dotted `overrides`, validate."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {path}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a config must be a mapping")
        base = path.parent
    apply_overrides(raw, overrides)
    raw = _resolve_paths(raw, base)
    try:
        return RunConfig.model_validate(raw)
    except Exception as e:
        raise ValueError(f"{path or '<defaults>'}: invalid config:\n{e}") from None
