"""Training: a loader, a plan per batch, a short step; checkpoints each epoch, resume, DDP.

One batch's way: :class:`mixshare.loader.MimoLoader` yields ``images [M, R, C, H, W]``
and ``labels [M, R]`` on the device; the run's mixer (:mod:`mixshare.mixers`) draws
its :class:`~mixshare.methods.MixPlan`; :func:`training_step` runs the model
(``box_mix``, the core, ``cutmix_unmix_pool`` for MixShare, the heads), the
weighted loss, backward and the optimiser step, with no host sync.

``train(config, out_dir)`` writes ``config.json``, ``checkpoint.pt`` (each
epoch, atomically), ``history.csv`` (and the same scalars under
``tensorboard/`` when the ``tensorboard`` package is installed),
``metrics.json`` and the plots, holding the folder's lock meanwhile. A folder
that holds a run already is refused unless ``resume=True`` (continue it, after
comparing its config: :func:`mixshare.config.check_resume`) or
``overwrite=True`` (remove the run's files first); on CPU a resumed run ends
with the same weights as an uninterrupted one. Under ``torchrun`` it trains
with DistributedDataParallel (NCCL on GPU, gloo on CPU); rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from typing import Optional

import torch
import torch.distributed as dist

import mixshare_ops
from mixshare import data, mixers
from mixshare import files
from mixshare.config import Config, apply, check_resume, validate
from mixshare.evaluate import evaluate_model, final_report, history_metrics
from mixshare.files import CHECKPOINT, ScalarLog, atomic_write_text, load_checkpoint, load_weights, \
    output_folder, save_checkpoint, write_history
from mixshare.loader import MimoLoader
from mixshare.methods import MixPlan
from mixshare.models import model_from_config
from mixshare.optim import make_optimizer, make_scheduler
from mixshare.runtime import bf16_autocast, gpu_only, launch_rank, resolve_device, setup_distributed
from mixshare.seeds import stream_seed


class TrainingDiverged(RuntimeError):
    """The training loss or the test NLL became NaN (the loss also infinite); the last good checkpoint is kept."""


class RunExists(ValueError):
    """The output folder holds a run, and neither resume nor overwrite was asked for."""


class RunInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C); ``str()`` says which checkpoint is kept."""


# ----------------------------------------------------------------- a step


def mimo_loss(logits: torch.Tensor, labels: torch.Tensor, weights) -> torch.Tensor:
    """Sum over subnetworks of the per-sample-weighted cross-entropy.

    logits [M, R, K] (floating), labels [M, R] (integer class indices in [0, K): there is no
    ignore index), weights [R, M] or a :class:`~mixshare.methods.MixPlan` (its ``loss_weights``:
    MixMo's reweighting with root r, or the plain mixing ratios) -> scalar. The label range is
    checked on CPU, and on CUDA while ``mixshare_ops.value_checks_enabled()`` (a host sync;
    ``training_step`` turns it off, and a label out of range then fails in the gather).
    """
    if isinstance(weights, MixPlan):
        weights.check_unchanged()
        weights = weights.loss_weights
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or not logits.is_floating_point():
        got = f"{tuple(logits.shape)} {logits.dtype}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a floating [M, R, K] tensor, got {got}")
    m, r, k = logits.shape
    if not isinstance(labels, torch.Tensor) or labels.dtype not in _LABEL_DTYPES:
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"labels must be an integer tensor of class indices, got {got}")
    if labels.shape != (m, r):
        raise ValueError(f"labels must have shape [M, R] = [{m}, {r}] (from logits), got {tuple(labels.shape)}")
    if not isinstance(weights, torch.Tensor) or not weights.is_floating_point() or weights.shape != (r, m):
        got = f"{tuple(weights.shape)} {weights.dtype}" if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a floating [R, M] = [{r}, {m}] tensor (from logits) or a MixPlan, got {got}")
    for name, t in (("labels", labels), ("weights", weights)):
        if t.device != logits.device:
            raise ValueError(f"{name} must be on the device of logits ({logits.device}), got {t.device}")
    if labels.numel() and (labels.device.type == "cpu" or mixshare_ops.value_checks_enabled()):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= k:
            raise ValueError(f"labels must be class indices in [0, K) = [0, {k}), got values in [{low}, {high}]; "
                             f"mimo_loss has no ignore index (such as cross_entropy's -100)")
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    ce = -log_probs.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)  # [M, R]
    return (ce * weights.t()).mean(dim=1).sum()


