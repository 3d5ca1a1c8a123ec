"""A search request on the server: its tree's texts decoded only when asked for (each node
once), the chosen path returned whole, and the config's sampling unless the request sets it."""

import threading

import httpx2 as httpx
import pytest

from marco_jax.grading import final_answer
from marco_jax.search.record import TreeRecord
from marco_jax.search.tree import Outcome, Tree, backup
from marco_jax.serve import protocol
from marco_jax.serve.app import ServerSettings, _Handlers
from marco_jax.serve.worker import LiveTree
import serve_test
from serve_test import chat, search_config

QUESTION = "Tom has 3 apples and buys 4 more. How many apples?"


live = serve_test.live  # a server of this module's own, as serve_test's


def counting(calls):
    def decode(tokens):
        calls.append(list(tokens))
        return "-".join(map(str, tokens))
    return decode


def grown_tree(steps, live=None, watch=False):
    """A tree grown one node a step (some with rollouts, values backed up), ``live`` recording
    each step and (``watch``) read after each."""
    tree = Tree.new([1, 2, 3], 2)
    for i in range(steps):
        child = tree.add_child(i // 2, [10 + i, 11 + i], outcome=Outcome(
            0, 0.25 * (i % 4), i % 3 == 0, None, [50 + i] if i % 2 else []))
        backup(tree, child, 0.25 * (i % 4))
        if live is not None:
            live.grow(tree)
            if watch:
                live.record()
    return tree


def test_a_live_tree_decodes_nothing_until_read_then_each_node_once():
    calls = []
    live = LiveTree("tree-0", "q", counting(calls), str)
    tree = grown_tree(60, live)
    assert calls == []  # 60 growth steps, nobody watching: no text decoded
    expected = TreeRecord.of(tree, counting([]), "tree-0", "q")
    assert live.record() == expected  # what the record module makes of the tree
    with_rollouts = 1 + 60 + 30  # the root, every node's action, half the nodes' rollouts
    assert len(calls) == with_rollouts
    live.record()
    assert len(calls) == with_rollouts  # decoded once
    since = live.record(since=40)
    assert [n.id for n in since.nodes] == list(range(40, 61))
    assert since.nodes == expected.nodes[40:]
    record, visits, values = live.growth(58)
    assert record.nodes == expected.nodes[58:]
    assert visits == [n.visits for n in expected.nodes]
    assert values == [n.value for n in expected.nodes]
    assert LiveTree("empty", None, str, str).growth(0)[1:] == ([], [])


def test_a_watched_live_tree_decodes_each_node_once_not_once_a_step():
    calls = []
    live = LiveTree("tree-1", None, counting(calls), str)
    tree = grown_tree(80, live, watch=True)  # read after each of 80 steps
    assert len(calls) == 1 + 80 + 40  # proportional to the nodes, not nodes x steps
    live.finish(tree, "7", [0, 1, 3])
    final = live.record()
    assert final.chosen_answer == "7" and final.best_path == (0, 1, 3) and live.final
    assert final.nodes == TreeRecord.of(tree, counting([]), "tree-1", None).nodes


def search_request(live, emit, **body):
    handlers = live.server.config.app.state.handlers
    parsed = protocol.parse_chat({"model": "tiny", "seed": 5, "messages": [
        {"role": "user", "content": QUESTION}], **body}, 5)
    return handlers.serve_request(parsed, emit)


def run_search(live, watch: bool, iterations: int = 10):
    """A search through the worker; the count of decode calls at each event (the engine
    thread's), and the request. ``watch``: the tree is read at each progress event."""
    events, done = [], threading.Event()

    def emit(event):
        if watch and event.kind == "progress":
            live.worker.tree(event.data["tree_id"])
        events.append((event.kind, len(live.decoded), event.data))
        if event.kind in ("done", "error"):
            done.set()

    req = search_request(live, emit, marco={"search": "mcts-step", "iterations": iterations})
    live.worker.submit(req)
    assert done.wait(300)
    return req, events


@pytest.fixture
def counted(live, monkeypatch):
    live.decoded = []
    decode = live.worker.decode
    monkeypatch.setattr(live.worker, "decode",
                        lambda tokens: live.decoded.append(list(tokens)) or decode(tokens))
    return live


def test_an_unwatched_search_decodes_no_node_and_a_watched_one_each_node_once(counted):
    live = counted
    req, events = run_search(live, watch=False)
    progress = [(count, data["nodes"]) for kind, count, data in events if kind == "progress"]
    assert len(progress) >= 8 and progress[-1][0] == 0  # grew 8+ times, decoded nothing
    [(_, answered, result)] = [e for e in events if e[0] == "search"]
    # the response's texts: each candidate once, the best answer and its cut at most
    assert answered <= len(result["candidates"]) + 2
    nodes = live.worker.live_tree(req.tree_id).size
    assert len(live.worker.tree(req.tree_id).nodes) == nodes
    assert len(live.decoded) - answered <= 2 * nodes  # each node's text and rollout once
    before = len(live.decoded)
    live.worker.tree(req.tree_id)
    assert len(live.decoded) == before

    live.decoded.clear()
    req, events = run_search(live, watch=True)
    progress = [(count, data["nodes"]) for kind, count, data in events if kind == "progress"]
    assert len(progress) >= 8
    assert progress[-1][0] <= 2 * progress[-1][1]  # read at every step, decoded once a node
    assert sum(n for _, n in progress) > 2 * progress[-1][1]  # (once a step would be more)


