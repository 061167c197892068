"""The trajectory batch contract: validation, tokenisation with the loss mask, padding layout."""
from __future__ import annotations

import pickle

import pytest
import torch

from router_r1.rl.batch import BatchError, TrajectoryBatch


def _batch() -> TrajectoryBatch:
    return TrajectoryBatch(prompt_ids=[[5, 6, 7], [8]], response_ids=[[10, 11, 12, 13], [14, 15]],
                           loss_mask=[[1, 0, 0, 1], [1, 1]], rewards=[1.0, -1.0], group_ids=[0, 0],
                           policy_version=[3, 3])


def test_to_tensors_layout():
    tb = _batch().to_tensors(pad_id=0)
    assert tb.input_ids.tolist() == [[5, 6, 7, 10, 11, 12, 13], [8, 14, 15, 0, 0, 0, 0]]
    assert tb.attention_mask.tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
    assert tb.response_ids.tolist() == [[10, 11, 12, 13], [14, 15, 0, 0]]
    assert tb.loss_mask.tolist() == [[1, 0, 0, 1], [1, 1, 0, 0]]
    assert tb.response_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # response_pos points at each response token inside input_ids
    picked = tb.input_ids.gather(1, tb.response_pos)
    assert torch.equal(picked * tb.response_mask, tb.response_ids * tb.response_mask)
    assert tb.rewards.tolist() == [1.0, -1.0] and tb.policy_version.tolist() == [3, 3]


def test_select_trims_padding_and_keeps_rows():
    tb = _batch().to_tensors(pad_id=0)
    one = tb.select([1])
    assert one.input_ids.tolist() == [[8, 14, 15]] and one.loss_mask.tolist() == [[1, 1]]
    rows = _batch().select([1, 0])
    assert len(rows) == 2 and rows.response_ids[0] == [14, 15]
    assert pickle.loads(pickle.dumps(rows)) == rows


@pytest.mark.parametrize("kw, msg", [
    ({"rewards": [1.0]}, "rewards has 1 rows"),
    ({"loss_mask": [[1, 0, 0], [1, 1]]}, "row 0: 4 response ids but 3 loss-mask"),
    ({"loss_mask": [[1, 0, 2, 1], [1, 1]]}, "only 0 and 1"),
    ({"prompt_ids": [[], [8]]}, "row 0: empty prompt"),
])
def test_bad_batches_are_refused(kw, msg):
    fields = vars(_batch()) | kw
    with pytest.raises(BatchError, match=msg):
        TrajectoryBatch(**fields)


def test_from_traces_masks_information_exactly():
    from router_r1.engines.model import train_tokenizer
    from tiny_learner import CORPUS, fixed_batch

    tok = train_tokenizer(CORPUS, 320)
    b = fixed_batch(tok)
    info_ids = tok.encode("<information>The capital of Veloria is Marlow.</information>", add_special_tokens=False)
    for ids, mask in zip(b.response_ids, b.loss_mask):
        masked = [t for t, m in zip(ids, mask) if m == 0]
        assert masked == info_ids
        assert mask[0] == 1 and mask[-1] == 1
    assert b.policy_version == [0, 0, 0, 0]
