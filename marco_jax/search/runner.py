"""Running a search job: problems streamed through one Search on one engine,
each finished problem appended to the output (and its tree written) at once."""

from __future__ import annotations

import json
import pathlib
import time
import zlib

from jax.sharding import Mesh
from tqdm import tqdm

from marco_jax import prompts as prompt_lib
from marco_jax import stops
from marco_jax.files import lines
from marco_jax.engine.engine import Engine, EngineConfig
from marco_jax.answers import answers_match, extract_answer, majority_answer
from marco_jax.loading import LoadedModel
from marco_jax.search import job as job_lib
from marco_jax.search.config import JobConfig
from marco_jax.search.mcts import Search, SearchResult
from marco_jax.search.tree import FINISHES, KINDS


def wrap(template: str, question: str) -> str:
    if template == "marco":
        return prompt_lib.marco_prompt(question)
    if template == "chat":
        return prompt_lib.chat_prompt(question)
    return question


def tree_json(problem: dict, result: SearchResult, decode, chosen: str | None) -> dict:
    tree = result.tree
    nodes = []
    for n in range(tree.size):
        value = tree.mean_value(n)
        rollout_value = float(tree.rollout_value_n[n])
        nodes.append({"id": n, "parent": int(tree.parent_n[n]), "text": decode(tree.tokens[n]),
                      "visits": int(tree.visits_n[n]), "value": None if value != value else value,
                      "depth": int(tree.depth_n[n]), "terminal": bool(tree.terminal_n[n]),
                      "kind": KINDS[tree.kind_n[n]], "finish": FINISHES[tree.finish_n[n]],
                      "rollout_text": decode(tree.rollouts[n]),
                      "rollout_value": None if rollout_value != rollout_value else rollout_value})
    return {"id": problem["id"], "question": problem["question"], "answer": problem["answer"],
            "chosen_answer": chosen, "nodes": nodes, "best_path": result.best_path}


def record(problem: dict, result: SearchResult, job: JobConfig, decode) -> dict:
    text, reward = job_lib.choose(result, job.final, decode)
    chosen = extract_answer(text)
    gold = problem["answer"]
    answers = list(job_lib.candidate_answers(result, decode))
    tree = result.tree
    return {
        "id": problem["id"], "question": problem["question"], "answer": gold,
        "chosen_answer": chosen, "correct": None if gold is None else answers_match(chosen, gold),
        "test_at_n": None if gold is None else any(answers_match(a, gold) for a in answers),
        "n": len(answers), "reward": reward, "text": text, "candidate_answers": answers,
        "generated_tokens": result.generated_tokens, "config": job.name,
        "tree": {"nodes": tree.size, "max_depth": int(tree.depth_n[:tree.size].max()),
                 "root_visits": int(tree.visits_n[0])},
    }


def run_job(loaded: LoadedModel, job: JobConfig, todo: list[dict], output: pathlib.Path,
            tree_dir: pathlib.Path | None = None, engine_config: EngineConfig = EngineConfig(),
            mesh: Mesh | None = None, max_trees: int | None = None) -> Search:
    """Search ``todo`` through one engine, appending each problem's line to
    ``output`` (and writing its tree) as soon as its tree finishes."""
    tokenizer = loaded.tokenizer
    table = stops.build_stop_table(tokenizer, job.stop, loaded.cfg.vocab_size)
    engine = Engine(loaded.model, loaded.eos_ids, engine_config, stop_table=table, mesh=mesh)
    search = Search(engine, tokenizer, job.search, max_trees)
    eos = set(loaded.eos_ids)

    def decode(tokens: list[int]) -> str:
        return tokenizer.decode([t for t in tokens if t not in eos])

    output.parent.mkdir(parents=True, exist_ok=True)
    if tree_dir:
        tree_dir.mkdir(parents=True, exist_ok=True)
    problems = ((p["id"], tokenizer.encode(wrap(job.template, p["question"]),
                                           add_special_tokens=False), zlib.crc32(p["id"].encode()))
                for p in todo)
    by_id = {p["id"]: p for p in todo}
    start = time.perf_counter()
    with tqdm(total=len(todo), desc=f"search {job.name}", unit="problem") as bar:
        for problem_id, result in search.stream(problems):
            problem = by_id[problem_id]
            line = record(problem, result, job, decode)
            job_lib.append_line(output, line)
            if tree_dir:
                tree = tree_json(problem, result, decode, line["chosen_answer"])
                (tree_dir / f"{problem_id}.json").write_text(
                    json.dumps(tree, ensure_ascii=False), encoding="utf-8")
            bar.update(1)
            bar.set_postfix(slots=f"{engine.stats.utilisation:.2f}")
    search.seconds = time.perf_counter() - start
    return search


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
