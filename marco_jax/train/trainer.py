"""A training run (SFT or DPO): model and data set-up on a mesh, the step loop with
checkpoints and metrics, and the final export (the compile-only memory plan is in
``memory``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import resource
import sys
import time
from typing import ContextManager

import grain
import jax
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from marco_jax import distributed, prompts, run_lock
from marco_jax import model_config as model_config
from marco_jax import tokenizer as tokenizer_lib
from marco_jax.checkpoint import orbax_io
from marco_jax.errors import MarcoError
from marco_jax.loading import checkpoint_config, checkpoint_tokenizer, load
from marco_jax.sharding import make_mesh
from marco_jax.train import attention as attention_lib
from marco_jax.train import data as data_lib
from marco_jax.train import metrics as metrics_lib
from marco_jax.train import pairs as pairs_lib
from marco_jax.train import reference as reference_lib
from marco_jax.train.checkpoint import RunCheckpoints
from marco_jax.train.config import TrainConfig
from marco_jax.train.layout import (TrainLayout, checkpoint_tensors, init_params, layout_of,
                                    stack_layers)
from marco_jax.train.objectives import Objective, objective_of
from marco_jax.train.step import StepProgram, build_step


@dataclasses.dataclass
class Setup:
    """What both a real run and a dry run need: the parameter layout, the mesh, the step."""

    layout: TrainLayout
    mesh: Mesh
    program: StepProgram
    attention: str  # the kernel the forward runs: xla, splash or cudnn
    objective: Objective
    rows: int  # batch rows of one micro-batch, over all devices

    @property
    def rows_per_device(self) -> int:
        return self.rows // (self.mesh.shape["data"] * self.mesh.shape["fsdp"])


def model_config_of(cfg: TrainConfig) -> model_config.Qwen2Config:
    model_cfg = (checkpoint_config(cfg.model.init_from) if cfg.model.init_from
                 else model_config.preset(cfg.model.preset))
    return model_cfg.replace(param_dtype=cfg.model.param_dtype,
                             compute_dtype=cfg.model.compute_dtype)


def set_up(cfg: TrainConfig, devices: list | None = None, layers: int | None = None) -> Setup:
    """Mesh, parameter shardings and the jitted step, without allocating parameters
    (``layers``: a variant of the model with that many layers, for the step-time
    estimate)."""
    devices = list(jax.devices() if devices is None else devices)
    objective = objective_of(cfg)
    attention = attention_lib.resolve(cfg.model.attention, devices[0].platform,
                                      cfg.model.compute_dtype)
    model_cfg = model_config_of(cfg)
    layout = layout_of(model_cfg if layers is None else model_cfg.replace(num_layers=layers))
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices)
    rows = cfg.train.global_batch * objective.rows_per_example // cfg.train.micro_batches
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % batch_ways:
        raise MarcoError(
            f"config {cfg.name}: {rows} rows per micro-batch (train.global_batch x "
            f"{objective.rows_per_example} / train.micro_batches) do not split over data x "
            f"fsdp = {batch_ways} devices")
    program = build_step(layout, cfg.train, mesh, cfg.model.remat, objective, attention)
    return Setup(layout, mesh, program, attention, objective, rows)


def run_tokenizer(cfg: TrainConfig):
    """The run's tokenizer: the built-in one, a directory's, or the init checkpoint's."""
    if cfg.data.tokenizer == "builtin":
        return tokenizer_lib.builtin_tokenizer()
    if cfg.data.tokenizer:
        return tokenizer_lib.load_tokenizer(cfg.data.tokenizer)
    if cfg.model.init_from:
        return checkpoint_tokenizer(cfg.model.init_from)
    raise MarcoError(f"config {cfg.name}: set data.tokenizer (or model.init_from)")


def _initial_params(cfg: TrainConfig, setup: Setup) -> dict:
    """Fine-tuning starts from ``init_from``; otherwise a random init made directly
    in its shards (a 7B model is never materialised on one device)."""
    shardings = setup.program.state_shardings.params
    if cfg.model.init_from:
        loaded = load(cfg.model.init_from, param_dtype=cfg.model.param_dtype,
                      compute_dtype=cfg.model.compute_dtype, mesh=setup.mesh,
                      with_tokenizer=False)
        return jax.jit(stack_layers, out_shardings=shardings)(
            nnx.to_pure_dict(nnx.state(loaded.model)))
    return jax.jit(lambda: init_params(setup.layout, cfg.train.seed), out_shardings=shardings)()


