"""The `seamless` command line."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from seamless.errors import ConfigError, SeamlessError


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    # parse_known_args, then take stray KEY=VALUE words as overrides: argparse alone rejects
    # `seamless run R.yaml --run-dir D a.b=1` (positionals after an option), which users type
    args, extra = parser.parse_known_args(argv)
    if extra:
        stray_overrides = [word for word in extra if "=" in word and not word.startswith("-")]
        if stray_overrides != extra or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *stray_overrides]
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except SeamlessError as exc:
        print(f"seamless: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seamless: interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seamless",
        description="Decoupled RL post-training for LLMs and LLM agents.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser("run", help="run a recipe (YAML) end to end",
                              description="Run a recipe. Overrides are KEY=VALUE with dotted keys, "
                                          "e.g. rollout.batch_size=16 trainer.lr=1e-5.")
    run.add_argument("recipe", help="recipe YAML, e.g. recipes/grpo_tiny_cpu.yaml")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides")
    run.add_argument("--run-dir", help="run folder (default: <run.root_dir>/<run.name>-<timestamp>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    run.set_defaults(handler=_cmd_run)

    config = commands.add_parser("config", help="validate a recipe and print it fully resolved")
    config.add_argument("recipe", help="recipe YAML")
    config.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides")
    config.set_defaults(handler=_cmd_config)

    doctor = commands.add_parser(
        "doctor", help="check this machine (devices, versions) and what a recipe would use on it",
        description="Print the devices and package versions seamless finds, and with a recipe the weight "
                    "transport, role-switch mechanism and vLLM settings it would use; list every problem "
                    "with its fix. Exits 1 when it finds a problem.")
    doctor.add_argument("recipe", nargs="?", help="recipe YAML to check against this machine")
    doctor.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides")
    doctor.set_defaults(handler=_cmd_doctor)

    model = commands.add_parser("model", help="build models")
    model_commands = model.add_subparsers(title="model commands", metavar="COMMAND")
    tiny = model_commands.add_parser(
        "tiny", help="build a tiny Llama model folder locally (tokenizer, chat template, weights)")
    tiny.add_argument("out_dir", help="folder to write (created)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--hidden-size", type=int, default=128)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--heads", type=int, default=4)
    tiny.add_argument("--kv-heads", type=int, default=2)
    tiny.add_argument("--intermediate-size", type=int, default=256)
    tiny.add_argument("--vocab-size", type=int, default=512,
                      help="BPE vocabulary before special tokens")
    tiny.add_argument("--tie-word-embeddings", action="store_true",
                      help="share the input embeddings with the output head (as Qwen2.5 does)")
    tiny.set_defaults(handler=_cmd_model_tiny)
    model.set_defaults(handler=lambda args: model.print_help() or 2)

    proxy = commands.add_parser(
        "proxy", help="run the trajectory manager (OpenAI-compatible proxy) alone",
        description="Serve the OpenAI-compatible trajectory manager in front of vLLM servers; agents "
                    "get per-session URLs from POST /sessions.")
    from seamless.proxy.server import add_arguments

    add_arguments(proxy)
    proxy.set_defaults(handler=_cmd_proxy)
    sim = commands.add_parser("sim", help="simulate scheduling policies at cluster scale",
                              description="Compare colocated, disaggregated (sync and async) and tagged "
                                          "scheduling on the workload of the recipe's cluster.sim section.")
    sim.add_argument("recipe", help="recipe YAML")
    sim.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides, e.g. "
                     "cluster.sim.response_sigma=1.5")
    sim.add_argument("--gpus", type=int, help="simulate this many GPUs instead of cluster.sim.gpus")
    sim.add_argument("--pool", action="store_true", help="simulate the recipe's own cluster.resources (tags, "
                     "GPU kinds and their speed) under its cluster.policy, instead of N-GPU pools")
    sim.add_argument("--json", action="store_true", help="print a JSON list, one object per policy and size")
    sim.add_argument("--plot", help="PNG to write (default: <run.root_dir>/sim-<run.name>.png; '' for none)")
    sim.set_defaults(handler=_cmd_sim)

    plan = commands.add_parser("plan", help="choose a cluster layout for a recipe with the simulator",
                               description="Simulate every layout (policy; train, rollout and both counts; "
                                           "staleness bound) of N GPUs for the recipe and rank them.")
    plan.add_argument("recipe", help="recipe YAML")
    plan.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key overrides")
    plan.add_argument("--gpus", type=int, required=True, help="GPUs to plan for")
    plan.add_argument("--from-run", metavar="RUN_DIR", help="calibrate the simulator from this run's recorded_run.json")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=_cmd_plan)
    return parser


def _cmd_proxy(args: argparse.Namespace) -> int:
    from seamless.proxy.server import run_from_args

    return run_from_args(args)


def _cmd_config(args: argparse.Namespace) -> int:
    from seamless.config import load_recipe

    print(load_recipe(args.recipe, args.overrides).to_yaml(), end="")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from seamless.config import load_recipe
    from seamless.doctor import diagnose

    recipe = load_recipe(args.recipe, args.overrides) if args.recipe else None
    report = diagnose(recipe)
    print(report.render())
    return 1 if report.problems else 0


def _cmd_model_tiny(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from seamless.config import TinyModelConfig
    from seamless.errors import ConfigError
    from seamless.models.tiny import build_tiny_model

    try:
        spec = TinyModelConfig(seed=args.seed, hidden_size=args.hidden_size, num_layers=args.layers,
                               num_heads=args.heads, num_kv_heads=args.kv_heads,
                               intermediate_size=args.intermediate_size, vocab_size=args.vocab_size,
                               tie_word_embeddings=args.tie_word_embeddings)
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc']) or 'size'}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"invalid model size: {problems}") from None
    out = build_tiny_model(Path(args.out_dir), spec)
    print(f"wrote tiny Llama model to {out}")
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    from seamless.scheduler.report import run_sim

    return run_sim(args.recipe, args.overrides, args.gpus, args.json, args.plot, args.pool)


def _cmd_plan(args: argparse.Namespace) -> int:
    import json

    from seamless.config import load_recipe
    from seamless.scheduler.planner import format_plan, make_plan

    plan = make_plan(load_recipe(args.recipe, args.overrides), args.gpus, args.from_run)
    print(json.dumps(plan.to_json(), indent=1) if args.json else format_plan(plan))
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _cmd_run(args: argparse.Namespace) -> int:
    from seamless.config import load_recipe
    from seamless.run.folders import create_run_dir

    if args.resume:
        resolved = Path(args.resume) / "recipe.resolved.yaml"
        if not resolved.is_file():
            raise ConfigError(f"--resume {args.resume}: no recipe.resolved.yaml there; pass a run folder "
                              "that seamless run created")
    recipe = load_recipe(args.recipe, args.overrides)
    from seamless.run.layout import resolve_layout, save_plan
    from seamless.run.parts import check_recipe, describe_failure

    recipe, plan = resolve_layout(recipe, args.resume)  # cluster.policy auto: the planner's layout
    if plan is not None:
        print(f"seamless run: cluster.policy auto chose {plan.best.layout.label()} "
              f"({plan.best.tokens_per_s:,.1f} tokens/s predicted, best of {len(plan.ranked)} layouts)")
    check_recipe(recipe)  # a recipe that cannot run fails here: no run folder, no services, no resume hint
    run_dir = create_run_dir(recipe, args.resume or args.run_dir)
    if plan is not None:
        save_plan(plan, run_dir)
    from seamless.run.loop import run

    # SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C, so every service is stopped and a
    # checkpoint is written; Python's default would exit without running any cleanup
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        run(recipe, run_dir, resume=bool(args.resume))
    except KeyboardInterrupt:
        print(f"seamless run: interrupted; resume with: seamless run {args.recipe} --resume {run_dir}",
              file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"seamless run: failed: {describe_failure(exc, run_dir)}", file=sys.stderr)
        if not isinstance(exc, ConfigError):  # a config mistake needs a fix, not a resume
            print(f"seamless run: resume with: seamless run {args.recipe} --resume {run_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
