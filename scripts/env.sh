# Environment for running seamless on this machine; sourced by scripts/test.sh and scripts/seamless.
# Keeps the libraries' caches inside the repo's .venv rather than the user's home, and makes the
# CPU defaults explicit (DESIGN.md section 4).
export DS_ACCELERATOR="${DS_ACCELERATOR:-$(command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/torch_extensions}"
export PYTHONUNBUFFERED=1
