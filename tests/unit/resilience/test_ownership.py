"""Parameter ownership under DDP: every parameter has exactly one owning rank, balanced by bytes."""

import random

import pytest

from components.resilience.ownership import owned_names, owners, parameter_sizes, partition
from tests.unit.resilience.tiny_training import make_state


@pytest.fixture(scope="module")
def tiny_sizes() -> list[tuple[str, int]]:
    return parameter_sizes(make_state().module)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
def test_parts_are_disjoint_and_cover_every_parameter(tiny_sizes, world_size):
    parts = [owned_names(tiny_sizes, rank, world_size) for rank in range(world_size)]
    flat = [name for part in parts for name in part]
    assert len(flat) == len(set(flat))
    assert set(flat) == {name for name, _ in tiny_sizes}


def test_partition_does_not_depend_on_input_order_or_call(tiny_sizes):
    shuffled = list(tiny_sizes)
    random.Random(0).shuffle(shuffled)
    by_owner = owners(tiny_sizes, 3)
    assert owners(shuffled, 3) == by_owner
    assert owners(tiny_sizes, 3) == by_owner


def test_largest_part_exceeds_the_mean_by_at_most_one_parameter(tiny_sizes):
    size = dict(tiny_sizes)
    loads = [sum(size[n] for n in part) for part in partition(tiny_sizes, 3)]
    assert max(loads) - sum(loads) / 3 <= max(size.values())
    assert min(loads) > 0


def test_owned_names_keep_model_order(tiny_sizes):
    model_order = [name for name, _ in tiny_sizes]
    for rank in range(2):
        part = owned_names(tiny_sizes, rank, 2)
        assert part == sorted(part, key=model_order.index)


def test_tied_embedding_is_owned_once(tiny_sizes):
    names = [name for name, _ in tiny_sizes]
    assert "model.embed_tokens.weight" in names
    assert "lm_head.weight" not in names  # tied to the embedding in the tiny preset


def test_greedy_assigns_largest_first_to_the_least_loaded_rank():
    sizes = [("a", 10), ("b", 30), ("c", 20), ("d", 5)]
    # b → 0; c → 1; a → 1 (20 < 30); d → 0 (30 = 30, lower rank wins); each part in model order
    assert partition(sizes, 2) == [["b", "d"], ["a", "c"]]


def test_rank_outside_the_world_is_refused(tiny_sizes):
    with pytest.raises(ValueError, match="rank 2 outside a world of size 2"):
        owned_names(tiny_sizes, 2, 2)
