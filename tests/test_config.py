import re
from pathlib import Path

import pytest

from seamless.config import GrpoConfig, PpoConfig, Recipe, apply_override, check_gpu_sharing, load_recipe
from seamless.errors import ConfigError

REPO = Path(__file__).parents[1]
RECIPES = sorted(REPO.joinpath("recipes").glob("*.yaml"))


def test_defaults_validate():
    recipe = load_recipe(None)
    assert recipe.rollout.batch_size == 8
    assert recipe.cluster.num_gpus == 1


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    assert isinstance(load_recipe(path), Recipe)


def test_overrides_parse_values_as_yaml():
    recipe = load_recipe(None, ["rollout.batch_size=16", "trainer.lr=3e-6", "data.operations=[+, '*']",
                                "store.url=null", "algorithm.dynamic_sampling=true"])
    assert recipe.rollout.batch_size == 16
    assert recipe.trainer.lr == pytest.approx(3e-6)
    assert recipe.data.operations == ["+", "*"]
    assert recipe.algorithm.dynamic_sampling is True


def test_invalid_value_names_the_dotted_key_and_the_fix():
    with pytest.raises(ConfigError) as err:
        load_recipe("recipes/grpo_tiny_cpu.yaml", ["rollout.batch_size=-1"])
    message = str(err.value)
    assert "rollout.batch_size: Input should be greater than or equal to 1 (got -1)" in message
    assert "rollout.batch_size=VALUE" in message


def test_unknown_key_suggests_the_closest_one():
    with pytest.raises(ConfigError) as err:
        load_recipe(None, ["rollout.batchsize=4"])
    assert "rollout.batchsize: unknown key; did you mean rollout.batch_size?" in str(err.value)


def test_unknown_section_and_wrong_type_are_both_reported():
    with pytest.raises(ConfigError) as err:
        load_recipe(None, ["rollouts.batch_size=4", "trainer.total_steps=many"])
    message = str(err.value)
    assert "2 problem(s)" in message
    assert "rollouts: unknown key; did you mean rollout?" in message
    assert "trainer.total_steps: Input should be a valid integer" in message


def test_errors_inside_lists_of_sections_name_the_index():
    with pytest.raises(ConfigError) as err:
        load_recipe(None, ["cluster.resources=[{count: 2, tags: [train, infer]}]"])
    assert "cluster.resources.0.tags.1:" in str(err.value)


def test_a_key_of_another_algorithm_is_an_error_that_names_it():
    with pytest.raises(ConfigError) as err:
        load_recipe("recipes/grpo_tiny_cpu.yaml", ["algorithm.lam=0.9", "algorithm.value_clip=0.1"])
    message = str(err.value)
    assert "2 problem(s)" in message
    assert "algorithm.lam: unknown key; it belongs to ppo, not grpo; remove it or set algorithm.name: ppo" in message
    assert "algorithm.value_clip: unknown key; it belongs to ppo" in message
    with pytest.raises(ConfigError, match="algorithm.norm_adv_by_std: unknown key; it belongs to grpo, not ppo"):
        load_recipe("recipes/ppo_tiny_cpu.yaml", ["algorithm.norm_adv_by_std=false"])
    with pytest.raises(ConfigError, match="algorithm.critic_lr: unknown key; it belongs to ppo, not grpo"):
        load_recipe("recipes/grpo_tiny_cpu.yaml", ["algorithm.critic_lr=1e-3"])
    with pytest.raises(ConfigError, match=r"trainer.critic_lr: this key moved; set algorithm.critic_lr \(PPO only"):
        load_recipe("recipes/ppo_tiny_cpu.yaml", ["trainer.critic_lr=1e-3"])
    with pytest.raises(ConfigError, match="algorithm.name: 'dpo' is not one of 'grpo', 'ppo'"):
        load_recipe(None, ["algorithm.name=dpo"])


def test_the_algorithm_section_picks_its_class_and_defaults_to_grpo():
    assert isinstance(load_recipe(None, ["algorithm.kl_coef=0.1"]).algorithm, GrpoConfig)
    ppo = load_recipe(None, ["algorithm.name=ppo", "algorithm.lam=0.9"]).algorithm
    assert isinstance(ppo, PpoConfig) and ppo.lam == 0.9
    assert "lam" not in load_recipe(None).to_yaml()


