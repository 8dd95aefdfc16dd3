"""Every shipped recipe validates, states only what differs from the defaults, passes the checks
run before services start, and the cluster files parse and agree with the recipes and keys."""

import copy
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from seamless.config import Recipe, load_recipe, validate_recipe
from seamless.errors import ConfigError
from seamless.run.parts import build_parts, check_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
CLUSTER = REPO / "cluster"
CLUSTER_FILES = sorted(p for p in CLUSTER.iterdir() if p.is_file())
# a dotted recipe key given as an override (cluster.address=auto) or named in prose (`store.url`)
_SECTIONS = "|".join(Recipe.model_fields)
_KEY = re.compile(r"\b((?:%s)(?:\.[a-z_]+)+)=|`((?:%s)(?:\.[a-z_]+)+)`" % (_SECTIONS, _SECTIONS))


def test_there_are_cpu_and_gpu_recipes():
    names = {p.name for p in RECIPES}
    assert {"grpo_tiny_cpu.yaml", "ppo_tiny_cpu.yaml", "grpo_calculator_tiny_cpu.yaml"} <= names
    assert any("qwen" in n for n in names)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.run.name != "run", "give every recipe its own run.name (it names the run folder)"
    if recipe.model.path:  # a real model is a GPU recipe: bf16, weights through /dev/shm, vLLM in bf16
        assert recipe.model.dtype == "bfloat16"
        # weights through /dev/shm, or sent by the ranks (servers on other nodes cannot read its shm)
        assert recipe.rollout.weight_dir == "shm" or recipe.rollout.weight_sync == "auto"
        from seamless.rollout.fleet import server_options

        options = server_options(recipe.model, recipe.rollout)
        assert (options.dtype, options.max_model_len) == ("bfloat16", recipe.model.max_model_len)
        assert options.gpu_memory_utilization == recipe.rollout.gpu_memory_utilization


def test_calculator_recipe_serves_tool_calls():
    recipe = load_recipe(REPO / "recipes" / "grpo_calculator_tiny_cpu.yaml")
    assert recipe.rollout.agent == "calculator" and recipe.rollout.max_turns >= 2
    args = recipe.rollout.extra_server_args
    assert "--enable-auto-tool-choice" in args and args[args.index("--tool-call-parser") + 1] == "hermes"


def test_tagged_layout_multiplexes_half_the_gpus():
    recipe = load_recipe(REPO / "recipes" / "grpo_qwen2.5-1.5b_gsm8k_tagged_8gpu.yaml")
    assert recipe.cluster.policy == "tagged" and recipe.cluster.num_gpus == 8
    assert sorted((g.count, tuple(g.tags)) for g in recipe.cluster.resources) == [
        (4, ("rollout",)), (4, ("train", "rollout"))]


@pytest.mark.parametrize("path", [p for p in CLUSTER_FILES if p.suffix == ".yaml"], ids=lambda p: p.name)
def test_cluster_yaml_parses(path):
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents and all(isinstance(d, dict) for d in documents)


