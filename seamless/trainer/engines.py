"""DeepSpeed configuration and engines: policy, frozen reference, critic.

Runs inside a rank's process (a Ray actor), after torch.distributed is initialized.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from seamless.errors import ConfigError

# DeepSpeed batch keys: seamless sizes batches itself (token-budget micro-batches, its own
# accumulation boundary), so a recipe that sets them would be silently overridden
_RESERVED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def deepspeed_config(user: dict[str, Any], world_size: int, grad_clip: float | None, dtype: str) -> dict[str, Any]:
    """The recipe's `trainer.deepspeed` section plus what seamless owns."""
    for key in _RESERVED_KEYS:
        if key in user:
            raise ConfigError(f"trainer.deepspeed.{key} is set by seamless; remove it (size batches with "
                              "trainer.micro_batch_tokens and trainer.mini_batches)")
    config = copy.deepcopy(user)
    # one "micro-batch" of DeepSpeed's bookkeeping per backward; the boundary is set explicitly
    config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=world_size)
    if grad_clip is not None:
        config["gradient_clipping"] = grad_clip
    config["zero_allow_untested_optimizer"] = True
    config.setdefault("steps_per_print", 1 << 30)
    if dtype == "bfloat16":
        config.setdefault("bf16", {"enabled": True})
    elif dtype == "float16":
        raise ConfigError("model.dtype float16 is not supported by the trainer; use bfloat16 or float32")
    zero = config.setdefault("zero_optimization", {"stage": 0})
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"trainer.deepspeed.zero_optimization.stage is {stage!r}; use 0, 1, 2 or 3")
    if stage == 3:
        # lets export gather full 16-bit weights
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", True)
    return config


def zero_stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


@dataclass
class Engines:
    """What one rank holds. `reference` and `critic` are None when the algorithm needs none."""

    policy: Any  # deepspeed.DeepSpeedEngine
    reference: Any | None
    critic: Any | None
    stage: int
    partitioned_at_load: bool = False
    """The policy's parameters were created as ZeRO-3 shards (no rank ever held the whole model)."""


def _adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: fewer kernel launches; the LR is set by seamless before every step
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), eps=1e-8)


def build_engines(model_dir: str, config: dict[str, Any], dtype: str, lr: float, critic_lr: float,
                  weight_decay: float, need_reference: bool, need_critic: bool) -> Engines:
    """Load the policy (and reference, critic) from `model_dir` and wrap them with DeepSpeed."""
    torch_dtype = torch.float32  # master weights stay fp32; bf16 comes from DeepSpeed's bf16 mode
    stage = zero_stage(config)
    with _partitioned_construction(config, stage):
        return _build(model_dir, config, dtype, lr, critic_lr, weight_decay, need_reference, need_critic,
                      stage, torch_dtype)


@contextlib.contextmanager
def _partitioned_construction(config: dict[str, Any], stage: int) -> Iterator[None]:
    """Under ZeRO-3, models are built as shards: while a `HfDeepSpeedConfig` lives, transformers'
    `from_pretrained` creates parameters inside `deepspeed.zero.Init` and loads each checkpoint
    tensor into its shards, so no rank ever holds the whole model (it would otherwise load it
    whole on every rank, then partition)."""
    if stage != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    marker = HfDeepSpeedConfig(copy.deepcopy(config))  # noqa: F841 (transformers holds a weak reference)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()


def _build(model_dir: str, config: dict[str, Any], dtype: str, lr: float, critic_lr: float, weight_decay: float,
           need_reference: bool, need_critic: bool, stage: int, torch_dtype: torch.dtype) -> Engines:
    import deepspeed
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    policy_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
    partitioned = all(hasattr(p, "ds_id") for p in policy_model.parameters())
    policy, *_ = deepspeed.initialize(model=policy_model, optimizer=_adamw(policy_model, lr, weight_decay),
                                      config=copy.deepcopy(config))
    reference = None
    if need_reference:
        ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_DTYPES[dtype]).eval()
        ref_model.requires_grad_(False)
        if stage == 3:
            # partitioned like the policy; no optimizer, so DeepSpeed only shards and gathers it
            ref_config = {k: v for k, v in config.items() if k not in ("optimizer", "scheduler")}
            reference, *_ = deepspeed.initialize(model=ref_model, config=ref_config)
        else:
            reference = ref_model.to(policy.device)
    critic = None
    if need_critic:
        # the critic starts from the policy's weights with a fresh one-output head
        critic_model = AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=1, dtype=torch_dtype)
        critic, *_ = deepspeed.initialize(model=critic_model, optimizer=_adamw(critic_model, critic_lr, weight_decay),
                                          config=copy.deepcopy(config))
    return Engines(policy=policy, reference=reference, critic=critic, stage=stage, partitioned_at_load=partitioned)