def sft_batches(cfg: TrainConfig, tokenizer) -> grain.IterDataset:
    """This process's batches of the configured data; what was cut goes to the log."""
    path = epath.Path(cfg.data.path)
    records, skipped = data_lib.read_records(path, cfg.data.on_bad_record)
    system = prompts.SYSTEM_PROMPTS[cfg.data.system]
    examples = [data_lib.tokenize_record(r, tokenizer, system)
                for r in tqdm(records, desc="tokenizing", unit="record", leave=False,
                              disable=jax.process_index() != 0)]
    rows = cfg.train.global_batch // jax.process_count()
    batches, counts = data_lib.make_dataset(
        examples, seq_len=cfg.data.seq_len, batch_size=rows, seed=cfg.data.shuffle_seed,
        num_epochs=cfg.data.num_epochs, process_index=jax.process_index(),
        process_count=jax.process_count(), overlong=cfg.data.overlong, pack=cfg.data.pack)
    print(f"data: {path}: {counts.examples} examples ({counts.truncated} truncated, "
          f"{counts.dropped} dropped as longer than {cfg.data.seq_len + 1} tokens, "
          f"{skipped} bad records skipped)", file=sys.stderr)
    return batches


def dpo_batches(cfg: TrainConfig, setup: Setup, tokenizer, params: dict | None,
                progress: bool = True) -> tuple[grain.IterDataset, dict | None]:
    """This process's batches of preference pairs, and the live reference's weights
    (None when the reference log-probs are precomputed: they ride in the batches)."""
    path = epath.Path(cfg.data.path)
    records, skipped = data_lib.read_records(path, cfg.data.on_bad_record, pairs_lib.pair_problem)
    system = prompts.SYSTEM_PROMPTS[cfg.data.system]
    examples, counts = pairs_lib.pair_examples(records, tokenizer, system, cfg.data.seq_len,
                                               cfg.data.overlong)
    print(f"data: {path}: {counts.examples} pairs ({counts.truncated} truncated, "
          f"{counts.dropped} dropped, {skipped} bad records skipped)", file=sys.stderr)
    live, logps = None, None
    if cfg.dpo.reference == "live":
        live = _initial_params(cfg, setup)
    else:
        logps = _precomputed_reference(cfg, setup, path, examples, params, progress)
    batches = pairs_lib.make_pair_dataset(
        examples, logps, pairs_per_batch=cfg.train.global_batch // jax.process_count(),
        seed=cfg.data.shuffle_seed, num_epochs=cfg.data.num_epochs,
        process_index=jax.process_index(), process_count=jax.process_count())
    return batches, live


def _precomputed_reference(cfg: TrainConfig, setup: Setup, path: epath.Path, examples: list,
                           params: dict | None, progress: bool) -> np.ndarray:
    """(pairs, 2) reference log-probs: the reference file's when it matches this run, else
    computed from ``params`` (the initial weights; loaded anew when None, as on a resume)
    and written to it."""
    ref_path = epath.Path(cfg.dpo.reference_logps
                          or epath.Path(cfg.output_dir) / "reference_logps.jsonl")
    header = {"pairs": str(path), "pairs_sha256": reference_lib.file_sha256(path),
              "reference": cfg.model.init_from or f"random init, seed {cfg.train.seed}",
              "param_dtype": cfg.model.param_dtype, "compute_dtype": cfg.model.compute_dtype,
              "seq_len": cfg.data.seq_len, "system": cfg.data.system,
              "overlong": cfg.data.overlong, "mask_shared_prefix": cfg.dpo.mask_shared_prefix}
    ids = [e["id"] for e in examples]
    if params is not None:  # a fresh run checks the weights; a resumed one made the file
        header["reference_weights"] = reference_lib.weights_fingerprint(params)
    logps = reference_lib.read_reference(ref_path, header, ids)
    if logps is not None:
        return logps
    if params is None:
        params = _initial_params(cfg, setup)
        header["reference_weights"] = reference_lib.weights_fingerprint(params)
    program = setup.program
    logps = reference_lib.compute_reference(
        examples, cfg.train.global_batch // cfg.train.micro_batches,
        lambda b: _global_batch(b, program), lambda b: program.reference_logps(params, b),
        progress)
    if jax.process_index() == 0:
        reference_lib.write_reference(ref_path, header, ids, logps)
    return logps


def _global_batch(local: dict[str, np.ndarray], program: StepProgram,
                  micro_batches: int = 1) -> dict[str, jax.Array]:
    """This process's rows of the step's fields -> (micro_batches, rows, ...) arrays over
    the mesh."""
    return {k: jax.make_array_from_process_local_data(
        program.batch_shardings[k], v.reshape(micro_batches, -1, *v.shape[1:]))
        for k, v in local.items() if k in program.batch_shardings}


