"""Keeper rules added for training under faults: back-pressure, generation fencing, waiting for a
version's pieces, and the progress every piece holder remembers (plain Python, no Ray)."""

from __future__ import annotations

import threading
import time

import pytest

from components.common.errors import RecoveryError
from components.resilience.keeper import BusyError, MemoryKeeper, StaleWriterError
from tests.unit.resilience.test_keeper import piece, write_version


def _keeper() -> MemoryKeeper:
    return MemoryKeeper(budget_mb=1, expected_version_bytes=0)


def test_a_new_generation_forgets_a_version_committed_without_a_piece_held():
    """A keeper no group placed a piece on (a standby node's) commits every version with nothing held;
    after a restore from elsewhere at an older step, the group's next versions are written there too."""
    keeper = _keeper()
    keeper.commit(22, set())
    keeper.start_generation(1, keep=None)
    assert keeper.status().committed is None
    keeper.put(piece(21), generation=1)


def test_put_of_the_next_version_waits_until_the_one_being_written_is_committed():
    keeper = _keeper()
    expected = write_version(keeper, 1, count=1)
    threading.Timer(0.2, keeper.commit, args=(1, expected)).start()
    started = time.monotonic()
    keeper.put(piece(2), wait_s=10.0)
    assert time.monotonic() - started >= 0.15
    assert keeper.status().committed == 1 and keeper.status().writing == 2


def test_put_that_waits_in_vain_is_refused_after_its_deadline():
    keeper = _keeper()
    write_version(keeper, 1, count=1)
    with pytest.raises(RecoveryError, match="version 1 is still being written"):
        keeper.put(piece(2), wait_s=0.1)


def test_pieces_from_a_worker_group_older_than_the_keepers_generation_are_refused():
    keeper = _keeper()
    keeper.start_generation(3, keep=None)
    with pytest.raises(StaleWriterError, match="generation 2"):
        keeper.put(piece(1), generation=2)
    keeper.put(piece(1), generation=3)


def test_a_new_generation_keeps_only_the_version_restored_from_memory():
    keeper = _keeper()
    keeper.commit(4, write_version(keeper, 4))
    write_version(keeper, 5, count=1)  # half-written by the failed group
    keeper.start_generation(1, keep=4)
    status = keeper.status()
    assert (status.committed, status.writing, status.generation) == (4, None, 1)
    assert keeper.pieces(5) == []


def test_a_new_generation_restored_from_elsewhere_drops_every_version():
    keeper = _keeper()
    keeper.commit(4, write_version(keeper, 4))
    keeper.start_generation(1, keep=None)
    assert keeper.status().committed is None and keeper.memory_used() == 0
    keeper.put(piece(2), generation=1)  # the group restored at an older step may write below 4 again


def test_a_put_waiting_for_a_dead_groups_version_is_fenced_off_by_the_new_generation():
    keeper = _keeper()
    write_version(keeper, 7, count=1)
    errors: list[BaseException] = []

    def stale_put() -> None:
        try:
            keeper.put(piece(8), generation=0, wait_s=10.0)
        except BaseException as e:
            errors.append(e)

    waiter = threading.Thread(target=stale_put)
    waiter.start()
    time.sleep(0.1)
    keeper.start_generation(1, keep=None)
    waiter.join(timeout=5)
    assert len(errors) == 1 and isinstance(errors[0], StaleWriterError)
    assert keeper.status().writing is None


def test_wait_for_pieces_returns_once_the_last_expected_piece_arrives():
    keeper = _keeper()
    expected = {piece(1, index=i).id for i in range(2)}
    keeper.put(piece(1, index=0))
    threading.Timer(0.1, keeper.put, args=(piece(1, index=1),)).start()
    assert keeper.wait_for_pieces(1, expected, timeout_s=10.0)


def test_wait_for_pieces_gives_up_after_its_timeout():
    keeper = _keeper()
    keeper.put(piece(1, index=0))
    assert not keeper.wait_for_pieces(1, {piece(1, index=0).id, piece(1, index=1).id}, timeout_s=0.05)


def test_every_piece_holder_remembers_the_newest_step_it_received():
    keeper = _keeper()
    keeper.commit(3, write_version(keeper, 3, count=1))
    keeper.put(piece(4))
    assert keeper.status().progress_step == 4 and keeper.status().progress_time <= time.time()


def test_a_put_of_a_newer_version_answers_busy_at_once_while_one_is_being_written():
    keeper = _keeper()
    write_version(keeper, 1, count=1)
    with pytest.raises(BusyError, match="version 1 is still being written"):
        keeper.put(piece(2))
    assert keeper.pieces(2) == [] and keeper.status().writing == 1


def test_busy_with_names_the_version_being_written_until_it_is_committed():
    keeper = _keeper()
    assert keeper.busy_with(1) is None
    expected = write_version(keeper, 1, count=1)
    assert keeper.busy_with(1) is None, "more pieces of the version being written are welcome"
    assert keeper.busy_with(2) == 1
    keeper.commit(1, expected)
    assert keeper.busy_with(2) is None


def test_busy_with_does_not_hold_back_a_fenced_writer_whose_put_then_says_why():
    keeper = _keeper()
    write_version(keeper, 1, count=1)
    keeper.start_generation(2, keep=None)
    keeper.put(piece(1), generation=2)
    assert keeper.busy_with(5, generation=1) is None
    with pytest.raises(StaleWriterError):
        keeper.put(piece(5), generation=1)
