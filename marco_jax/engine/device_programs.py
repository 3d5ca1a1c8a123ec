"""The engine's device programs: pure functions of (parameters, KV pages, slot state,
block tables), jitted once per shape. A slot's pending token is the last of its
context, so prefill never needs logits: the first decode step gives the first new token.
A decode program's rows are the engine's slots or a bucket of them (the engine gathers
the live slots into the smallest bucket that holds them); how many steps a call runs
is an argument, so a call may stop early without another program.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from marco_jax.engine import sampling, stops
from marco_jax.engine.forward import paged_hidden_states
from marco_jax.engine.kv_pages import KVPages, Placement, constrain_pages

RUNNING, LENGTH, EOS, STOP, IDLE = -1, 0, 1, 2, 3
FINISH_REASONS = {LENGTH: "length", EOS: "eos", STOP: "stop"}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SlotState:
    """Per-slot decode state (s slots, j stop strings); the host owns it between calls."""

    token_s: jax.Array  # int32: the token to feed next (last of the context)
    position_s: jax.Array  # int32: its position
    count_s: jax.Array  # int32: tokens generated so far, also the sampling step
    max_new_s: jax.Array  # int32: the request's token budget
    reason_s: jax.Array  # int32: RUNNING, IDLE or a finish reason
    stop_sj: jax.Array  # int32: stop-string automaton states
    stop_on_sj: jax.Array  # bool: the slot's request stops on string j
    temperature_s: jax.Array
    top_k_s: jax.Array
    top_p_s: jax.Array
    seed_s: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class StepOutputs:
    """What each row produced in one call, (s, steps[, top]); steps past the call's
    count, and the steps of rows that were not running, are not ``produced``."""

    tokens: jax.Array
    logprobs: jax.Array
    top_ids: jax.Array
    top_logprobs: jax.Array
    confidences: jax.Array
    produced: jax.Array  # bool: this step gave the slot a kept token


def decode_steps(graphdef: nnx.GraphDef, params: nnx.State, pages: KVPages, state: SlotState,
                 table_sm: jax.Array, eos_ids: jax.Array, stop_sjv: jax.Array,
                 stop_lengths_j: jax.Array, steps_now: jax.Array, *, steps: int,
                 top_logprobs: int, width: int, placement: Placement, use_kernel: bool):
    """Advance every running row by up to ``steps_now`` tokens (traced, at most the static
    ``steps``, which sizes the outputs): feed its pending token, pick the next (greedy or
    from its own seed and step), record log-probabilities and Marco-o1's confidence, and
    stop it on EOS, a stop string or its budget. Rows are independent: a row's results
    depend on its own state, the program's row count and nothing else."""
    model = nnx.merge(graphdef, params)
    s = state.token_s.shape[0]
    kernel_on = placement if use_kernel and placement.platform == "tpu" else None

    def one_step(loop):
        i, pages, state, out = loop
        live_s = state.reason_s == RUNNING
        x_s1d, pages = paged_hidden_states(model, pages, state.token_s[:, None],
                                           state.position_s[:, None], live_s[:, None],
                                           table_sm, kernel_on)
        pages = constrain_pages(pages, placement)
        logits_sv = model.logits(x_s1d)[:, 0]
        token_s = sampling.next_tokens(logits_sv, state.temperature_s, state.top_k_s,
                                       state.top_p_s, state.seed_s, state.count_s, width)
        token_lp_s, top_lp_sk, top_ids_sk = sampling.token_and_top_logprobs(logits_sv, token_s,
                                                                            top_logprobs)
        c_s = jnp.exp(token_lp_s) / jnp.exp(top_lp_sk).sum(-1)
        stop_sj, hit_s = stops.advance(stop_sjv, stop_lengths_j, state.stop_sj, token_s,
                                       state.stop_on_sj)
        count_s = state.count_s + live_s
        ended_s = jnp.select([jnp.isin(token_s, eos_ids), hit_s, count_s >= state.max_new_s],
                             [EOS, STOP, LENGTH], RUNNING)
        state = dataclasses.replace(
            state, token_s=jnp.where(live_s, token_s, state.token_s),
            position_s=state.position_s + live_s, count_s=count_s,
            reason_s=jnp.where(live_s, ended_s, state.reason_s),
            stop_sj=jnp.where(live_s[:, None], stop_sj, state.stop_sj))
        out = jax.tree.map(lambda buf, x: buf.at[:, i].set(x), out,
                           StepOutputs(token_s, token_lp_s, top_ids_sk, top_lp_sk, c_s, live_s))
        return i + 1, pages, state, out

    def any_running(loop):
        return (loop[0] < jnp.minimum(steps_now, steps)) & jnp.any(loop[2].reason_s == RUNNING)

    k = top_logprobs
    out = StepOutputs(jnp.zeros((s, steps), jnp.int32), jnp.zeros((s, steps), jnp.float32),
                      jnp.zeros((s, steps, k), jnp.int32), jnp.zeros((s, steps, k), jnp.float32),
                      jnp.zeros((s, steps), jnp.float32), jnp.zeros((s, steps), bool))
    _, pages, state, out = jax.lax.while_loop(any_running, one_step,
                                              (jnp.int32(0), pages, state, out))
    return pages, state, out


def prefill_chunk(graphdef: nnx.GraphDef, params: nnx.State, pages: KVPages,
                  tokens_rc: jax.Array, positions_rc: jax.Array, valid_rc: jax.Array,
                  table_rm: jax.Array, *, placement: Placement) -> KVPages:
    """Write the keys/values of r rows' next c context tokens into their blocks."""
    model = nnx.merge(graphdef, params)
    _, pages = paged_hidden_states(model, pages, tokens_rc, positions_rc, valid_rc, table_rm)
    return constrain_pages(pages, placement)
