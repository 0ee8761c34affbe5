import torch

from drgrpo.rollout import Rollouts, left_pad, pack_rollouts


def test_left_pad():
    ids, mask = left_pad([[1, 5, 6], [1]], pad_id=0)
    assert ids.tolist() == [[1, 5, 6], [0, 0, 1]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]


def test_pack_rollouts_and_helpers():
    out = pack_rollouts(
        prompt_ids=[[1, 5, 6], [1]],
        response_ids=[[7, 2], [8, 9, 9]],
        sampler_logprobs=[[-0.5, -0.25], [-1.0, -2.0, -3.0]],
        finish_reason=["stop", "length"],
        pad_id=0,
    )
    assert isinstance(out, Rollouts)
    assert out.response_ids.tolist() == [[7, 2, 0], [8, 9, 9]]
    assert out.response_mask.tolist() == [[True, True, False], [True, True, True]]
    assert out.sampler_logprobs.tolist() == [[-0.5, -0.25, 0.0], [-1.0, -2.0, -3.0]]
    assert out.response_start == 3 and out.response_lengths.tolist() == [2, 3]
    assert out.input_ids.tolist() == [[1, 5, 6, 7, 2, 0], [0, 0, 1, 8, 9, 9]]
    assert out.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    moved = out.to("cpu")
    assert torch.equal(moved.response_ids, out.response_ids)
    assert moved.finish_reason == out.finish_reason


def test_concat_rollouts_repads_parts_to_the_widest():
    from drgrpo.rollout import concat_rollouts

    a = pack_rollouts([[1, 5]], [[7, 2]], [[-0.5, -0.25]], ["stop"], 0)
    b = pack_rollouts([[1, 5, 6, 8]], [[9]], [[-1.0]], ["length"], 0)
    both = concat_rollouts([a, b], 0)
    assert both.prompt_ids.tolist() == [[0, 0, 1, 5], [1, 5, 6, 8]]
    assert both.prompt_mask.tolist() == [[False, False, True, True], [True] * 4]
    assert both.response_ids.tolist() == [[7, 2], [9, 0]]
    assert both.response_mask.tolist() == [[True, True], [True, False]]
    assert both.sampler_logprobs.tolist() == [[-0.5, -0.25], [-1.0, 0.0]]
    assert both.finish_reason == ["stop", "length"]
    assert concat_rollouts([a], 0) is a
