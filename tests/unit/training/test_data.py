"""ResumableBatches: the batch of (step, rank) is a pure function of the seed, with exact replay."""

import numpy as np
import pytest

from components.common.errors import ConfigError, DataError
from components.common.shards import TokenWindows, read_quality
from components.training.data import NEW, REPLAY, ResumableBatches, window_scores

SEQ = 32


def _batches(dataset, seed=7, **kw) -> ResumableBatches:
    return ResumableBatches(dataset, seq_len=SEQ, batch_size=4, seed=seed, **kw)


def test_same_seed_gives_identical_batches(tiny_dataset):
    a, b = _batches(tiny_dataset), _batches(tiny_dataset)
    for step in (0, 1, 17, 250):
        assert np.array_equal(a.batch(step, 1, 2).numpy(), b.batch(step, 1, 2).numpy())


def test_different_seed_gives_different_order(tiny_dataset):
    assert not np.array_equal(
        _batches(tiny_dataset, seed=1).batch(0, 0, 2), _batches(tiny_dataset, seed=2).batch(0, 0, 2)
    )


def test_resuming_at_step_s_replays_the_uninterrupted_data(tiny_dataset):
    uninterrupted = _batches(tiny_dataset)
    seen = [uninterrupted.batch(step, rank, 2).numpy() for step in range(40) for rank in range(2)]
    restarted = _batches(tiny_dataset)  # a fresh process after a crash at step 25
    resumed = [restarted.batch(step, rank, 2).numpy() for step in range(25, 40) for rank in range(2)]
    assert all(np.array_equal(x, y) for x, y in zip(seen[50:], resumed, strict=True))


def test_rows_are_windows_of_the_train_split(tiny_dataset):
    windows = TokenWindows(tiny_dataset, "train", SEQ + 1)
    batches = _batches(tiny_dataset)
    rows = batches.batch(3, 0, 2).numpy()
    for row, (source, index) in zip(rows, batches.plan(3, 0, 2), strict=True):
        assert source == NEW and np.array_equal(row, windows[index])


