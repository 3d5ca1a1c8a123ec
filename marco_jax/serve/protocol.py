"""OpenAI's request and response shapes. Unknown fields are ignored, as OpenAI's and vLLM's
servers do; known ones this server cannot honour are refused rather than silently dropped.
``marco`` is this server's extension: Marco-o1's system prompt and a tree search.

For a search, ``max_tokens`` bounds the returned answer: its path's completion tokens, cut
there (finish ``length``) as a plain choice is; ``usage`` counts those. Everything the search
generates (every node and rollout) is bounded by ``marco.max_total_tokens`` and counted in
``marco.usage``.

A search samples as its config says; a request's ``temperature``, ``top_p`` or ``top_k``
replaces the config's only when the body sets it (not null): a default OpenAI's servers
would assume (temperature 1) never reaches a search.

A search's response carries its ``marco`` field: ``text`` (the returned answer, as
``message.content``: cut at ``max_tokens``), ``path_text`` (the chosen answer whole: every
step on its path from the root, then the rollout that finished it, never cut), ``answer``
(the final answer in ``path_text``), ``path`` (node ids from the root to the chosen answer's
node), ``value``, ``config``, ``rollouts``, ``generated_tokens``, ``usage`` (every token the
search generated), ``candidates`` (node, text, value, finished, answer) and ``tree_id`` (for
``GET /v1/trees/{id}``, whose ``?since=N`` returns only nodes with id >= N)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import uuid
from typing import Any, Callable

from marco_jax import prompts

MAX_STOPS = 4  # OpenAI's limit on stop sequences
EFFORTS = ("low", "medium", "high")


class RequestError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = (
            message, param, status, kind, code)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    kind: str  # "chat" or "completion"
    model: str
    prompt: str | list[int]  # rendered text, or token ids (completions only)
    max_tokens: int | None  # None: up to the context length
    temperature: float
    top_p: float
    top_k: int
    n: int
    stop: tuple[str, ...]
    seed: int | None
    logprobs: int | None  # top alternatives per token (0: only the chosen); None: off
    stream: bool
    include_usage: bool
    search: str | None = None  # chat: the search config to answer with
    search_iterations: int | None = None  # instead of the search config's own
    search_max_total_tokens: int | None = None  # a cap on every token the search generates
    question: str | None = None  # chat: the last user turn (what a search answers)
    sampling: frozenset[str] = frozenset()  # SAMPLING fields the body set: a search's overrides


SAMPLING = ("temperature", "top_p", "top_k")  # a search's config has its own
_AT_LEAST_ONE = (lambda v: v >= 1, "must be >= 1")
# Checked fields: their types, the default when absent or null, and what a value must be.
_FIELDS: dict[str, tuple[tuple[type, ...], Any, tuple[Callable[[Any], bool], str] | None]] = {
    "n": ((int,), 1, _AT_LEAST_ONE),
    "max_tokens": ((int,), None, _AT_LEAST_ONE),
    "max_completion_tokens": ((int,), None, _AT_LEAST_ONE),
    "temperature": ((int, float), 1.0, (lambda v: 0 <= v <= 2, "must be in [0, 2]")),
    "top_p": ((int, float), 1.0, (lambda v: 0 < v <= 1, "must be in (0, 1]")),
    "top_k": ((int,), 0, (lambda v: v >= -1, "must be >= 0 (0 or -1: off)")),
    "seed": ((int,), None, (lambda v: 0 <= v < 2 ** 63, "must be in [0, 2**63)")),
    "reasoning_effort": ((str,), None,
                         (lambda v: v in EFFORTS, f"must be one of {', '.join(EFFORTS)}")),
}
_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               dict: "an object"}
# Known fields this server honours only at their default.
_UNSUPPORTED = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "echo": False,
                "suffix": "", "tools": [], "functions": [], "response_format": {"type": "text"}}


def _typed(body: dict, name: str, types: tuple[type, ...] | None = None, default: Any = None,
           check: tuple[Callable[[Any], bool], str] | None = None) -> Any:
    """``body[name]``, checked (by its ``_FIELDS`` entry unless given); absent or null: default."""
    if types is None:
        types, default, check = _FIELDS[name]
    value = body.get(name)
    if value is None:
        return default
    # JSON true is a Python int, but not a number to a client
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        wanted = " or ".join(_TYPE_NAMES[t] for t in types if not (t is int and float in types))
        got = "a boolean" if isinstance(value, bool) else type(value).__name__
        raise RequestError(f"'{name}' must be {wanted}, got {got}", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"'{name}' must be a finite number", name)
    if check is not None and not check[0](value):
        raise RequestError(f"'{name}' {check[1]}, got {value!r}", name)
    return value


def _top_count(body: dict, name: str, most: int, default: int | None) -> int | None:
    """A number of top alternatives per token, at most the engine's ``most``."""
    in_range = (lambda v: 0 <= v <= most, f"must be in [0, {most}]")
    return _typed(body, name, (int,), default, in_range)


