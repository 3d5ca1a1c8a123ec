"""Running a search job: problems streamed through one Searcher over the engines,
each finished problem appended to the output (and its tree written) at once."""

from __future__ import annotations

import json
import pathlib
import time
import zlib

from jax.sharding import Mesh
from tqdm import tqdm

from marco_jax import prompts as prompt_lib
from marco_jax.grading import answers_match, final_answer, majority_answer
from marco_jax.engine.engine import EngineConfig
from marco_jax.engine.options import build_engine
from marco_jax.errors import MarcoError
from marco_jax.files import lines
from marco_jax.loading import LoadedModel
from marco_jax.search import job as job_lib
from marco_jax.search.config import JobConfig
from marco_jax.search.mcts import MCTS
from marco_jax.search.record import TreeRecord
from marco_jax.search.results import Problem, SearchResult
from marco_jax.search.searcher import Algorithm, Searcher
from marco_jax.search.tagged import TaggedMCTS
from marco_jax.grading import verifier


def wrap(template: str, question: str) -> str:
    if template == "marco":
        return prompt_lib.marco_prompt(question)
    if template == "chat":
        return prompt_lib.chat_prompt(question)
    return question


def record(problem: dict, result: SearchResult, job: JobConfig, decode) -> dict:
    text, reward = job_lib.choose(result, job.final, decode)
    chosen = final_answer(text)
    gold = problem["answer"]
    answers = list(job_lib.candidate_answers(result, decode))
    tree = result.tree
    if gold is None:
        correct = test_at_n = status = None
    elif job.search.verifier == "numeric":
        correct = answers_match(chosen, gold)
        test_at_n = any(answers_match(a, gold) for a in answers)
    else:
        correct = verifier(job.search.verifier)(text, gold)
        test_at_n = any(c.correct for c in result.candidates)
    if gold is not None:
        status = "solved" if result.correct else "unsolved"
    return {
        "id": problem["id"], "question": problem["question"], "answer": gold,
        "chosen_answer": chosen, "correct": correct, "test_at_n": test_at_n,
        "n": len(answers), "reward": reward, "text": text, "candidate_answers": answers,
        "candidate_tokens": [len(c.tokens) for c in result.candidates],
        "candidate_correct": [c.correct for c in result.candidates],
        "generated_tokens": result.generated_tokens, "config": job.name,
        "status": status, "rollouts": result.rollouts, "correct_answers": result.correct,
        "stopped_early": result.stopped_early,
        "tree": {"nodes": tree.size, "max_depth": int(tree.depth_n[:tree.size].max()),
                 "root_visits": int(tree.visits_n[0])},
    }


def make_algorithm(job: JobConfig, tokenizer, max_model_len: int) -> Algorithm:
    """The job's search algorithm: v2's tagged tree or v1's MCTS."""
    if job.action_tree is not None:
        return TaggedMCTS(tokenizer, job.search, job.action_tree, max_model_len)
    return MCTS(tokenizer, job.search, max_model_len)


def question_text(job: JobConfig, question: str) -> str:
    """The user turn: an action tree's instruction goes before the question."""
    return (job.action_tree.instruction if job.action_tree else "") + question


def run_job(loaded: LoadedModel, job: JobConfig, todo: list[dict], output: pathlib.Path,
            tree_dir: pathlib.Path | None = None, engine_config: EngineConfig = EngineConfig(),
            mesh: Mesh | None = None, max_trees: int | None = None,
            checker: LoadedModel | None = None) -> dict:
    """Search ``todo`` through the engines, appending each problem's line to
    ``output`` (and writing its tree) as soon as its tree finishes; returns the
    run's figures (seconds, requests, engine statistics). ``checker`` serves the
    node types an action tree assigns to a second model."""
    tokenizer = loaded.tokenizer
    engines = {"policy": loaded}
    if checker is not None:
        if checker.cfg.vocab_size != loaded.cfg.vocab_size or \
                checker.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise MarcoError("the checker model must share the policy's tokenizer: contexts "
                             "are token ids")
        engines["checker"] = checker
    engines = {name: build_engine(m, engine_config, mesh, job.stops)
               for name, m in engines.items()}
    max_model_len = min(e.config.max_model_len for e in engines.values())
    searcher = Searcher(make_algorithm(job, tokenizer, max_model_len), engines, max_trees)
    eos = set(loaded.eos_ids)

    def decode(tokens: list[int]) -> str:
        return tokenizer.decode([t for t in tokens if t not in eos])

    output.parent.mkdir(parents=True, exist_ok=True)
    if tree_dir:
        tree_dir.mkdir(parents=True, exist_ok=True)
    def encode(question: str) -> list[int]:
        text = wrap(job.template, question_text(job, question))
        return tokenizer.encode(text, add_special_tokens=False)

    problems = (Problem(p["id"], encode(p["question"]), zlib.crc32(p["id"].encode()),
                        p.get("answer")) for p in todo)
    by_id = {p["id"]: p for p in todo}
    start = time.perf_counter()
    solved = tokens = 0
    with tqdm(total=len(todo), desc=f"search {job.name}", unit="problem") as bar:
        for problem_id, result in searcher.stream(problems):
            problem = by_id[problem_id]
            line = record(problem, result, job, decode)
            job_lib.append_line(output, line)
            if tree_dir:
                TreeRecord.of(result.tree, decode, problem["id"], problem["question"],
                              problem["answer"], line["chosen_answer"], result.best_path,
                              ).write(tree_dir / f"{problem_id}.json")
            solved += line["status"] == "solved"
            tokens += result.generated_tokens
            bar.update(1)
            bar.set_postfix(solved=f"{solved / bar.n:.2f}",
                            tok_s=f"{tokens / (time.perf_counter() - start):.0f}",
                            slots=f"{searcher.stats()['slot_utilisation']:.2f}")
    return {"seconds": time.perf_counter() - start, **searcher.stats()}


def summarize(output: pathlib.Path, ids: set[str] | None = None,
              test_at: tuple[int, ...] = (1, 8, 32)) -> dict:
    """pass@1 (the answer the config's final rule chose), Test@N over all N
    rollouts, vote@N (their majority answer, whatever the final rule), and Test@k
    over the first k rollouts in generation order for each k < N."""
    records = [json.loads(line) for line in lines(output.read_text(encoding="utf-8"))
               if line.strip()]
    chosen = [r for r in records if ids is None or r["id"] in ids]
    graded = [r for r in chosen if r["correct"] is not None]
    count = max(len(graded), 1)
    n = max((l["n"] for l in graded), default=0)
    summary = {"problems": len(graded),
               "pass@1": sum(l["correct"] for l in graded) / count,
               f"test@{n}": sum(l["test_at_n"] for l in graded) / count}
    summary[f"vote@{n}"] = sum(answers_match(majority_answer(l["candidate_answers"]), l["answer"])
                               for l in graded) / count
    for k in (k for k in test_at if k < n):
        summary[f"test@{k}"] = sum(
            any(answers_match(a, l["answer"]) for a in l["candidate_answers"][:k])
            for l in graded) / count
    summary["generated_tokens"] = sum(r["generated_tokens"] for r in chosen)
    return summary
