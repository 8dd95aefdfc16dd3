import pytest
import torch

from seamless.algorithms import aggregate
from seamless.errors import ConfigError
from seamless.trainer.batch import TrainBatch, deal_to_ranks, pack_by_tokens, slice_micro_batch, with_denominators
from seamless.trainer.engines import deepspeed_config
from seamless.types import TrainingSequence


def _seq(n_prompt: int, n_gen: int, reward: float = 0.0) -> TrainingSequence:
    n = n_prompt + n_gen
    return TrainingSequence("s", list(range(1, n + 1)), [0] * n_prompt + [1] * n_gen, [0.0] * n_prompt + [-1.0] * n_gen,
                            [-1] * n_prompt + [3] * n_gen, reward=reward)


def test_batch_pads_right_and_never_trains_the_first_token():
    batch = TrainBatch.from_sequences([_seq(2, 3), TrainingSequence("x", [7, 8], [1, 1], [-1.0, -2.0], [0, 0])], pad_id=0)
    assert batch.token_ids.tolist() == [[1, 2, 3, 4, 5], [7, 8, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch.loss_mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    assert batch.oldest_versions.tolist() == [3, 0]


def test_packing_respects_the_token_budget_counting_padding():
    lengths = [10, 3, 9, 4, 2, 8]
    groups = pack_by_tokens(lengths, budget=20)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(len(g) * max(lengths[i] for i in g) <= 20 for g in groups)
    with pytest.raises(ConfigError, match="micro_batch_tokens"):
        pack_by_tokens([30], budget=20)


def test_ranks_get_equal_numbers_of_micro_batches():
    groups = [[0], [1], [2]]
    ranks = deal_to_ranks(groups, [5, 4, 3], world=2)
    assert [len(r) for r in ranks] == [2, 2]
    assert sorted(i for r in ranks for g in r for i in g) == [0, 1, 2]
    assert sum(1 for r in ranks for g in r if not g) == 1  # one empty pass keeps the ranks in lockstep


def test_micro_batch_shares_sum_to_the_batch_loss():
    seqs = [_seq(2, n) for n in (1, 4, 2, 6, 3)]
    batch = TrainBatch.from_sequences(seqs, pad_id=0)
    loss = torch.randn(batch.token_ids.shape)
    rows = list(range(batch.size))
    lengths = batch.lengths.tolist()
    ranks = deal_to_ranks(pack_by_tokens(lengths, 16), lengths, world=2)
    mbs = with_denominators([[slice_micro_batch(batch, g, 0, advantages=loss) for g in r] for r in ranks],
                            batch.loss_mask, rows)
    total = sum(float(aggregate(mb.advantages, mb.loss_mask, "seq_mean_token_mean", num_seqs=mb.num_seqs))
                for r in mbs for mb in r)
    assert total == pytest.approx(float(aggregate(loss, batch.loss_mask, "seq_mean_token_mean")))


def test_deepspeed_config_owns_batch_keys():
    config = deepspeed_config({"zero_optimization": {"stage": 3}}, world_size=2, grad_clip=1.0, dtype="float32")
    assert config["train_batch_size"] == 2 and config["gradient_clipping"] == 1.0
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    with pytest.raises(ConfigError, match="trainer.deepspeed.train_batch_size is set by seamless"):
        deepspeed_config({"train_batch_size": 8}, world_size=2, grad_clip=1.0, dtype="float32")