def test_a_search_returns_its_chosen_path_whole_and_its_answer(live):
    marco = {"search": "mcts-step", "iterations": 8}
    whole = chat(live, QUESTION, seed=0, extra_body={"marco": marco})
    cut = chat(live, QUESTION, seed=0, max_tokens=5, extra_body={"marco": marco})
    full, short = whole.model_extra["marco"], cut.model_extra["marco"]
    path = full["path"]
    assert len(path) >= 4 and path[0] == 0  # the root and three steps
    nodes = {n["id"]: n for n in httpx.get(f"{live.url}/v1/trees/{full['tree_id']}").json()[
        "nodes"]}
    assert all(nodes[child]["parent"] == parent for parent, child in zip(path, path[1:]))
    [chosen] = [c for c in full["candidates"] if c["node"] == path[-1]]
    assert full["path_text"] == chosen["text"] == whole.choices[0].message.content
    assert full["answer"] == final_answer(full["path_text"]) == chosen["answer"]
    # max_tokens cuts the message, not the path's text nor its answer
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 5
    assert short["text"] == cut.choices[0].message.content != short["path_text"]
    assert (short["path_text"], short["answer"], short["path"]) == (
        full["path_text"], full["answer"], path)


def test_a_search_samples_as_its_config_says_unless_the_request_sets_it(live, monkeypatch):
    seen = []
    submit = live.engine.submit

    def spy(*args, **kwargs):
        seen.append((kwargs["temperature"], kwargs["top_p"], kwargs["top_k"]))
        return submit(*args, **kwargs)

    monkeypatch.setattr(live.engine, "submit", spy)
    marco = {"search": "mcts-step", "iterations": 1}
    config = search_config().search
    chat(live, QUESTION, seed=3, extra_body={"marco": marco})
    assert set(seen) == {(config.temperature, config.top_p, config.top_k)} and seen
    seen.clear()
    chat(live, QUESTION, seed=3, temperature=0.3, extra_body={"marco": marco})
    assert set(seen) == {(0.3, config.top_p, config.top_k)} and seen
    seen.clear()
    httpx.post(f"{live.url}/v1/chat/completions", timeout=120, json={  # null: not set
        "model": "tiny", "messages": [{"role": "user", "content": QUESTION}], "seed": 3,
        "temperature": None, "top_p": 0.5, "top_k": -1, "marco": marco}).raise_for_status()
    assert set(seen) == {(config.temperature, 0.5, 0)} and seen


def test_only_the_sampling_a_body_sets_reaches_a_search_config():
    handlers = _Handlers(None, ServerSettings("tiny", 320, 5, {"mcts-step": search_config()}))
    config = search_config().search

    def searched(**body):
        parsed = protocol.parse_chat({"model": "tiny", "messages": [
            {"role": "user", "content": "hi"}], "marco": {"search": "mcts-step"}, **body}, 5)
        job = handlers.search_job(parsed).search
        return job.temperature, job.top_p, job.top_k

    assert searched() == (config.temperature, config.top_p, config.top_k)
    assert protocol.parse_chat({"model": "tiny", "messages": [
        {"role": "user", "content": "hi"}]}, 5).temperature == 1.0  # a plain request's default
    assert searched(temperature=0) == (0, config.top_p, config.top_k)
    assert searched(top_k=7, temperature=None) == (config.temperature, config.top_p, 7)


def test_a_tree_since_a_node_has_the_newer_nodes_and_the_summary(live):
    reply = chat(live, QUESTION, seed=9, extra_body={"marco": {"search": "mcts-step"}})
    url = f"{live.url}/v1/trees/{reply.model_extra['marco']['tree_id']}"
    whole = httpx.get(url).json()
    extra = ("nodes", "since", "size", "final", "visits", "values")
    assert not set(extra[1:]) & set(whole)  # the whole tree's fields as they were
    newer = httpx.get(url, params={"since": 3}).json()
    assert newer["visits"] == [n["visits"] for n in whole["nodes"]]  # every node's, for backups
    assert newer["values"] == [n["value"] for n in whole["nodes"]]
    assert [n["id"] for n in newer["nodes"]] == [n["id"] for n in whole["nodes"][3:]]
    assert newer["nodes"] == whole["nodes"][3:]
    assert (newer["size"], newer["final"], newer["since"]) == (len(whole["nodes"]), True, 3)
    assert {k: v for k, v in newer.items() if k not in extra} \
        == {k: v for k, v in whole.items() if k != "nodes"}
    assert httpx.get(url, params={"since": len(whole["nodes"])}).json()["nodes"] == []
    bad = httpx.get(url, params={"since": "-1"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"


def test_a_node_of_a_tree_comes_with_its_tokens_scores(live):
    reply = chat(live, QUESTION, seed=4, extra_body={"marco": {"search": "mcts-step",
                                                               "iterations": 3}})
    tree_id = reply.model_extra["marco"]["tree_id"]
    url = f"{live.url}/v1/trees/{tree_id}"
    tree = httpx.get(url).json()
    live_tree = live.worker.live_tree(tree_id)
    for node in tree["nodes"]:
        got = httpx.get(f"{url}/nodes/{node['id']}").json()
        assert {k: v for k, v in got.items() if k != "tokens"} == node  # the tree's own fields
        if node["kind"] != "action":
            assert "tokens" not in got  # the root's prompt: not the model's choice
            continue
        action = live_tree._tokens[node["id"]][0]
        assert [t["text"] for t in got["tokens"]] == [live.worker.token_text(t) for t in action]
        for token in got["tokens"]:
            logprobs = [lp for _, lp in token["top"]]
            assert len(logprobs) == 5 and logprobs == sorted(logprobs, reverse=True)
            assert 0 < token["confidence"] <= 1
    for bad in (len(tree["nodes"]), "x"):
        missing = httpx.get(f"{url}/nodes/{bad}")
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "node"
    assert httpx.get(f"{live.url}/v1/trees/nope/nodes/0").status_code == 404
