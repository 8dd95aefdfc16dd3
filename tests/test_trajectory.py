from seamless.traces.merge import merge_turns
from seamless.types import NO_VERSION, Turn


def turn(index, prompt, completion, version=0):
    return Turn(session_id="s", index=index, prompt_token_ids=prompt, completion_token_ids=completion,
                completion_logprobs=[-0.5] * len(completion), weight_versions=[version] * len(completion))


def test_turns_that_extend_each_other_become_one_sequence():
    turns = [turn(0, [1, 2], [3, 4]), turn(1, [1, 2, 3, 4, 9], [5], version=1), turn(2, [1, 2, 3, 4, 9, 5, 8, 8], [6, 7])]
    (seq,), branches = merge_turns(turns, reward=1.0, group_id="g")
    assert branches == 0
    assert seq.token_ids == [1, 2, 3, 4, 9, 5, 8, 8, 6, 7]
    assert seq.loss_mask == [0, 0, 1, 1, 0, 1, 0, 0, 1, 1]
    assert seq.weight_versions == [NO_VERSION, NO_VERSION, 0, 0, NO_VERSION, 1, NO_VERSION, NO_VERSION, 0, 0]
    assert seq.rollout_logprobs == [0.0, 0.0, -0.5, -0.5, 0.0, -0.5, 0.0, 0.0, -0.5, -0.5]
    assert seq.reward == 1.0 and seq.group_id == "g"
    assert seq.oldest_version == 0 and seq.num_generated == 5


def test_a_drifted_prompt_starts_a_new_branch_and_later_turns_extend_the_right_one():
    turns = [turn(0, [1, 2], [3]),
             turn(1, [1, 2, 30, 7], [4]),        # drift: the completion 3 came back as 30
             turn(2, [1, 2, 30, 7, 4, 7], [5])]  # extends the new branch, not the first
    sequences, branches = merge_turns(turns)
    assert branches == 1
    assert [s.token_ids for s in sequences] == [[1, 2, 3], [1, 2, 30, 7, 4, 7, 5]]
    assert sequences[1].loss_mask == [0, 0, 0, 0, 1, 0, 1]


def test_longest_matching_branch_wins_and_order_is_by_index():
    turns = [turn(2, [1, 2, 3, 9, 4, 9], [5]), turn(0, [1], [2]), turn(1, [1, 2, 3, 9], [4])]
    sequences, branches = merge_turns(turns)
    # [1] -> [1,2]; [1,2,3,9] extends it; then [1,2,3,9,4,9] extends again
    assert branches == 0 and sequences[0].token_ids == [1, 2, 3, 9, 4, 9, 5]


def test_no_turns_no_sequences():
    assert merge_turns([]) == ([], 0)