def export(params: dict, model_cfg: model_config.Qwen2Config, tokenizer,
           directory: epath.Path) -> None:
    """Write the trained weights as a model checkpoint (``scripts/convert.py orbax-to-hf``
    makes safetensors of it): every process saves its shards, process 0 the tokenizer."""
    orbax_io.save(directory, model_cfg, checkpoint_tensors(params))
    if jax.process_index() == 0:
        tokenizer.save_pretrained(str(directory))


def run_locked(out: epath.Path) -> ContextManager[None]:
    """The run directory's lock (``run.lock`` in it): one per run, so process 0 alone
    holds it, and the others wait for it at a meeting. A bucket has no locks: a remote
    directory is not locked."""
    if jax.process_index() != 0 or "://" in str(out):
        return contextlib.nullcontext()
    return run_lock.held(pathlib.Path(str(out)) / "run.lock", f"output_dir {out}")


def train(cfg: TrainConfig, resume: bool = False, peak_tflops: float | None = None,
          progress: bool = True) -> list[dict]:
    """Train ``cfg.train.steps`` steps (from the latest checkpoint with ``resume``), one
    run at a time in ``output_dir``; returns the logged metrics of this process's steps.
    Run it inside :func:`distributed.failures_reported`, so that the other processes
    stop when process 0 finds the directory in use."""
    out = epath.Path(cfg.output_dir)
    with run_locked(out):
        distributed.meet("output_dir locked")
        return _train(cfg, out, resume, peak_tflops, progress)


def _train(cfg: TrainConfig, out: epath.Path, resume: bool, peak_tflops: float | None,
           progress: bool) -> list[dict]:
    checkpoints_dir = out / "checkpoints"
    if not resume and checkpoints_dir.exists() and any(checkpoints_dir.iterdir()):
        raise MarcoError(f"{checkpoints_dir} already holds checkpoints: pass --resume to "
                         "continue that run, or choose another output_dir")
    setup = set_up(cfg)
    tokenizer = run_tokenizer(cfg)
    checkpoints = RunCheckpoints(checkpoints_dir, cfg.checkpoint.every, cfg.checkpoint.keep,
                                 cfg.checkpoint.async_save, cfg.checkpoint.compress)
    program = setup.program
    start = checkpoints.latest_step() if resume else None
    params = _initial_params(cfg, setup) if start is None else None
    batches, live_reference = (dpo_batches(cfg, setup, tokenizer, params, progress)
                               if cfg.objective == "dpo" else (sft_batches(cfg, tokenizer), None))
    data_iter = iter(batches)
    if start is None:
        state = program.init(params)  # donated: the step's state is the only copy
        del params
        start = 0
    else:
        state = checkpoints.restore(start, program.abstract_state, data_iter)
        print(f"resumed from step {start} of {checkpoints_dir}", file=sys.stderr)
    lead = jax.process_index() == 0
    log = metrics_lib.MetricsLog(out, enabled=lead, start=start)  # makes ``out``
    if lead:  # the resolved config, for reproducibility
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    flops = metrics_lib.flops_per_token(setup.layout.cfg, cfg.data.seq_len)
    peak = metrics_lib.peak_flops(peak_tflops)
    logged: list[dict] = []
    tokens_seen, last = 0, time.perf_counter()
    bar = tqdm(range(start, cfg.train.steps), initial=start, total=cfg.train.steps,
               desc="train", unit="step", disable=not (progress and lead))
    for step in bar:
        batch = next(data_iter)
        tokens_seen += int((batch["segment_ids"] > 0).sum()) * jax.process_count()
        global_batch = _global_batch(batch, program, cfg.train.micro_batches)
        if live_reference is not None:
            global_batch["reference_logps"] = program.reference_logps(live_reference,
                                                                      global_batch)
        state, step_metrics = program.step(state, global_batch)
        done = step + 1
        if done % cfg.train.log_every == 0 or done == cfg.train.steps:
            values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
            seconds = time.perf_counter() - last
            rate = tokens_seen / seconds
            values.update(tokens_per_s=rate, mfu=None if peak is None else rate * flops / peak,
                          step_seconds=seconds / cfg.train.log_every,
                          host_peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                          / 2**20)
            log.write(done, values)
            logged.append({"step": done, **values})
            bar.set_postfix(loss=f"{values['loss']:.4f}", tok_s=f"{rate:.0f}")
            tokens_seen, last = 0, time.perf_counter()
        checkpoints.save(done, state, data_iter, force=done == cfg.train.steps)
    checkpoints.close()
    log.close()
    final = out / "final"
    if not final.exists():  # written aside and renamed, so it is complete when it exists
        staging = out / "final.partial"
        if lead and staging.exists():
            staging.rmtree()
        multihost_utils.sync_global_devices("export")
        export(state.params, setup.layout.cfg, tokenizer, staging)
        multihost_utils.sync_global_devices("exported")
        if lead:
            staging.rename(final)
    return logged