def test_kuberay_manifest_is_a_rayjob_with_gpus():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert "cluster.address=auto" in job["spec"]["entrypoint"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == head["rayStartParams"]["num-gpus"]


def test_slurm_script_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(CLUSTER / "slurm.sbatch")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


TWO_KINDS = REPO / "recipes" / "grpo_qwen2.5-1.5b_gsm8k_two_kinds.yaml"


def _label_gpus(recipe: Recipe) -> dict[str, int]:
    """GPUs the recipe asks for, by the value of its seamless.io/gpu node label."""
    wanted: dict[str, int] = {}
    for group in recipe.cluster.resources:
        kind = group.node_labels["seamless.io/gpu"]
        wanted[kind] = wanted.get(kind, 0) + group.count
    return wanted


def test_two_kinds_recipe_places_training_and_rollout_by_gpu_kind():
    recipe = load_recipe(TWO_KINDS)
    assert recipe.cluster.bind == "node" and recipe.cluster.address == "auto"
    roles = {group.node_labels["seamless.io/gpu"]: tuple(group.tags) for group in recipe.cluster.resources}
    assert roles == {"H100": ("train", "rollout"), "L4": ("rollout",)}


def test_kuberay_two_kinds_offers_what_the_recipe_selects():
    job = yaml.safe_load((CLUSTER / "kuberay-two-kinds.yaml").read_text())
    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token"  # Ray's ports need the cluster's token
    assert TWO_KINDS.name in job["spec"]["entrypoint"] and "cluster.address=auto" in job["spec"]["entrypoint"]
    offered: dict[str, int] = {}
    for group in spec["workerGroupSpecs"]:
        key, _, kind = group["rayStartParams"]["labels"].partition("=")
        assert key == "seamless.io/gpu"
        gpus = int(group["rayStartParams"]["num-gpus"])
        assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
        offered[kind] = offered.get(kind, 0) + gpus * group["replicas"]
    assert offered == _label_gpus(load_recipe(TWO_KINDS))


def _ray_start_labels(text: str) -> list[tuple[str, int]]:
    """(label value, GPUs) of each `ray start` of a script or launcher config (one command: no `&`
    between its --num-gpus and its --labels)."""
    return [(kind, int(gpus)) for gpus, kind in
            re.findall(r'--num-gpus=(\d+)[^&]*?--labels="?seamless\.io/gpu=(\w+)', text)]


@pytest.mark.parametrize("name", ["slurm-two-kinds.sbatch", "ray-cluster-two-kinds.yaml"])
def test_slurm_and_launcher_two_kinds_label_their_nodes_and_use_tokens(name):
    text = (CLUSTER / name).read_text()
    assert "RAY_AUTH_MODE=token" in text and TWO_KINDS.name in text
    assert sorted(set(_ray_start_labels(text))) == [("H100", 8), ("L4", 8)]
    if name.endswith(".sbatch"):
        assert subprocess.run(["bash", "-n", str(CLUSTER / name)]).returncode == 0
    else:
        config = yaml.safe_load(text)
        assert len(config["provider"]["worker_ips"]) == config["max_workers"] == 2  # the two L4 nodes


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_files_name_recipes_that_exist(path):
    named = set(re.findall(r"recipes/[\w.\-]+\.yaml", path.read_text()))
    missing = [n for n in named if not (REPO / n).is_file()]
    assert not missing, f"{path.name} names recipes that do not exist: {missing}"


def _has_key(dotted: str) -> bool:
    model: type[BaseModel] = Recipe
    for part in dotted.split("."):
        field = model.model_fields.get(part) if model else None
        if field is None:
            return False
        model = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
    return True


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_files_use_real_recipe_keys(path):
    keys = {a or b for a, b in _KEY.findall(path.read_text())}
    unknown = sorted(k for k in keys if not _has_key(k))
    assert not unknown, f"{path.name} sets keys no recipe has: {unknown}"


def test_key_check_can_fail():
    assert _has_key("cluster.address") and _has_key("store.url")
    assert not _has_key("cluster.adress") and not _has_key("store.url.host")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_passes_the_checks_run_before_services_start(path):
    check_recipe(load_recipe(path), files=False)  # GPU recipes' model folders live where they run


@pytest.mark.parametrize("overrides,match", [
    (["rollout.agent=python my_agent.py", "trainer.sft_warmup.steps=10"], "supplies no warm-start data"),
    (["cluster.policy=disaggregated"], "disaggregated needs resources tagged only \\[rollout\\]"),
    (["trainer.deepspeed={train_batch_size: 8}"], "trainer.deepspeed.train_batch_size is set by seamless"),
    (["rollout.agent=verifiers:no-such-env"], "rollout.agent .verifiers:no-such-env.: (no module|verifiers is not|needs)"),
])
def test_a_recipe_that_cannot_run_fails_before_any_service_starts(overrides, match, tmp_path):
    recipe = load_recipe(REPO / "recipes" / "grpo_tiny_cpu.yaml", overrides)
    with pytest.raises(ConfigError, match=match):
        with build_parts(recipe, tmp_path, resume=False):
            pass
    assert list(tmp_path.iterdir()) == []  # not even the run folder's lock was taken


STATED_ON_PURPOSE = {"cluster.policy"}  # a policy recipe names its policy even when it is the default


def _leaves(node, path=()):
    """Dotted paths of every key a recipe sets (a list counts as one value)."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*path, key))
        else:
            yield (*path, key)


@pytest.mark.parametrize("path", RECIPES + sorted((REPO / "recipes" / "policies").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_recipes_state_only_what_differs_from_the_defaults(path):
    raw = yaml.safe_load(path.read_text())
    whole = validate_recipe(copy.deepcopy(raw)).model_dump()
    restated = []
    for leaf in _leaves(raw):
        trimmed = copy.deepcopy(raw)
        node = trimmed
        for key in leaf[:-1]:
            node = node[key]
        del node[leaf[-1]]
        try:
            same = validate_recipe(trimmed).model_dump() == whole
        except ConfigError:  # the key is needed (data.train_path of a jsonl source)
            same = False
        if same and ".".join(leaf) not in STATED_ON_PURPOSE:
            restated.append(".".join(leaf))
    assert not restated, f"{path.name} restates defaults: {restated}; remove them"