def test_ranks_read_disjoint_windows_and_an_epoch_covers_every_window(tiny_dataset):
    batches = _batches(tiny_dataset)
    n = len(batches.sources[NEW])
    per_step = 4 * 2
    seen = [i for step in range(n // per_step) for rank in range(2) for _, i in batches.plan(step, rank, 2)]
    assert len(seen) == len(set(seen)) == (n // per_step) * per_step


def test_replay_fraction_is_respected_over_a_run(tiny_dataset, wikitext_dataset):
    batches = ResumableBatches(
        tiny_dataset, seq_len=SEQ, batch_size=8, seed=3, replay=wikitext_dataset, replay_fraction=0.1
    )
    plans = [batches.plan(step, rank, 2) for step in range(100) for rank in range(2)]
    replayed = sum(source == REPLAY for plan in plans for source, _ in plan)
    assert replayed / (100 * 2 * 8) == pytest.approx(0.1)
    assert all(len(plan) == 8 for plan in plans)
    assert {sum(s == REPLAY for s, _ in plan) for plan in plans} <= {0, 1}


def test_replayed_rows_come_from_the_old_corpus(tiny_dataset, wikitext_dataset):
    batches = ResumableBatches(
        tiny_dataset, seq_len=SEQ, batch_size=8, seed=3, replay=wikitext_dataset, replay_fraction=0.25
    )
    old = TokenWindows(wikitext_dataset, "train", SEQ + 1)
    rows, plan = batches.batch(5, 1, 2).numpy(), batches.plan(5, 1, 2)
    assert [s for s, _ in plan] == [NEW] * 6 + [REPLAY] * 2
    assert all(np.array_equal(rows[k], old[i]) for k, (s, i) in enumerate(plan) if s == REPLAY)


def test_replay_without_a_wikitext_dataset_is_a_config_error(tiny_dataset):
    with pytest.raises(ConfigError, match="replay"):
        ResumableBatches(tiny_dataset, seq_len=SEQ, batch_size=8, seed=3, replay_fraction=0.1)


def _mixture(tiny_dataset, wikitext_dataset) -> ResumableBatches:
    """Training on WikiText, replaying two old corpora at 10% and 15% of every batch."""
    replays = [(tiny_dataset, 0.10), (wikitext_dataset, 0.15)]
    return ResumableBatches(wikitext_dataset, seq_len=SEQ, batch_size=8, seed=5, replays=replays)


def test_every_old_corpus_gets_its_share_within_any_window_of_steps(tiny_dataset, wikitext_dataset):
    batches = _mixture(tiny_dataset, wikitext_dataset)
    for start in (0, 37):  # any 40-step window: each share within one row of exact
        counts = np.array([batches.counts(step) for step in range(start, start + 40)]).sum(axis=0)
        assert counts.sum() == 40 * 8
        assert abs(counts[1] - 0.10 * 320) <= 1 and abs(counts[2] - 0.15 * 320) <= 1
    plans = [batches.plan(step, rank, 2) for step in range(40) for rank in range(2)]
    assert {source for plan in plans for source, _ in plan} == {0, 1, 2}


def test_resuming_in_the_middle_of_a_mixture_reproduces_it_bitwise(tiny_dataset, wikitext_dataset):
    uninterrupted = _mixture(tiny_dataset, wikitext_dataset)
    seen = [uninterrupted.batch(step, rank, 2).numpy() for step in range(30) for rank in range(2)]
    restarted = _mixture(tiny_dataset, wikitext_dataset)  # a new process resuming at step 13
    resumed = [restarted.batch(step, rank, 2).numpy() for step in range(13, 30) for rank in range(2)]
    assert all(np.array_equal(x, y) for x, y in zip(seen[26:], resumed, strict=True))


def test_replay_fractions_beyond_one_are_refused(tiny_dataset, wikitext_dataset):
    with pytest.raises(ConfigError, match=r"sum to \[0, 1\), got \[0.6, 0.5\]"):
        ResumableBatches(
            wikitext_dataset, seq_len=SEQ, batch_size=8, seed=5, replays=[(tiny_dataset, 0.6), (tiny_dataset, 0.5)]
        )


def test_a_window_scores_the_token_weighted_mean_of_its_documents():
    # documents of 3, 5 and 4 tokens scoring 0, 1, 0.5; windows of 4 tokens: [0 0 0 1] [1 1 1 1] [.5 .5 .5 .5]
    assert window_scores([3, 5, 4], [0.0, 1.0, 0.5], 4, 3).tolist() == [0.25, 1.0, 0.5]


def _quality_mixture(scored, old, **run) -> ResumableBatches:
    return ResumableBatches(scored, seq_len=SEQ, batch_size=8, seed=5, replays=[(old, 0.25)], order="quality", **run)


def test_quality_order_runs_each_epoch_from_the_worst_window_to_the_best(scored_wikitext_dataset, tiny_dataset):
    batches = _quality_mixture(scored_wikitext_dataset, tiny_dataset)
    doc_tokens, scores = read_quality(scored_wikitext_dataset, "train")
    windows = window_scores(doc_tokens, scores, SEQ + 1, len(batches.sources[NEW]))
    new_rows = [i for step in range(140) for rank in range(2) for s, i in batches.plan(step, rank, 2) if s == NEW]
    epoch = len(windows)
    assert windows.std() > 0, "the scores must tell windows apart for the order to be tested"
    assert len(new_rows) > epoch, "the test must cross an epoch boundary"
    assert sorted(new_rows[:epoch]) == list(range(epoch))  # every window once per epoch
    assert np.all(np.diff(windows[new_rows[:epoch]]) >= 0)  # ascending: the best data last
    assert windows[new_rows[epoch]] == windows.min()  # the next epoch starts over from the worst


def test_a_run_shorter_than_an_epoch_reads_the_random_orders_windows_best_last(scored_wikitext_dataset, tiny_dataset):
    def rows(order: str) -> list[int]:
        batches = ResumableBatches(
            scored_wikitext_dataset, seq_len=SEQ, batch_size=8, seed=5, order=order, steps=20, world_size=2
        )
        return [i for step in range(20) for rank in range(2) for s, i in batches.plan(step, rank, 2) if s == NEW]

    quality, random_order = rows("quality"), rows("random")
    epoch = len(TokenWindows(scored_wikitext_dataset, "train", SEQ + 1))
    windows = window_scores(*read_quality(scored_wikitext_dataset, "train"), SEQ + 1, epoch)
    assert len(quality) < epoch // 2, "the run must read under half an epoch"
    assert sorted(quality) == sorted(random_order) and quality != random_order  # the same windows, reordered
    assert np.all(np.diff(windows[quality]) >= 0)


def test_resuming_mid_mixture_in_quality_order_reproduces_it_bitwise(scored_wikitext_dataset, tiny_dataset):
    uninterrupted = _quality_mixture(scored_wikitext_dataset, tiny_dataset, steps=30, world_size=2)
    seen = [uninterrupted.batch(step, rank, 2).numpy() for step in range(30) for rank in range(2)]
    # a new process resuming at step 13
    restarted = _quality_mixture(scored_wikitext_dataset, tiny_dataset, steps=30, world_size=2)
    resumed = [restarted.batch(step, rank, 2).numpy() for step in range(13, 30) for rank in range(2)]
    assert all(np.array_equal(x, y) for x, y in zip(seen[26:], resumed, strict=True))
    random_order = ResumableBatches(
        scored_wikitext_dataset, seq_len=SEQ, batch_size=8, seed=5, replays=[(tiny_dataset, 0.25)]
    )
    assert any(not np.array_equal(x, random_order.batch(s // 2, s % 2, 2).numpy()) for s, x in enumerate(seen))


def test_quality_order_on_a_dataset_without_scores_names_the_key_and_the_dataset(wikitext_dataset):
    with pytest.raises(
        DataError, match=rf"continual.order=quality: {wikitext_dataset} has no per-document quality.*re-curate"
    ):
        ResumableBatches(
            wikitext_dataset, seq_len=SEQ, batch_size=8, seed=5, order="quality", order_key="continual.order"
        )


def test_an_unknown_order_is_refused_by_name(wikitext_dataset):
    with pytest.raises(ConfigError, match="pretrain.order='best'"):
        ResumableBatches(wikitext_dataset, seq_len=SEQ, batch_size=8, seed=5, order="best", order_key="pretrain.order")
