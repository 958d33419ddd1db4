"""BlockManager: free list, growth, sharing and copy-on-write, exhaustion."""

import pytest

from inference.block_manager import BlockManager


def test_grow_allocates_exactly_the_blocks_needed():
    bm = BlockManager(num_blocks=8, block_size=4)
    table: list[int] = []
    bm.grow(table, 1)
    assert len(table) == 1 and bm.num_free == 7
    bm.grow(table, 4)
    assert len(table) == 1
    bm.grow(table, 9)
    assert len(table) == 3 and bm.num_used == 3
    assert len(set(table)) == 3


def test_free_returns_every_block():
    bm = BlockManager(num_blocks=4, block_size=2)
    a, b = [], []
    bm.grow(a, 4)
    bm.grow(b, 3)
    assert bm.num_free == 0
    assert not bm.can_grow(a, 5)
    bm.free(a)
    assert a == [] and bm.num_free == 2
    bm.free(b)
    assert bm.num_free == 4


def test_shared_blocks_are_freed_only_by_the_last_owner():
    bm = BlockManager(num_blocks=4, block_size=2)
    parent: list[int] = []
    bm.grow(parent, 3)  # 2 blocks
    child = bm.share(parent)
    assert child == parent and bm.is_shared(parent[-1])
    bm.free(parent)
    assert bm.num_free == 2  # child still holds both
    bm.free(child)
    assert bm.num_free == 4


def test_copy_on_write_gives_a_private_last_block():
    bm = BlockManager(num_blocks=4, block_size=2)
    parent: list[int] = []
    bm.grow(parent, 3)
    child = bm.share(parent)
    src, dst = bm.replace(child, 1)
    assert src == parent[1] and dst == child[1] and dst != src
    assert not bm.is_shared(parent[1]) and not bm.is_shared(child[1])
    assert bm.is_shared(parent[0])


def test_double_free_is_caught():
    bm = BlockManager(num_blocks=2, block_size=2)
    t: list[int] = []
    bm.grow(t, 2)
    copy = list(t)
    bm.free(t)
    with pytest.raises(AssertionError):
        bm.free(copy)