def _refuse_unsupported(body: dict) -> None:
    for name, default in _UNSUPPORTED.items():
        if body.get(name) not in (None, default):
            raise RequestError(f"'{name}' is not supported by this server (only {default!r})", name)


def _stop(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise RequestError("'stop' must be a string or an array of strings", "stop")
    if len(items) > MAX_STOPS:
        raise RequestError(f"'stop' takes at most {MAX_STOPS} strings, got {len(items)}", "stop")
    if any(not s for s in items):
        raise RequestError("'stop' strings must not be empty", "stop")
    return tuple(items)


def _common(body: dict, kind: str) -> dict[str, Any]:
    """The fields completions and chat share."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = _typed(body, "model", (str,))
    if model is None:
        raise RequestError("'model' is required", "model")
    _refuse_unsupported(body)
    n = _typed(body, "n")
    _typed(body, "best_of", (int,), n, (lambda v: v == n, "must equal n (no best_of)"))
    stream_options = _typed(body, "stream_options", (dict,), {})
    max_tokens = _typed(body, "max_tokens")
    return dict(
        kind=kind, model=model, max_tokens=_typed(body, "max_completion_tokens") or max_tokens,
        temperature=float(_typed(body, "temperature")), top_p=float(_typed(body, "top_p")),
        top_k=_typed(body, "top_k"), n=n, stop=_stop(body), seed=_typed(body, "seed"),
        stream=_typed(body, "stream", (bool,), False),
        include_usage=_typed(stream_options, "include_usage", (bool,), False),
        sampling=frozenset(name for name in SAMPLING if body.get(name) is not None))


def _marco_int(marco: dict, name: str) -> int | None:
    """``marco[name]``, an integer >= 1, checked as a top-level field is: errors name
    ``marco.NAME``."""
    param = f"marco.{name}"
    return _typed({param: marco.get(name)}, param, (int,), None, _AT_LEAST_ONE)


def _marco(body: dict) -> tuple[str | None, str | None, int | None, int | None]:
    """``marco`` and ``reasoning_effort``: (system prompt name, search config, iterations,
    max total tokens)."""
    marco = _typed(body, "marco", (dict,), {})
    effort = _typed(body, "reasoning_effort")
    config, iterations, system = marco.get("search"), marco.get("iterations"), marco.get("system")
    total = _marco_int(marco, "max_total_tokens")
    if config is not None and (not isinstance(config, str) or not config):
        raise RequestError("'marco.search' must be the name of a search config", "marco.search")
    if config is not None and iterations is not None and (
            isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1):
        raise RequestError("'marco.iterations' must be an integer >= 1", "marco.iterations")
    if system is not None and system not in prompts.SYSTEM_PROMPTS:
        raise RequestError(f"'marco.system' must be one of {sorted(prompts.SYSTEM_PROMPTS)}",
                           "marco.system")
    if config is None and effort is not None:
        config, iterations = f"effort:{effort}", None
    if total is not None and config is None:
        raise RequestError("'marco.max_total_tokens' bounds a search; this request asks for none",
                           "marco.max_total_tokens")
    return system, config, iterations, total


def parse_completion(body: dict, max_logprobs: int) -> GenerationRequest:
    """A ``/v1/completions`` body: one prompt (text or token ids)."""
    common = _common(body, "completion")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise RequestError("'prompt' must be a string or an array of token ids (one prompt "
                               "per request)", "prompt")
    elif not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string or an array of token ids", "prompt")
    if not prompt:
        raise RequestError("'prompt' must not be empty", "prompt")
    logprobs = _top_count(body, "logprobs", max_logprobs, None)
    if _marco(body)[1] is not None:
        raise RequestError("a search runs on chat requests (/v1/chat/completions)", "marco")
    return GenerationRequest(prompt=prompt, logprobs=logprobs, **common)


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    param = f"messages[{index}].content"
    if not isinstance(content, list):
        raise RequestError(f"{param} must be a string or an array of text parts", param)
    if not all(isinstance(part, dict) and part.get("type") == "text"
               and isinstance(part.get("text"), str) for part in content):
        raise RequestError(f"{param}: only text parts are supported", param)
    return "".join(part["text"] for part in content)


def _turn(message: Any, index: int) -> dict[str, str]:
    """One message as a ChatML turn (OpenAI's ``developer`` role is a system turn)."""
    if not isinstance(message, dict):
        raise RequestError(f"messages[{index}] must be an object", f"messages[{index}]")
    role = message.get("role")
    if role not in ("system", "developer", "user", "assistant"):
        raise RequestError(f"messages[{index}].role must be system, user or assistant, "
                           f"got {role!r}", f"messages[{index}].role")
    return {"role": "system" if role == "developer" else role,
            "content": _content(message, index)}


def parse_chat(body: dict, max_logprobs: int) -> GenerationRequest:
    """A ``/v1/chat/completions`` body, rendered through Qwen2's ChatML."""
    common = _common(body, "chat")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array", "messages")
    turns = [_turn(message, i) for i, message in enumerate(messages)]
    system, search, iterations, total = _marco(body)
    system_prompt = prompts.SYSTEM_PROMPTS.get(system)
    if system_prompt is not None and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system_prompt})
    logprobs = None
    if _typed(body, "logprobs", (bool,), False):
        logprobs = _top_count(body, "top_logprobs", max_logprobs, 0)
    elif body.get("top_logprobs") is not None:
        raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    users = [t["content"] for t in turns if t["role"] == "user"]
    if search is not None and (common["n"] != 1 or not users):
        raise RequestError("a search request needs n = 1 and a user message", "marco")
    return GenerationRequest(prompt=prompts.chatml(turns), logprobs=logprobs,
                             search=search, search_iterations=iterations,
                             search_max_total_tokens=total,
                             question=users[-1] if users else None, **common)


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclasses.dataclass
class TokenInfo:
    """One generated token as the response shows it."""

    text: str
    data: bytes
    logprob: float
    top: list[tuple[str, bytes, float]]  # (text, bytes, logprob), best first


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def logprobs_block(kind: str, tokens: list[TokenInfo], top: int, offset: int = 0) -> dict:
    """Chat's ``content`` list, or the legacy arrays (``text_offset`` counts from ``offset``)."""
    if kind == "chat":
        return {"content": [{"token": t.text, "logprob": t.logprob, "bytes": list(t.data),
                             "top_logprobs": [{"token": s, "logprob": lp, "bytes": list(b)}
                                              for s, b, lp in t.top[:top]]}
                            for t in tokens], "refusal": None}
    offsets = itertools.accumulate([len(t.text) for t in tokens], initial=offset)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{s: lp for s, _, lp in t.top[:top]} for t in tokens],
            "text_offset": list(offsets)[:-1]}


def choice_body(kind: str, index: int, text: str, finish: str | None, logprobs: dict | None,
                delta: bool = False, role: bool = False) -> dict:
    """A response's choice, or (``delta``) a streamed chunk's, which names the role first."""
    if kind != "chat":
        content = {"text": text}
    elif delta:
        content = {"delta": {"role": "assistant", "content": text} if role else {"content": text}}
    else:
        content = {"message": {"role": "assistant", "content": text}}
    return {"index": index, **content, "logprobs": logprobs, "finish_reason": finish}


def response_body(kind: str, rid: str, model: str, choices: list[dict], chunk: bool = False,
                  **extra: dict) -> dict:
    """A whole response or (``chunk``) a streamed one's chunk; ``extra``: ``usage``, ``marco``."""
    chat = "chat.completion.chunk" if chunk else "chat.completion"
    return {"id": rid, "object": chat if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": choices, **extra}
