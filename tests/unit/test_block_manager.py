"""BlockManager: free list, growth, sharing and copy-on-write, exhaustion."""

import pytest

from inference.engine.block_manager import BlockManager, block_hashes


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


# -- prefix cache ---------------------------------------------------------------------------------


def test_block_hashes_chain_the_whole_prefix():
    a = block_hashes([1, 2, 3, 4, 5, 6, 7], block_size=2)
    assert len(a) == 3  # full blocks only
    assert block_hashes([9, 9, 3, 4], block_size=2)[1] != a[1]  # same block tokens, other prefix
    assert block_hashes([1, 2, 3, 4, 5, 6, 8], 2) == a  # the partial block does not count
    assert block_hashes([1, 2, 3, 4, 5, 6], 2, start=1, parent=a[0]) == a[1:]  # resumable


def test_freed_registered_blocks_are_found_until_taken_for_something_else():
    bm = BlockManager(num_blocks=4, block_size=2)
    hashes = block_hashes([1, 2, 3, 4, 5], 2)
    table: list[int] = []
    bm.grow(table, 5)  # 3 blocks, the last one partial
    for block, h in zip(table[:2], hashes, strict=True):
        bm.register(block, h)
    first_two = table[:2]
    bm.free(table)
    assert bm.num_free == 4 and bm.num_cached == 2
    found = bm.lookup(hashes + [b"unknown"])
    assert found == first_two and bm.num_free == 2  # taken out of the free list, referenced
    assert bm.lookup(block_hashes([7, 7, 3, 4], 2)) == []  # block 1's tokens, after another block 0
    bm.free(found)
    other: list[int] = []
    bm.grow(other, 8)  # all 4 blocks: the cached ones are overwritten and forgotten
    assert bm.num_cached == 0 and bm.lookup(hashes) == []


def test_least_recently_freed_blocks_are_reused_first_and_tails_before_heads():
    bm = BlockManager(num_blocks=6, block_size=1)
    old, new = [], []
    bm.grow(old, 2)
    bm.grow(new, 2)
    for i, block in enumerate(old + new):
        bm.register(block, bytes([i]))
    old_blocks, new_blocks = list(old), list(new)
    bm.free(old)
    bm.free(new)
    taken: list[int] = []
    bm.grow(taken, 3)  # the 2 never-used blocks first, then old's tail
    assert taken[2] == old_blocks[1]
    assert bm.lookup([bytes([0])]) == [old_blocks[0]]
    assert bm.lookup([bytes([2]), bytes([3])]) == new_blocks


def test_a_shared_cached_block_stays_cached_while_referenced():
    bm = BlockManager(num_blocks=3, block_size=2)
    table: list[int] = []
    bm.grow(table, 2)
    bm.register(table[0], b"h")
    again = bm.lookup([b"h"])
    assert again == table and bm.is_shared(table[0])
    bm.free(table)
    assert not bm.can_grow([], 6)  # one block is still referenced by `again`
    assert bm.lookup([b"h"]) == again


def test_disabled_prefix_caching_never_finds_anything():
    bm = BlockManager(num_blocks=2, block_size=2, prefix_caching=False)
    table: list[int] = []
    bm.grow(table, 2)
    bm.register(table[0], b"h")
    bm.free(table)
    assert bm.lookup([b"h"]) == [] and bm.num_cached == 0