def test_cluster_without_a_rollout_resource_is_rejected():
    with pytest.raises(ConfigError, match="no resource tagged 'rollout'"):
        load_recipe(None, ["cluster.resources=[{count: 2, tags: [train]}]"])


def test_malformed_overrides_and_files_say_what_to_write(tmp_path):
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        load_recipe(None, ["rollout.batch_size"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override({"rollout": {"batch_size": 3}}, "rollout.batch_size.x=1")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not a Redis URL"):
        load_recipe(None, ["store.url=http://127.0.0.1:6379"])


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe("recipes/grpo_tiny_cpu.yaml", ["trainer.total_steps=3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(recipe.to_yaml())
    assert load_recipe(path) == recipe


def test_run_seed_seeds_the_data_and_the_tiny_model_unless_they_are_set():
    recipe = Path(__file__).parents[1] / "recipes/grpo_tiny_cpu.yaml"
    seeded = load_recipe(recipe, ["run.seed=3"])
    assert (seeded.run.seed, seeded.data.seed, seeded.model.tiny.seed) == (3, 3, 3)
    pinned = load_recipe(recipe, ["run.seed=3", "data.seed=7", "model.tiny.seed=8"])
    assert (pinned.data.seed, pinned.model.tiny.seed) == (7, 8)
    defaults = load_recipe(None, ["run.seed=4"])
    assert (defaults.data.seed, defaults.model.tiny.seed) == (4, 4)


def _recipe_with(**sections):
    from seamless.config import validate_recipe

    return validate_recipe(sections)


def test_shared_gpu_memory_shares_that_cannot_fit_are_rejected_naming_both_keys():
    dual = {"resources": [{"count": 2, "tags": ["train", "rollout"]}]}
    with pytest.raises(ConfigError, match=r"cluster.resources.0 is tagged \[train, rollout\].*"
                                          r"rollout.gpu_memory_utilization \(0.7\) \+ trainer.gpu_memory_share \(0.4\)"):
        _recipe_with(cluster=dual, rollout={"gpu_memory_utilization": 0.7})
    # the same shares are fine where no GPU is shared
    split = {"policy": "disaggregated", "resources": [{"count": 1, "tags": ["train"]}, {"count": 1, "tags": ["rollout"]}]}
    assert _recipe_with(cluster=split, rollout={"gpu_memory_utilization": 0.7}).rollout.gpu_memory_utilization == 0.7


def test_gpu_layout_mistakes_fail_at_load_with_the_fix():
    dual = {"resources": [{"count": 1, "tags": ["train", "rollout"]}]}
    with pytest.raises(ConfigError, match="tensor_parallel_size is 2 but cluster.resources.0"):
        _recipe_with(cluster=dual, rollout={"tensor_parallel_size": 2})
    # NCCL and CUDA IPC are chosen per server by `auto`; the old `nccl` (sent from the driver) is gone
    with pytest.raises(ConfigError, match="rollout.weight_sync.*'auto' or 'disk'"):
        _recipe_with(cluster=dual, rollout={"weight_sync": "nccl"})
    stage0 = _recipe_with(cluster=dual, trainer={"deepspeed": {"zero_optimization": {"stage": 0}}})  # fine on CPU
    with pytest.raises(ConfigError, match="ZeRO stage 1 up; set trainer.deepspeed.zero_optimization.stage"):
        check_gpu_sharing(stage0)  # what `seamless run` checks where CUDA is visible
    check_gpu_sharing(_recipe_with(cluster=dual))  # the default, stage 2
    # vLLM's stream chunks would carry tokens of the old weights past an update (the proxy stamps per chunk)
    with pytest.raises(ConfigError, match="stream_interval is 16 with rollout.partial_rollout keep under "
                                          "cluster.policy tagged.*set proxy.stream_interval: 1"):
        _recipe_with(proxy={"stream_interval": 16}, cluster={"policy": "tagged"})
    assert _recipe_with(proxy={"stream_interval": 16}, cluster={"policy": "tagged"},
                        rollout={"partial_rollout": "abort"}).proxy.stream_interval == 16
    # a reasoning parser answers differently streamed and not: every answer's message from vLLM's derender
    with pytest.raises(ConfigError, match="reasoning parser.*set proxy.derender: always"):
        _recipe_with(rollout={"extra_server_args": ["--reasoning-parser", "deepseek_r1"]})
    assert _recipe_with(rollout={"extra_server_args": ["--reasoning-parser=qwen3"]},
                        proxy={"derender": "always"}).proxy.derender == "always"
    # the servers' cap on sequences at once is said once, where the planner reads it
    with pytest.raises(ConfigError, match="rollout.max_num_seqs and --max-num-seqs.*drop the flag"):
        _recipe_with(rollout={"max_num_seqs": 4, "extra_server_args": ["--max-num-seqs=8"]})
    with pytest.raises(ConfigError, match="max_num_seqs"):
        _recipe_with(rollout={"max_num_seqs": 0})
    with pytest.raises(ConfigError, match="float16 is not supported by the trainer"):
        _recipe_with(model={"dtype": "float16"})
    with pytest.raises(ConfigError, match=r"rollout.max_tokens \(600\) leaves no room.*max_model_len \(512\)"):
        _recipe_with(model={"max_model_len": 512}, rollout={"max_tokens": 600})
    with pytest.raises(ConfigError, match=r"micro_batch_tokens \(1024\) is below model.max_model_len \(2048\)"):
        _recipe_with(model={"max_model_len": 2048}, trainer={"micro_batch_tokens": 1024})


def test_tensor_parallel_rollout_servers_count_their_gpus():
    recipe = _recipe_with(cluster={"policy": "disaggregated", "resources": [
        {"count": 2, "tags": ["train"]}, {"count": 3, "tags": ["rollout"]}]}, rollout={"tensor_parallel_size": 2})
    assert recipe.cluster.num_gpus == 5 and recipe.num_devices == 2 + 3 * 2


@pytest.mark.parametrize("overrides,message", [
    (["rollout.agent=math2"], "'math2' is not a command on PATH; did you mean math?"),
    (["rollout.reward=no_such_module:score"], "rollout.reward: cannot import module 'no_such_module'"),
    (["rollout.agent=agents.math_agent:nope"], "has no 'nope'"),
    (["model.path=/nonexistent/model"], "model.path /nonexistent/model has no config.json"),
    (["model.max_model_len=4096"], "above tiny.max_position_embeddings (2048)"),
])
def test_recipe_mistakes_that_need_code_fail_before_any_service(overrides, message):
    from seamless.run.parts import check_recipe

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_recipe(load_recipe(REPO / "recipes/grpo_tiny_cpu.yaml", ["trainer.micro_batch_tokens=4096", *overrides]))


def test_a_model_path_whose_context_is_shorter_than_max_model_len_fails_at_load(tmp_path):
    from seamless.run.parts import check_recipe

    (tmp_path / "config.json").write_text('{"max_position_embeddings": 256}')
    with pytest.raises(ConfigError, match=r"max_model_len \(512\) is above the model's max_position_embeddings \(256\)"):
        check_recipe(load_recipe(REPO / "recipes/grpo_tiny_cpu.yaml", [f"model.path={tmp_path}"]))


def test_shell_agents_that_exist_pass_the_check():
    from seamless.run.parts import check_recipe

    for agent in ("python3 -c 'print(1)'", "FOO=1 sh -c 'echo 1'", "./agents/run.sh", "echo 12"):
        check_recipe(load_recipe(REPO / "recipes/grpo_tiny_cpu.yaml", [f"rollout.agent={agent}",
                                                                  "trainer.sft_warmup.steps=0"]))


def test_seamless_run_with_a_config_mistake_makes_no_run_folder_and_no_resume_hint(tmp_path, capsys):
    from seamless.cli import main

    code = main(["run", str(REPO / "recipes/grpo_tiny_cpu.yaml"), "rollout.agent=math2", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean math" in err and "resume with" not in err, err
    assert not (tmp_path / "r").exists()


def test_elastic_is_for_rollout_only_groups():
    ok = load_recipe(REPO / "recipes" / "grpo_tiny_cpu.yaml", [
        "cluster.policy=disaggregated",
        "cluster.resources=[{count: 1, tags: [train]}, {count: 1, tags: [rollout]}, "
        "{count: 2, tags: [rollout], elastic: true}]"])
    assert [g.elastic for g in ok.cluster.resources] == [False, False, True]
    with pytest.raises(ConfigError, match="elastic: true is for \\[rollout\\] groups"):
        load_recipe(REPO / "recipes" / "grpo_tiny_cpu.yaml", [
            "cluster.policy=disaggregated",
            "cluster.resources=[{count: 1, tags: [train]}, {count: 1, tags: [train, rollout], elastic: true}]"])
