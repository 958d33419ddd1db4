"""BlockManager: fixed-size KV blocks, a free list, reference counts for sequences that share a prompt,
and a prefix cache: full blocks keep their contents, under a hash of every token up to their end, after
their last sequence frees them, until the block is taken for something else (least recently freed first).
"""

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

BlockHash = bytes  # sha256 of the previous block's hash and this block's token ids
_SALT_DOMAIN = b"gguf-serve cache_salt\0"


def salted_root(salt: str | None) -> BlockHash:
    """The "previous hash" of a prompt's first block: empty without a salt, else a digest of the salt, so
    requests with different salts (or one without) share no cached block (every hash chains from it)."""
    if salt is None:
        return b""
    return hashlib.sha256(_SALT_DOMAIN + salt.encode("utf-8", "surrogatepass")).digest()


def block_hashes(
    token_ids: Sequence[int], block_size: int, start: int = 0, parent: BlockHash = b""
) -> list[BlockHash]:
    """Chained hashes of the full blocks of token_ids from block `start` (parent: block start - 1's hash,
    or salted_root() for block 0)."""
    out = []
    for i in range(start, len(token_ids) // block_size):
        tokens = np.asarray(token_ids[i * block_size : (i + 1) * block_size], np.int64)
        parent = hashlib.sha256(parent + tokens.tobytes()).digest()
        out.append(parent)
    return out


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # oldest first
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, BlockHash] = {}  # cached blocks: block -> hash
        self._by_hash: dict[BlockHash, int] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached(self) -> int:
        """Blocks holding a cached prefix (in use or free)."""
        return len(self._by_hash)

    def blocks_needed(self, table: list[int], num_tokens: int) -> int:
        """Extra blocks a sequence with `table` needs to hold `num_tokens` tokens."""
        return max(0, -(-num_tokens // self.block_size) - len(table))

    def can_grow(self, table: list[int], num_tokens: int, reserve: int = 0) -> bool:
        return self.blocks_needed(table, num_tokens) + reserve <= len(self._free)

    def grow(self, table: list[int], num_tokens: int) -> None:
        """Append blocks to `table` until it holds `num_tokens`; the caller checked can_grow."""
        for _ in range(self.blocks_needed(table, num_tokens)):
            table.append(self._take_free())

    def share(self, table: list[int]) -> list[int]:
        """A copy of `table` whose blocks are now referenced once more (for a forked sequence)."""
        for block in table:
            self._refs[block] += 1
        return list(table)

    def is_shared(self, block: int) -> bool:
        return self._refs[block] > 1

    def replace(self, table: list[int], index: int) -> tuple[int, int]:
        """Copy-on-write: give `table[index]` a private block; returns (src, dst) for the data copy."""
        src = table[index]
        dst = self._take_free()
        self._refs[src] -= 1
        table[index] = dst
        return src, dst

    def free(self, table: list[int]) -> None:
        """Drops one reference to each block; unreferenced ones go to the free list, the last block
        of the table first so that a prompt's first blocks are the last to be reused."""
        for block in reversed(table):
            self._refs[block] -= 1
            assert self._refs[block] >= 0, f"block {block} freed twice"
            if self._refs[block] == 0:
                self._free[block] = None
        table.clear()

    def truncate(self, table: list[int], num_tokens: int) -> None:
        """Frees the blocks of `table` past the first ones that hold `num_tokens` tokens (the rejected end of
        a speculative step). They never held a full computed block, so no cached hash: they go to the
        front of the free list, to be reused before blocks whose cached prefix may still serve."""
        keep = -(-num_tokens // self.block_size)
        for block in reversed(table[keep:]):
            self._refs[block] -= 1
            assert self._refs[block] == 0 and block not in self._hash_of, f"block {block} is shared or cached"
            self._free[block] = None
            self._free.move_to_end(block, last=False)
        del table[keep:]

    # -- prefix cache -----------------------------------------------------------------------------

    def lookup(self, hashes: list[BlockHash]) -> list[int]:
        """Takes a reference to the cached blocks of the longest prefix of `hashes`; returns them."""
        found = []
        for h in hashes if self.prefix_caching else ():
            block = self._by_hash.get(h)
            if block is None:
                break
            found.append(block)
        for block in found:
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1
        return found

    def register(self, block: int, h: BlockHash) -> None:
        """Block `block` is full and computed; its contents are cached under `h` (first come wins)."""
        if self.prefix_caching and h not in self._by_hash and block not in self._hash_of:
            self._by_hash[h] = block
            self._hash_of[block] = h

    def _take_free(self) -> int:
        block, _ = self._free.popitem(last=False)  # the least recently freed
        assert self._refs[block] == 0
        h = self._hash_of.pop(block, None)
        if h is not None:  # its cached contents are about to be overwritten
            del self._by_hash[h]
        self._refs[block] = 1
        return block
