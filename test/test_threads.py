"""The thread count: as asked, or chosen from the cores free (cores and load injected, so deterministic)."""

import pytest
import torch

from clip2scene_core.errors import UsageError
from clip2scene_core.threads import apply_threads, choose_threads, free_cores


@pytest.mark.parametrize("cores, load, expected", [(8, 0.0, 8), (8, 2.4, 6), (8, 2.6, 5), (2, 1.9, 1),
                                                   (2, 7.0, 1), (1, 0.0, 1), (16, 15.5, 1)])
def test_free_cores_are_the_cores_less_the_rounded_load(cores, load, expected):
    assert free_cores(cores, load) == expected
    assert choose_threads(0, cores, load) == expected


def test_a_positive_request_is_taken_as_given():
    assert choose_threads(3, cores=2, load=5.0) == 3


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_a_bad_request_is_refused(bad):
    with pytest.raises(UsageError, match="threads"):
        choose_threads(bad)


def test_apply_sets_torch_and_says_so():
    before = torch.get_num_threads()
    try:
        threads, message = apply_threads(1)
        assert threads == 1 and torch.get_num_threads() == 1 and "1 thread" in message
        threads, message = apply_threads(0)
        assert threads >= 1 and torch.get_num_threads() == threads and "free cores" in message
    finally:
        torch.set_num_threads(before)


def test_cli_threads_option_is_applied_and_said(capsys):
    from clip2scene_core.cli import main

    before = torch.get_num_threads()
    try:
        assert main(["evaluate", "--data", "synthetic:frames=1", "--threads", "1", "--device", "nonsense"]) == 2
        assert torch.get_num_threads() == 1
        assert "evaluate: torch runs on 1 thread(s) (as asked)" in capsys.readouterr().err
        assert main(["evaluate", "--data", "synthetic:frames=1", "--threads", "-2"]) == 2
        assert "threads must be" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
