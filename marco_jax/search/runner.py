"""Running a search job: problems streamed through one Searcher over the engines,
each finished problem's tree and output line appended at once."""

from __future__ import annotations

import pathlib
import time
import zlib
from typing import Any, Callable, Iterator

from jax.sharding import Mesh
from tqdm import tqdm

from marco_jax.engine.engine import EngineConfig
from marco_jax.engine.options import build_engine
from marco_jax.errors import MarcoError
from marco_jax.grading import verifier
from marco_jax.loading import LoadedModel
from marco_jax.prompts import render
from marco_jax.search import job_files
from marco_jax.search.config import JobConfig
from marco_jax.search.record import TreeRecord
from marco_jax.search.results import Problem, SearchResult
from marco_jax.search.mcts import MCTS
from marco_jax.search.searcher import Algorithm, Searcher
from marco_jax.search.tagged import TaggedMCTS
from marco_jax.search.tree import Tree


def make_algorithm(job: JobConfig, tokenizer: Any, max_model_len: int) -> Algorithm:
    """The job's search algorithm: v2's tagged tree or v1's MCTS."""
    if job.action_tree is not None:
        return TaggedMCTS(tokenizer, job.search, job.action_tree, max_model_len)
    return MCTS(tokenizer, job.search, max_model_len)


class JobRun:
    """A search job's problems streamed through one Searcher over the engines: each
    finished problem with its output line (and, on request, its tree's record), as
    each finishes. ``checker`` serves the node types an action tree assigns to a
    second model."""

    def __init__(self, loaded: LoadedModel, job: JobConfig,
                 engine_config: EngineConfig = EngineConfig(), mesh: Mesh | None = None,
                 max_trees: int | None = None, checker: LoadedModel | None = None):
        self.loaded, self.job = loaded, job
        self.tokenizer = tokenizer = loaded.tokenizer
        models = {"policy": loaded}
        if checker is not None:
            if checker.cfg.vocab_size != loaded.cfg.vocab_size or \
                    checker.tokenizer.get_vocab() != tokenizer.get_vocab():
                raise MarcoError("the checker model must share the policy's tokenizer: "
                                 "contexts are token ids")
            models["checker"] = checker
        algorithm = make_algorithm(job, tokenizer, engine_config.max_model_len)
        self.searcher = Searcher(algorithm, {name: build_engine(m, engine_config, mesh, job.stops)
                                             for name, m in models.items()}, max_trees)
        self.verify = verifier(job.search.verifier)
        self.eos = set(loaded.eos_ids)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t not in self.eos])

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def stream(self, todo: list[dict], on_grow: Callable[[Any, Tree], None] | None = None,
               ) -> Iterator[tuple[dict, SearchResult, dict]]:
        """(problem, result, output line) of each problem of ``todo`` as it finishes;
        ``on_grow(id, tree)`` sees each tree as it grows."""
        job = self.job
        problems = (Problem(p["id"], self.tokenizer.encode(
                                render(job.template, job.instruction + p["question"]),
                                add_special_tokens=False),
                            zlib.crc32(p["id"].encode()), p.get("answer")) for p in todo)
        by_id = {p["id"]: p for p in todo}
        for problem_id, result in self.searcher.stream(problems, on_grow=on_grow):
            problem = by_id[problem_id]
            yield problem, result, job_files.result_line(problem, result, job, self.decode,
                                                         self.verify)

    def record(self, problem: dict, result: SearchResult, line: dict,
               tree_tokens: bool = False) -> TreeRecord:
        """The problem's tree as a record (with each node's token scores if asked)."""
        return TreeRecord.of(result.tree, self.decode, problem["id"], problem["question"],
                             problem["answer"], line["chosen_answer"], result.best_path,
                             self.token_text if tree_tokens else None)


def run_job(loaded: LoadedModel, job: JobConfig, todo: list[dict], output: pathlib.Path,
            trees: pathlib.Path | None = None, engine_config: EngineConfig = EngineConfig(),
            mesh: Mesh | None = None, max_trees: int | None = None,
            checker: LoadedModel | None = None, tree_tokens: bool = False) -> dict:
    """Search ``todo`` (:class:`JobRun`), appending each problem's line to ``output``
    (and its tree to ``trees``, with each node's token scores if ``tree_tokens``) as
    soon as it finishes; returns the run's figures (seconds, requests, engine
    statistics)."""
    run = JobRun(loaded, job, engine_config, mesh, max_trees, checker)
    output.parent.mkdir(parents=True, exist_ok=True)
    if trees:
        trees.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    solved = tokens = 0
    with tqdm(total=len(todo), desc=f"search {job.name}", unit="problem") as bar:
        for problem, result, line in run.stream(todo):
            if trees:
                job_files.append_line(trees, run.record(problem, result, line,
                                                        tree_tokens).to_json())
            job_files.append_line(output, line)
            solved += line["status"] == "solved"
            tokens += result.generated_tokens
            bar.update(1)
            bar.set_postfix(solved=f"{solved / bar.n:.2f}",
                            tok_s=f"{tokens / (time.perf_counter() - start):.0f}",
                            slots=f"{run.searcher.stats()['slot_utilisation']:.2f}")
    return {"seconds": time.perf_counter() - start, **run.searcher.stats()}
