"""The ranks' agreement after each hand-off (``sink.agree_stored``), on a real gloo group of two processes:
it is what lets rank 0 commit a snapshot without asking every keeper, so it must never say "stored" for a
version one rank did not store, nor pair two different versions."""

from __future__ import annotations

import multiprocessing
import os
import traceback

import pytest


def _rank(rank: int, store_path: str, cases: list[tuple[int, bool]], out) -> None:
    import torch.distributed as dist

    from components.common.errors import RecoveryError
    from components.resilience.sink import agree_stored

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # the ranks talk over loopback only
    try:
        dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
        group = dist.new_group(backend="gloo")
        answers = []
        for version, ok in cases:
            try:
                answers.append(agree_stored(version, ok, group))
            except RecoveryError as e:
                answers.append(f"RecoveryError: {e}")
        dist.destroy_process_group()
        out.put((rank, answers))
    except BaseException:
        out.put((rank, traceback.format_exc()))


def agree_on_two_ranks(tmp_path, cases_by_rank: dict[int, list[tuple[int, bool]]]) -> dict[int, list]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    store = str(tmp_path / "gloo-store")
    procs = [ctx.Process(target=_rank, args=(r, store, cases_by_rank[r], out)) for r in (0, 1)]
    for p in procs:
        p.start()
    answers = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank, got in answers.items():
        assert isinstance(got, list), f"rank {rank} failed:\n{got}"
    return answers


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    cases = {
        0: [(10, True), (11, True), (12, True), (14, True)],
        1: [(10, True), (11, False), (13, True), (14, True)],  # 11: its hand-off failed; 13: out of step
    }
    return agree_on_two_ranks(tmp_path_factory.mktemp("agree"), cases)


def test_every_rank_hears_stored_when_every_hand_off_returned(answers):
    assert answers[0][0] is True and answers[1][0] is True


def test_one_failed_hand_off_makes_every_rank_hear_not_stored(answers):
    assert answers[0][1] is False and answers[1][1] is False


def test_ranks_handing_off_different_versions_both_raise_naming_the_versions(answers):
    for rank in (0, 1):
        assert answers[rank][2].startswith(
            "RecoveryError: ranks disagree on the snapshot version they hand off: 12 to 13"
        )


def test_the_agreement_goes_on_after_a_disagreement(answers):
    assert answers[0][3] is True and answers[1][3] is True
