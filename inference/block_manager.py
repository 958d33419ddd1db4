"""BlockManager: fixed-size KV blocks, a free list, reference counts for sequences that share a prompt."""

from collections import deque


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_needed(self, table: list[int], num_tokens: int) -> int:
        """Extra blocks a sequence with `table` needs to hold `num_tokens` tokens."""
        return max(0, -(-num_tokens // self.block_size) - len(table))

    def can_grow(self, table: list[int], num_tokens: int, reserve: int = 0) -> bool:
        return self.blocks_needed(table, num_tokens) + reserve <= len(self._free)

    def grow(self, table: list[int], num_tokens: int) -> None:
        """Append blocks to `table` until it holds `num_tokens`; the caller checked can_grow."""
        for _ in range(self.blocks_needed(table, num_tokens)):
            block = self._free.popleft()
            assert self._refs[block] == 0
            self._refs[block] = 1
            table.append(block)

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
        dst = self._free.popleft()
        self._refs[dst] = 1
        self._refs[src] -= 1
        table[index] = dst
        return src, dst

    def free(self, table: list[int]) -> None:
        for block in table:
            self._refs[block] -= 1
            assert self._refs[block] >= 0, f"block {block} freed twice"
            if self._refs[block] == 0:
                self._free.append(block)
        table.clear()
