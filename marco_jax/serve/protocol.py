"""OpenAI's request and response shapes for completions and chat completions.

``parse_completion`` and ``parse_chat`` turn a JSON body into a typed
:class:`GenerationRequest`, refusing a bad field with a :class:`RequestError`
that names it (HTTP 400 with OpenAI's error body); fields this server does not
know are ignored, as OpenAI's own server and vLLM's do, and known fields it
cannot honour (penalties, ``echo``, ``logit_bias``, tools) are refused rather
than silently dropped. The ``*_body`` and ``*_chunk`` functions build the
responses and server-sent-event chunks. ``marco`` is this server's extension
object: Marco-o1's system prompt and a tree search per request.
"""

from __future__ import annotations

import dataclasses
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
class SearchOptions:
    """A tree search for this request: a named search config, optionally with
    fewer or more iterations than the config's."""

    config: str
    iterations: int | None = None


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
    search: SearchOptions | None = None
    question: str | None = None  # chat: the last user turn (what a search answers)


_MISSING = object()


def _typed(body: dict, name: str, types: tuple[type, ...], default: Any = None,
           check: Callable[[Any], bool] | None = None, rule: str = "") -> Any:
    """``body[name]`` if present and not null, checked; else ``default``."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    if isinstance(value, bool) and bool not in types:  # JSON true is not a number
        raise RequestError(f"'{name}' must be {_type_names(types)}, got a boolean", name)
    if not isinstance(value, types):
        raise RequestError(f"'{name}' must be {_type_names(types)}, got "
                           f"{type(value).__name__}", name)
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"'{name}' must be a finite number", name)
    if check is not None and not check(value):
        raise RequestError(f"'{name}' {rule}, got {value!r}", name)
    return value


def _type_names(types: tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "an object"}
    return " or ".join(names[t] for t in types if not (t is int and float in types))


def _unsupported(body: dict, defaults: dict[str, Any]) -> None:
    for name, default in defaults.items():
        value = body.get(name)
        if value is not None and value != default:
            raise RequestError(f"'{name}' is not supported by this server (only {default!r})",
                               name)


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
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = _typed(body, "model", (str,))
    if model is None:
        raise RequestError("'model' is required", "model")
    _unsupported(body, {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {},
                        "echo": False, "suffix": "", "tools": [], "functions": [],
                        "response_format": {"type": "text"}})
    n = _typed(body, "n", (int,), 1, lambda v: v >= 1, "must be >= 1")
    _typed(body, "best_of", (int,), n, lambda v: v == n, "must equal n (no best_of)")
    stream_options = _typed(body, "stream_options", (dict,), {})
    return dict(
        kind=kind, model=model,
        max_tokens=_typed(body, "max_completion_tokens", (int,),
                          _typed(body, "max_tokens", (int,), None, lambda v: v >= 1,
                                 "must be >= 1"),
                          lambda v: v >= 1, "must be >= 1"),
        temperature=float(_typed(body, "temperature", (int, float), 1.0,
                                 lambda v: 0 <= v <= 2, "must be in [0, 2]")),
        top_p=float(_typed(body, "top_p", (int, float), 1.0, lambda v: 0 < v <= 1,
                           "must be in (0, 1]")),
        top_k=_typed(body, "top_k", (int,), 0, lambda v: v >= -1, "must be >= 0 (0 or -1: off)"),
        n=n, stop=_stop(body),
        seed=_typed(body, "seed", (int,), None, lambda v: 0 <= v < 2 ** 63,
                    "must be in [0, 2**63)"),
        stream=_typed(body, "stream", (bool,), False),
        include_usage=bool(_typed(stream_options, "include_usage", (bool,), False)),
    )


def _marco(body: dict) -> tuple[dict, SearchOptions | None]:
    """The ``marco`` extension and ``reasoning_effort``: (options, search)."""
    marco = _typed(body, "marco", (dict,), {})
    effort = _typed(body, "reasoning_effort", (str,), None, lambda v: v in EFFORTS,
                    f"must be one of {', '.join(EFFORTS)}")
    search = None
    config = marco.get("search")
    if config is not None:
        if not isinstance(config, str) or not config:
            raise RequestError("'marco.search' must be the name of a search config",
                               "marco.search")
        iterations = marco.get("iterations")
        if iterations is not None and (isinstance(iterations, bool)
                                       or not isinstance(iterations, int) or iterations < 1):
            raise RequestError("'marco.iterations' must be an integer >= 1", "marco.iterations")
        search = SearchOptions(config, iterations)
    elif effort is not None:
        search = SearchOptions(f"effort:{effort}")
    system = marco.get("system")
    if system is not None and system not in prompts.SYSTEM_PROMPTS:
        raise RequestError(f"'marco.system' must be one of {sorted(prompts.SYSTEM_PROMPTS)}",
                           "marco.system")
    return {"system": system}, search


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
    logprobs = _typed(body, "logprobs", (int,), None, lambda v: 0 <= v <= max_logprobs,
                      f"must be in [0, {max_logprobs}]")
    _, search = _marco(body)
    if search is not None:
        raise RequestError("a search runs on chat requests (/v1/chat/completions)", "marco")
    return GenerationRequest(prompt=prompt, logprobs=logprobs, **common)


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise RequestError(f"messages[{index}].content: only text parts are supported",
                                   f"messages[{index}].content")
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"messages[{index}].content must be a string or an array of text parts",
                       f"messages[{index}].content")


def parse_chat(body: dict, max_logprobs: int) -> GenerationRequest:
    """A ``/v1/chat/completions`` body, rendered through Qwen2's ChatML; the
    ``marco.system`` option puts Marco-o1's (or the default) system prompt first
    when the messages bring none."""
    common = _common(body, "chat")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array", "messages")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"messages[{i}] must be an object", f"messages[{i}]")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise RequestError(f"messages[{i}].role must be system, user or assistant, "
                               f"got {role!r}", f"messages[{i}].role")
        turns.append({"role": "system" if role == "developer" else role,
                      "content": _content(message, i)})
    options, search = _marco(body)
    if options["system"] is not None and turns[0]["role"] != "system":
        system = prompts.SYSTEM_PROMPTS[options["system"]]
        if system is not None:
            turns.insert(0, {"role": "system", "content": system})
    if _typed(body, "logprobs", (bool,), False):
        logprobs = _typed(body, "top_logprobs", (int,), 0, lambda v: 0 <= v <= max_logprobs,
                          f"must be in [0, {max_logprobs}]")
    else:
        if body.get("top_logprobs") is not None:
            raise RequestError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        logprobs = None
    users = [t["content"] for t in turns if t["role"] == "user"]
    if search is not None and (common["n"] != 1 or not users):
        raise RequestError("a search request needs n = 1 and a user message", "marco")
    return GenerationRequest(prompt=prompts.chatml(turns), logprobs=logprobs,
                             search=search, question=users[-1] if users else None, **common)


# ---- responses -----------------------------------------------------------------------

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
    """OpenAI's per-token log-probabilities: chat's ``content`` list, or the
    legacy completions arrays (``text_offset`` counts characters from ``offset``)."""
    if kind == "chat":
        return {"content": [{"token": t.text, "logprob": t.logprob, "bytes": list(t.data),
                             "top_logprobs": [{"token": s, "logprob": lp, "bytes": list(b)}
                                              for s, b, lp in t.top[:top]]}
                            for t in tokens], "refusal": None}
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{s: lp for s, _, lp in t.top[:top]} for t in tokens],
            "text_offset": offsets}


def choice_body(kind: str, index: int, text: str, finish: str | None,
                logprobs: dict | None, extra: dict | None = None) -> dict:
    if kind == "chat":
        message = {"role": "assistant", "content": text}
        body = {"index": index, "message": message, "logprobs": logprobs,
                "finish_reason": finish}
    else:
        body = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
    if extra:
        body.update(extra)
    return body


def response_body(kind: str, rid: str, model: str, choices: list[dict], use: dict,
                  extra: dict | None = None) -> dict:
    body = {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": choices, "usage": use}
    if extra:
        body.update(extra)
    return body


def chunk_body(kind: str, rid: str, model: str, index: int | None, text: str | None = None,
               finish: str | None = None, logprobs: dict | None = None, role: bool = False,
               use: dict | None = None, extra: dict | None = None) -> dict:
    """One streamed chunk: a choice's text delta and/or finish reason, or (``index``
    None) the final usage chunk, whose choices are empty."""
    body = {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": []}
    if index is not None:
        if kind == "chat":
            delta = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": logprobs,
                      "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs,
                      "finish_reason": finish}
        body["choices"].append(choice)
    if use is not None:
        body["usage"] = use
    if extra:
        body.update(extra)
    return body
