"""The layers of seamless, enforced: imports flow one way, and the proxy and the store start
without the GPU stack (they must start in a second and run where no torch is installed)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "seamless"

# lowest first; a module may import its own layer and the ones below, never one above
LAYERS = [
    {"types", "errors"},  # typed records and the errors every part raises
    {"config"},  # the recipe, one class per section
    {"traces", "algorithms", "rollout", "services", "models", "cluster"},  # Redis schema + merge of turns,
    # pure RL math, vLLM servers and weight transports, local services, the tiny model, Ray and devices
    {"proxy", "trainer", "scheduler", "agent"},  # the trajectory manager, DeepSpeed ranks, roles, running agents
    {"run", "doctor"},  # one run: every part built, then the main loop; checks of a machine
    {"cli"},
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}
HEAVY = ("torch", "ray", "deepspeed", "vllm")


def _top(path: Path) -> str:
    """The top-level part of seamless a file belongs to (`proxy` for seamless/proxy/app.py)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported(path: Path) -> set[str]:
    """Every module name a file imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if _top(p) != "__init__")


def test_every_part_of_the_package_has_a_layer():
    missing = {_top(p) for p in SOURCES} - LAYER_OF.keys()
    assert not missing, f"add {sorted(missing)} to LAYERS in {Path(__file__).name}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_reaches_a_higher_layer(path):
    own = LAYER_OF[_top(path)]
    parts = {name.split(".")[1] for name in _imported(path) if name.startswith("seamless.")}
    upward = sorted(name for name in parts if LAYER_OF.get(name, -1) > own)
    assert not upward, (f"{path.relative_to(PACKAGE.parent)} (layer {own}) imports {upward} from a higher layer; "
                        "move the shared piece down or pass it in")


def test_the_library_never_imports_the_example_agents():
    offenders = [str(p.relative_to(PACKAGE.parent)) for p in SOURCES
                 if any(name.split(".")[0] == "agents" for name in _imported(p))]
    assert not offenders, f"{offenders} import the example agents; agents supply what seamless needs through seamless.agent.api"


def test_the_proxy_and_the_store_load_without_the_gpu_stack():
    code = ("import sys\n"
            "import seamless.proxy.app, seamless.proxy.server, seamless.traces.store, seamless.traces.episodes\n"
            "from seamless.proxy.state import ProxySettings\n"
            "seamless.proxy.app.create_app(ProxySettings(store_url='redis://127.0.0.1:1/0', key_prefix='t', admin_key='k'))\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.strip()
    assert not loaded, f"importing the proxy app and the store loaded {loaded}; import those lazily or not at all"