_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def training_step(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    plan: MixPlan,
    optimizer: torch.optim.Optimizer,
    *,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on images [M, R, C, H, W] and labels [M, R], mixed by ``plan``.

    ``bf16``: forward under bfloat16 autocast (on CUDA only). Returns the loss (scalar)
    and the logits [M, R, K], detached. No host synchronisation: the plan's boxes
    are valid by construction, so the ops' value checks (a sync each on CUDA) are off.
    """
    with mixshare_ops.value_checks(False):
        with bf16_autocast(bf16, images.device):
            logits = model(images, plan)
        loss = mimo_loss(logits, labels, plan)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


# ---------------------------------------------------------------- training


def train(config: Config, out_dir: str, resume: bool = False, stop_after_epoch: Optional[int] = None, *,
          overwrite: bool = False, allow_change=()) -> dict:
    """Trains, evaluates and analyses; returns the final metrics.

    ``resume``: continue the run in ``out_dir`` from its checkpoint, refused when its config differs
    from ``config`` on a key that defines the experiment, but those named in ``allow_change``
    (:func:`mixshare.config.check_resume`); without a checkpoint it says so on stderr and starts a new
    run. ``overwrite``: remove the run files already in ``out_dir`` (:data:`mixshare.files.RUN_FILES`,
    nothing else) and start anew. Without either, a folder holding a run raises :class:`RunExists`.
    ``stop_after_epoch`` ends the run early after that epoch (as if killed), leaving a checkpoint to
    resume from. A run that fails before writing anything leaves no output folder behind (see
    :func:`mixshare.files.output_folder`). Ctrl-C raises :class:`RunInterrupted`.
    """
    validate(config)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run, or replace it")
    if allow_change and not resume:
        raise ValueError(f"allow_change ({' '.join(allow_change)}) applies to a resumed run: pass --resume")
    device = resolve_device(config.device)
    main = launch_rank() == 0
    with output_folder(out_dir, lock=main), contextlib.closing(ScalarLog(out_dir)) as scalars:
        try:
            return _train(config, out_dir, device, stop_after_epoch, scalars, resume=resume, overwrite=overwrite,
                          allow_change=allow_change, main=main)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:  # while the run was set up: nothing written yet
            kept = "the checkpoint is as it was" if os.path.isfile(os.path.join(out_dir, CHECKPOINT)) else \
                "nothing was written"
            raise RunInterrupted(f"interrupted before training started; {kept}") from None


def _previous_run(config: Config, out_dir: str, resume: bool, overwrite: bool, allow_change, main: bool):
    """The checkpoint state to resume from (on the CPU), or None for a new run; see :func:`train`."""
    ckpt_path = os.path.join(out_dir, CHECKPOINT)
    records = files.run_records(out_dir)
    if resume and os.path.isfile(ckpt_path):
        state = load_checkpoint(ckpt_path)
        check_resume(apply(Config(), state["config"], ckpt_path), config, allow_change, ckpt_path)
        if int(state["epoch"]) > config.epochs:
            raise ValueError(f"{ckpt_path} is at epoch {int(state['epoch'])}, past epochs = {config.epochs}: "
                             f"a resumed run cannot end before its checkpoint")
        return state
    if records and not overwrite:
        finished = files.METRICS in records
        raise RunExists(
            f"{out_dir} holds {'a finished' if finished else 'an unfinished'} run ({', '.join(records)})"
            + ("" if not resume else " but no checkpoint to resume")
            + "; pass --overwrite to replace it" + ("" if resume else ", --resume to continue it")
            + ", or choose another --out")
    if resume and main:
        print(f"mixshare: no checkpoint in {out_dir} to resume: starting a new run", file=sys.stderr, flush=True)
    if records and main:
        files.remove_run(out_dir)
    return None


def _kept(ckpt_path: str, saved_epoch: int, what: str = "checkpoint") -> str:
    """What a stopped run leaves to resume from."""
    if saved_epoch:
        return f"the {what} of epoch {saved_epoch} is kept at {ckpt_path}"
    return "no checkpoint was written yet"


def _train(config: Config, out_dir: str, device: torch.device, stop_after_epoch: Optional[int], scalars: ScalarLog, *,
           resume: bool, overwrite: bool, allow_change, main: bool) -> dict:
    # The folder's run, checked before the data is loaded; the state is dropped once used.
    state = _previous_run(config, out_dir, resume, overwrite, allow_change, main)
    ddp, device = setup_distributed(device)
    on_gpu = device.type == "cuda"
    ckpt_path = os.path.join(out_dir, CHECKPOINT)

    torch.manual_seed(config.seed)
    dataset = data.load_data(config).to(device)
    model = model_from_config(config, dataset.num_classes).to(device)
    channels_last = gpu_only(config.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if config.compile:  # the heavy part; the mixing ops are fused already
        model.compile_core()
    net = model
    if ddp.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if on_gpu else None)

    loader = MimoLoader(
        dataset, config.batch_size, config.num_subnets, config.batch_repetition, config.input_repetition,
        seed=config.seed, channels_last=channels_last, rank=ddp.rank, world_size=ddp.world_size,
    )
    steps = len(loader)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, steps, dataset.num_train)
    # The plans' draws: per sample on the loader's sample generator, per batch on the host.
    host_rng = random.Random(stream_seed(config.seed, "plans", ddp.rank))
    mixer = mixers.from_config(config, model, generator=loader.sample_generator, host_rng=host_rng)
    model.mixing_grid(tuple(dataset.train_images.shape[-2:]))  # refuses, before training, images it cannot mix
    history: list[dict] = []
    start_epoch = 0

    if state is not None:
        load_weights(model, state["model"], ckpt_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # Checkpoints from before the loader kept its generators under these names.
        loader.load_state_dict(state["loader"] if "loader" in state
                               else {"order": state["batch_gen"], "samples": state["mix_gen"]})
        host_rng.setstate(_tuplify(state["host_rng"]))
        torch.set_rng_state(state["torch_rng"].cpu())  # a model's own randomness (the ViTs' stochastic depth)
        if on_gpu and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        state = None  # the weights now live in the model and optimiser
    if ddp.main:
        atomic_write_text(os.path.join(out_dir, files.RUN_CONFIG), json.dumps(config.to_dict(), indent=2) + "\n")

    saved_epoch = start_epoch
    scalars.purge_step = start_epoch + 1 if start_epoch else None  # a resumed run replaces later events
    try:
        for epoch in range(start_epoch, config.epochs):
            net.train()
            started = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            seen = 0
            batches = _progress(loader, steps, f"epoch {epoch + 1}/{config.epochs}", config.progress and ddp.main)
            for images, labels in batches:
                plan = mixer(images, epoch)
                loss, logits = training_step(net, images, labels, plan, optimizer, bf16=config.bf16)
                lr = optimizer.param_groups[0]["lr"]  # the lr this step trained at
                scheduler.step()
                loss_sum += loss
                correct += (logits.argmax(-1) == labels).sum()
                seen += labels.numel()
            # One sync per epoch.
            stats = torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)])
            if ddp.enabled:
                dist.all_reduce(stats)
            loss_total, correct_total, seen_total = stats.tolist()
            train_loss = loss_total / (steps * ddp.world_size)
            if not math.isfinite(train_loss):
                raise TrainingDiverged(
                    f"training loss became {train_loss} in epoch {epoch + 1}; stopping: "
                    f"{_kept(ckpt_path, saved_epoch, 'last good checkpoint')}. Try a lower lr or disabling bf16."
                )
            test = evaluate_model(model, dataset.test_images, dataset.test_labels, config)
            _check_test_nll(test["nll"], f"in epoch {epoch + 1}", ckpt_path, saved_epoch)
            row = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": train_loss,
                "train_accuracy": 100.0 * correct_total / max(seen_total, 1),
                **history_metrics(test),
                "seconds": time.perf_counter() - started,
            }
            history.append(row)
            if ddp.main:
                save_checkpoint(
                    ckpt_path,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "loader": loader.state_dict(),
                        "host_rng": list(_listify(host_rng.getstate())),
                        "torch_rng": torch.get_rng_state(),
                        **({"cuda_rng": torch.cuda.get_rng_state(device)} if on_gpu else {}),
                        "history": history,
                        "epoch": epoch + 1,
                        "config": config.to_dict(),
                        "num_classes": dataset.num_classes,
                    },
                )
            saved_epoch = epoch + 1
            if ddp.main:
                write_history(os.path.join(out_dir, files.HISTORY), history)
                scalars.write(row)
                print(epoch_line(row, config.epochs, history[start_epoch:]), file=sys.stderr, flush=True)
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
                return {}

        report = final_report(model, dataset, config, history, out_dir if ddp.main else None)
        _check_test_nll(report["nll"], "after the last epoch", ckpt_path, saved_epoch)
        if ddp.main:
            atomic_write_text(os.path.join(out_dir, files.METRICS), json.dumps(report, indent=2) + "\n")
        return report
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted; {_kept(ckpt_path, saved_epoch)}") from None


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def epoch_line(row: dict, epochs: int, timed: list) -> str:
    """The line printed after each epoch: its training loss, the test accuracy and NLL of the
    ensemble, its time and the time left at the mean of the epochs ``timed`` in this process."""
    left = (epochs - int(row["epoch"])) * sum(r["seconds"] for r in timed) / max(len(timed), 1)
    return (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, test accuracy "
            f"{row['test_accuracy']:.2f}%, test NLL {row['test_nll']:.4f}, {duration(row['seconds'])}"
            + (f", about {duration(left)} left" if round(left) > 0 else ""))


def _check_test_nll(nll: float, when: str, ckpt_path: str, saved_epoch: int) -> None:
    """Raises TrainingDiverged when the test NLL is NaN: the model's predictions are not finite."""
    if math.isnan(nll):
        raise TrainingDiverged(f"the test NLL became nan {when} (the model's outputs are not finite); stopping: "
                               f"{_kept(ckpt_path, saved_epoch, 'last good checkpoint')}. "
                               f"Try a lower lr or disabling bf16.")


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _listify(state):
    """random.Random state -> nested lists (weights_only checkpoints hold plain data)."""
    return [list(s) if isinstance(s, tuple) else s for s in state]


def _tuplify(state):
    return tuple(tuple(s) if isinstance(s, list) else s for s in state)
