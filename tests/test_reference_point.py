"""KTO's reference point (kto_lab.reference_point): its pieces with a stand-in accelerator; the estimate itself is
tested in test_objectives.py and through the step (test_step.py), two processes in test_families/test_sd_distributed."""

import torch

from kto_lab.reference_point import cross_process_mean, needs_other_captions, next_process_cond
from kto_lab.step import ObjectiveConfig


class TwoProcesses:
    """What the reference point asks of an accelerator, as process ``index`` of 2 whose rows are ``rows``
    (gather: every process's row of the tensor given, cut to its width)."""

    num_processes = 2

    def __init__(self, index, rows):
        self.process_index, self.rows, self.reduced = index, rows, []

    def gather(self, t):
        return torch.cat([r[:, :t.shape[1]] for r in self.rows])

    def reduce(self, t, how):
        self.reduced.append(how)
        return t * 10


def test_cross_process_mean_is_accelerates_mean_and_nothing_on_one_process():
    class One:
        num_processes = 1

    assert cross_process_mean(One()) is None
    acc = TwoProcesses(0, [])
    assert cross_process_mean(acc)(torch.tensor(0.5)).item() == 5.0 and acc.reduced == ["mean"]


def test_a_one_sample_batch_takes_the_next_processes_captions():
    rows = [torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 2.0]])]
    for index, expected in ((0, 2.0), (1, 1.0)):
        cond = {"text": rows[index], "pooled": rows[index][:, :1]}
        got = next_process_cond(cond, TwoProcesses(index, rows))
        assert got["text"].tolist() == [[expected, expected]] and got["pooled"].tolist() == [[expected]]


def test_only_kto_with_unrelated_pairs_on_one_sample_needs_other_captions():
    one, two = torch.zeros(1, 3), torch.zeros(2, 3)
    assert needs_other_captions(ObjectiveConfig(), one)
    assert not needs_other_captions(ObjectiveConfig(), two)
    assert not needs_other_captions(ObjectiveConfig(reference_point="batch"), one)
    assert not needs_other_captions(ObjectiveConfig(objective="dpo"), one)
    assert not needs_other_captions(ObjectiveConfig(), None)  # the toy: no captions to pair
