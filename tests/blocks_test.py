"""Block bookkeeping on the host: reference counts, prefix lookup, reuse order."""

import pytest

from marco_jax.engine.blocks import BlockManager
from marco_jax.engine.scheduler import Request, Scheduler
from marco_jax.errors import MarcoError


def test_named_blocks_are_found_by_prefix_and_survive_release_until_reused():
    blocks = BlockManager(num_blocks=6, block_size=4)  # 5 usable
    tokens = list(range(10))
    held = blocks.allocate(3)
    blocks.name(tokens, held, 2)  # two full blocks of 4
    assert blocks.cached_prefix(tokens, 2) == held[:2]
    assert blocks.cached_prefix([0, 1, 2, 3, 9, 9, 9, 9], 2) == held[:1]  # diverges in block 2
    assert blocks.cached_prefix([1] + tokens[1:], 2) == []
    blocks.release(held)
    assert blocks.held == 0 and blocks.available == 5
    blocks.hold(blocks.cached_prefix(tokens, 2))  # revived, not copied
    assert blocks.refs[held[0]] == 1 and blocks.available == 3
    blocks.release(held[:2])
    assert held == [1, 2, 3]
    fresh = blocks.allocate(3)  # blocks that hold no named prefix go first
    assert fresh == [4, 5, 3] and blocks.cached_prefix(tokens, 2) == [1, 2]
    assert blocks.allocate(1) == [1]  # then the one released longest ago, forgetting its name
    assert blocks.cached_prefix(tokens, 2) == []
    everything = [1] + blocks.allocate(1)
    blocks.release(fresh + everything)
    assert blocks.available == 5


def test_release_of_an_unheld_block_and_overdraw_are_errors():
    blocks = BlockManager(num_blocks=3, block_size=4)
    with pytest.raises(MarcoError, match="block 1 released but not held"):
        blocks.release([1])
    with pytest.raises(MarcoError, match="3 blocks wanted, 2 available"):
        blocks.allocate(3)


def test_scheduler_admits_in_order_and_waits_for_room():
    blocks = BlockManager(num_blocks=9, block_size=4)  # 8 usable
    scheduler = Scheduler(slots=3, blocks=blocks, max_blocks_per_request=8)
    requests = [Request(i, list(range(1, 8)), 9, 0.0, 0, 1.0, i) for i in range(3)]  # 4 blocks
    for r in requests:
        scheduler.add(r)
    admitted = scheduler.admit()
    assert [r.id for r in admitted] == [0, 1] and list(scheduler.waiting) == [requests[2]]
    assert (scheduler.table_sm[0, :4] == requests[0].blocks).all()
    requests[0].tokens = [5] * 9
    scheduler.retire(requests[0])
    assert [r.id for r in scheduler.admit()] == [2]
    assert requests[2].cached_tokens == 4  # the first block of the shared prompt
    with pytest.raises(MarcoError, match="need 9 KV blocks, the pool has 8"):
        scheduler.add(Request(9, [1] * 30, 7, 0.0, 0, 1.0, 0))


def test_scheduler_admits_lower_priority_first_then_in_arrival_order():
    scheduler = Scheduler(slots=2, blocks=BlockManager(num_blocks=64, block_size=4),
                          max_blocks_per_request=8)
    requests = [Request(i, [1, 2, 3], 4, 0.0, 0, 1.0, i, priority=p)
                for i, p in enumerate([3, 1, 3, 0, 1])]
    for r in requests:
        scheduler.add(r)
    assert [r.id for r in scheduler.waiting] == [3, 1, 4, 0, 2]
    assert [r.id for r in scheduler.admit()] == [3, 1]
    scheduler.retire(requests[3])
    scheduler.add(Request(5, [1, 2], 4, 0.0, 0, 1.0, 5, priority=2))
    assert [r.id for r in scheduler.admit()] == [4]
    assert [r.id for r in scheduler.waiting] == [5, 0, 2]
