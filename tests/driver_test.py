"""Tree programs multiplexed over an engine: completion routing and admission order."""

import dataclasses

import pytest

from marco_jax.engine.engine import Engine, EngineConfig
from marco_jax.errors import MarcoError
from marco_jax.search.driver import Call, Driver, drive


def one_slot_engine(tiny):
    config = EngineConfig(slots=1, decode_steps=4, block_size=8, max_model_len=256,
                          kv_cache_gb=0.01, prefill_shapes=((1, 16),))
    return Engine(tiny.model, tiny.eos_ids, config)


def program(name, rounds, log):
    """Asks for one continuation per round, logging which round came back when."""
    for r in range(rounds):
        [completion] = yield [Call([5 + r, 6, 7], 3, seed=r)]
        log.append((name, r))
        assert len(completion.tokens) >= 1
    return name


def test_calls_go_breadth_first_over_trees_then_oldest_first(tiny):
    """One slot. "c" starts when "b" finishes, after "a" has asked for its 2nd
    round: c's 1st round still goes first (arrival order would run a's first)."""
    log = []
    programs = [("a", program("a", 3, log)), ("b", program("b", 1, log)),
                ("c", program("c", 1, log))]
    done = list(drive(Driver({"policy": one_slot_engine(tiny)}), programs, max_in_flight=2))
    assert log == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("a", 2)]
    assert [key for key, _ in done] == ["b", "c", "a"]
    assert [value for _, value in done] == ["b", "c", "a"]


def test_max_in_flight_bounds_the_trees_started(tiny):
    started, log = [], []
    programs = [(i, program(i, 2, log)) for i in range(5)]
    for key, _ in drive(Driver({"policy": one_slot_engine(tiny)}), programs, max_in_flight=2,
                        on_start=started.append):
        assert len(started) - len([k for k, r in log if r == 1]) <= 2
    assert sorted(started) == list(range(5))


def test_a_call_for_a_model_that_is_not_there_is_refused(tiny):
    def asks_checker():
        yield [dataclasses.replace(Call([1, 2], 2, 0), model="checker")]
    with pytest.raises(MarcoError, match="asked for model 'checker'"):
        list(drive(Driver({"policy": one_slot_engine(tiny)}), [("p", asks_checker())], 1))



def test_direct_requests_share_the_steps_and_a_cancelled_program_frees_its_calls(tiny):
    config = EngineConfig(slots=4, decode_steps=4, block_size=8, max_model_len=256,
                          kv_cache_gb=0.01, prefill_shapes=((4, 16),))
    engine = Engine(tiny.model, tiny.eos_ids, config)
    driver = Driver({"policy": engine})
    log = []
    driver.start("kept", program("kept", 2, log))
    driver.start("dropped", program("dropped", 2, log))
    direct = engine.submit([9, 8, 7], 5)
    [(name, rid)] = driver.requests("dropped")
    assert name == "policy" and engine.in_flight(rid) is not None
    assert driver.cancel("dropped") and not driver.cancel("dropped")
    assert engine.in_flight(rid) is None and driver.active == 1
    foreign = []
    while driver.has_work:
        foreign += driver.step()
    assert [c.request_id for c in foreign] == [direct]
    assert driver.finished == [("kept", "kept")] and log == [("kept", 0), ("kept", 1)]
    assert engine.blocks.held == 0
