"""The two-phase commit over per-node keeper actors on a 4-node Ray cluster: a version counts only
when every piece is stored everywhere; crashes, corruption and cut-off commits leave one version
that all surviving keepers agree on."""

from __future__ import annotations

import pytest

from components.common.config import load_config
from components.resilience.commit import commit_version, newest_common_committed
from components.resilience.keeper import MIB
from components.resilience.piece import Piece, PieceId

RUN = "commit-test"
GROUPS = 2


def start(run: str = RUN) -> dict:
    from components.resilience.keeper_actor import start_keepers

    return start_keepers(run, load_config("tiny", ["resilience.keeper_memory_mb=64"]), expected_version_bytes=MIB)


@pytest.fixture(scope="module")
def run_keepers(ray_cluster):
    from components.resilience.keeper_actor import stop_keepers

    yield start()
    stop_keepers(RUN)


@pytest.fixture
def keepers(run_keepers):
    """The run's keepers (found again by name: a test may have killed one), emptied after the test."""
    import ray

    yield start()
    for keeper in start().values():
        status = ray.get(keeper.status.remote())
        for version in {status.committed, status.writing} - {None}:
            ray.get(keeper.drop.remote(version))


def layout(keepers: dict, version: int) -> dict[str, set[PieceId]]:
    """Each keeper holds one piece of each of ``GROUPS`` groups spanning all nodes (k + m = 4)."""
    nodes = sorted(keepers)
    return {node: {PieceId(version, g, (i + g) % len(nodes)) for g in range(GROUPS)} for i, node in enumerate(nodes)}


def content(pid: PieceId) -> Piece:
    return Piece.make(pid, f"{pid}".encode() * 1000)


def write(keepers: dict, expected: dict[str, set[PieceId]], skip: int = 0) -> None:
    """Store every expected piece, except the last ``skip`` of them (a writer that died mid-snapshot)."""
    import ray

    todo = [(node, pid) for node, ids in sorted(expected.items()) for pid in sorted(ids, key=str)]
    ray.get([keepers[node].put.remote(content(pid)) for node, pid in todo[: len(todo) - skip]])


def committed_everywhere(keepers: dict) -> list:
    import ray

    return ray.get([k.newest_committed.remote() for k in keepers.values()])


def test_version_is_committed_on_every_keeper_once_every_piece_is_stored(keepers):
    expected = layout(keepers, 1)
    write(keepers, expected)
    outcome = commit_version(keepers, 1, expected)
    assert outcome.committed and not outcome.missing and not outcome.unreachable
    assert committed_everywhere(keepers) == [1, 1, 1, 1]
    assert newest_common_committed(keepers) == 1


def test_crash_while_writing_the_next_version_leaves_the_previous_committed_and_readable(keepers):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    first = layout(keepers, 1)
    write(keepers, first)
    assert commit_version(keepers, 1, first).committed

    @ray.remote(num_cpus=0)
    class TrainingWorker:
        def snapshot_part(self, keepers: dict, expected: dict) -> None:
            write(keepers, expected, skip=3)

    node = sorted(keepers)[0]
    worker = TrainingWorker.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
    second = layout(keepers, 2)
    ray.get(worker.snapshot_part.remote(keepers, second))
    ray.kill(worker)

    outcome = commit_version(keepers, 2, second)
    assert not outcome.committed
    assert sum(len(ids) for ids in outcome.missing.values()) == 3
    assert newest_common_committed(keepers) == 1
    for node, ids in first.items():
        for pid in ids:
            assert ray.get(keepers[node].get.remote(pid)) == content(pid)
    assert all(ray.get(k.status.remote()).writing is None for k in keepers.values())


def test_recovery_drops_a_version_whose_coordinator_died_before_committing(keepers):
    import ray

    first, second = layout(keepers, 1), layout(keepers, 2)
    write(keepers, first)
    commit_version(keepers, 1, first)
    write(keepers, second)
    assert newest_common_committed(keepers) == 1
    assert [ray.get(k.pieces.remote(2)) for k in keepers.values()] == [[], [], [], []]


def test_corrupted_piece_is_reported_missing_and_the_commit_aborts(keepers):
    import ray

    first, second = layout(keepers, 1), layout(keepers, 2)
    write(keepers, first)
    commit_version(keepers, 1, first)
    write(keepers, second)
    node = sorted(keepers)[2]
    victim = sorted(second[node], key=str)[0]
    ray.get(keepers[node].inject_corruption.remote(victim))

    outcome = commit_version(keepers, 2, second)
    assert not outcome.committed and outcome.missing == {node: [victim]}
    assert committed_everywhere(keepers) == [1, 1, 1, 1]


def test_recovery_rolls_forward_keepers_cut_off_in_phase_two(keepers):
    import ray

    first, second = layout(keepers, 1), layout(keepers, 2)
    write(keepers, first)
    commit_version(keepers, 1, first)
    write(keepers, second)
    for node in sorted(keepers)[:2]:  # the coordinator died after telling two keepers to commit
        ray.get(keepers[node].commit.remote(2, second[node]))
    assert sorted(committed_everywhere(keepers)) == [1, 1, 2, 2]

    assert newest_common_committed(keepers) == 2
    assert committed_everywhere(keepers) == [2, 2, 2, 2]


def test_keepers_holding_unrelated_versions_agree_on_none(keepers):
    import ray

    (a, ka), (b, kb) = sorted(keepers.items())[:2]
    for keeper, version in ((ka, 5), (kb, 3)):
        ray.get(keeper.put.remote(content(PieceId(version, 0, 0))))
        ray.get(keeper.commit.remote(version, {PieceId(version, 0, 0)}))
    assert newest_common_committed(keepers) is None


def test_lost_keeper_aborts_the_commit_and_survivors_agree_on_the_previous_version(keepers):
    import ray

    first, second = layout(keepers, 1), layout(keepers, 2)
    write(keepers, first)
    commit_version(keepers, 1, first)
    lost = sorted(keepers)[3]
    ray.kill(keepers[lost], no_restart=True)
    write({n: k for n, k in keepers.items() if n != lost}, {n: ids for n, ids in second.items() if n != lost})

    outcome = commit_version(keepers, 2, second, timeout_s=30)
    assert not outcome.committed and outcome.unreachable == [lost]
    assert newest_common_committed(keepers, timeout_s=30) == 1

    replaced = start()  # a fresh, empty keeper on the lost keeper's node has no vote
    assert replaced[lost]._actor_id != keepers[lost]._actor_id
    assert newest_common_committed(replaced) == 1


def test_an_incomplete_commit_raises_through_the_actor_as_incomplete_version_error(keepers):
    import ray

    from components.resilience.keeper import IncompleteVersionError

    keeper = next(iter(keepers.values()))
    ray.get(keeper.put.remote(content(PieceId(1, 0, 0))))
    with pytest.raises(IncompleteVersionError, match="1 of 2 expected pieces"):
        ray.get(keeper.commit.remote(1, {PieceId(1, 0, 0), PieceId(1, 0, 1)}))


def test_a_prepared_phase_one_commits_in_one_round_fewer(keepers):
    import ray

    expected = layout(keepers, 40)
    write(keepers, expected, skip=1)
    (last_node, last_piece) = [(node, pid) for node, ids in sorted(expected.items()) for pid in sorted(ids, key=str)][
        -1
    ]
    others = {node: ids for node, ids in expected.items() if node != last_node}
    prepared = {node: keepers[node].prepare.remote(40, ids, 30.0) for node, ids in others.items()}
    # The last piece lands after the other keepers were asked. (Ray runs one caller's calls to one
    # actor in order even across concurrency groups, so this driver sends no put to a keeper it has a
    # prepare pending on; in a snapshot the pieces come from the ranks' keepers, not the coordinator.
    # Waiting for pieces is tested in test_keeper.py.)
    ray.get(keepers[last_node].put.remote(content(last_piece)))
    prepared[last_node] = keepers[last_node].prepare.remote(40, expected[last_node], 30.0)
    outcome = commit_version(keepers, 40, expected, prepared=prepared, prepared_timeout_s=60.0)
    assert outcome.committed
    assert ray.get([k.newest_committed.remote() for k in keepers.values()]) == [40] * len(keepers)


def test_a_piece_damaged_before_a_prepared_phase_one_is_caught_by_the_commit_and_counted_lost(keepers):
    import ray

    expected = layout(keepers, 42)
    write(keepers, expected)
    node = sorted(keepers)[2]
    victim = sorted(expected[node], key=str)[0]
    ray.get(keepers[node].inject_corruption.remote(victim))  # after its put: prepare does not hash it again
    prepared = {n: keepers[n].prepare.remote(42, ids, 30.0) for n, ids in expected.items()}
    outcome = commit_version(keepers, 42, expected, prepared=prepared, prepared_timeout_s=60.0)
    assert outcome.committed and outcome.rolled_forward == [node]
    assert victim not in ray.get(keepers[node].pieces.remote(42))  # lost, to be decoded from parity


def test_a_prepared_phase_one_that_times_out_on_a_missing_piece_aborts(keepers):
    expected = layout(keepers, 41)
    write(keepers, expected, skip=1)
    prepared = {node: keepers[node].prepare.remote(41, ids, 0.5) for node, ids in expected.items()}
    outcome = commit_version(keepers, 41, expected, prepared=prepared, prepared_timeout_s=60.0)
    assert not outcome.committed and sum(len(ids) for ids in outcome.missing.values()) == 1


def test_a_phase_one_vouched_for_by_the_writers_commits_without_asking_the_keepers_for_pieces(keepers):
    import ray

    expected = layout(keepers, 43)
    write(keepers, expected)
    outcome = commit_version(keepers, 43, expected, stored=True)
    assert outcome.committed and not outcome.missing and not outcome.rolled_forward
    assert committed_everywhere(keepers) == [43] * len(keepers)
    assert all(ray.get(k.status.remote()).writing is None for k in keepers.values())


def test_a_piece_damaged_after_the_writers_vouched_for_it_is_caught_by_phase_two_and_counted_lost(keepers):
    import ray

    expected = layout(keepers, 44)
    write(keepers, expected)
    node = sorted(keepers)[1]
    victim = sorted(expected[node], key=str)[0]
    ray.get(keepers[node].inject_corruption.remote(victim))
    outcome = commit_version(keepers, 44, expected, stored=True)
    assert outcome.committed and outcome.rolled_forward == [node]
    assert victim not in ray.get(keepers[node].pieces.remote(44))


def test_a_vouched_phase_one_still_aborts_when_an_involved_keeper_is_unknown(keepers):
    expected = layout(keepers, 45)
    write(keepers, expected)
    absent = sorted(keepers)[0]
    outcome = commit_version({n: k for n, k in keepers.items() if n != absent}, 45, expected, stored=True)
    assert not outcome.committed and outcome.unreachable == [absent]
