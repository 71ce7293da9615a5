"""Training loop: data and augmentation on the device, no host sync inside a step.

``train(config, out_dir)`` writes ``checkpoint.pt`` (each epoch, atomically),
``history.csv``, ``metrics.json`` and the plots. ``resume=True`` continues from
the checkpoint; on CPU the resumed run ends with the same weights as an
uninterrupted one. Under ``torchrun`` it trains with DistributedDataParallel
(NCCL on GPU, gloo on CPU); rank 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

import mixshare_ops
from mixshare import data, methods
from mixshare.config import Config, validate
from mixshare.files import CHECKPOINT, atomic_write_text, load_checkpoint, load_weights, output_folder, \
    save_checkpoint, write_history
from mixshare.evaluate import evaluate_model, final_report
from mixshare.models import model_from_config

class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# --------------------------------------------------------------- set-up


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclasses.dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Distributed:
    """Joins the process group torchrun describes (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def lr_factor(config: Config, step: int, steps_per_epoch: int) -> float:
    """Linear warmup over ``warmup_epochs``, then ``schedule``: step (x``lr_decay`` at each
    milestone) or cosine (from 1 after the warmup to 0 at the end of training)."""
    warmup = config.warmup_epochs * steps_per_epoch
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    total = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        if step < warmup:
            return factor
        done = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
    progress = step / total
    passed = sum(progress >= m for m in config.lr_milestones)
    return factor * config.lr_decay**passed


def make_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum and L2 (the CNN papers), or AdamW (the ViT recipe).

    AdamW decays only the weight matrices and kernels: biases, norm weights and
    the parameters the model lists in ``no_weight_decay()`` (class token,
    source embeddings) are not decayed.
    """
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr_value(), momentum=config.momentum, nesterov=config.nesterov,
            weight_decay=2 * config.l2,
        )
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.dim() <= 1 or name in skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr_value())


def load_data(config: Config) -> data.ImageDataset:
    if config.dataset == "synthetic":
        return data.synthetic_dataset(
            config.synthetic_train, config.synthetic_test, config.synthetic_classes, size=config.synthetic_size,
            seed=config.seed,
        )
    return data.load_dataset(config.dataset, config.data_dir)


# ----------------------------------------------------------------- a step


def mimo_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum over subnetworks of the per-sample-weighted cross-entropy.

    logits [M, R, K], labels [M, R], weights [R, M] -> scalar.
    """
    m, r, k = logits.shape
    ce = F.cross_entropy(logits.reshape(m * r, k).float(), labels.reshape(m * r), reduction="none").view(m, r)
    return (ce * weights.t()).mean(dim=1).sum()


def training_step(
    net: torch.nn.Module,
    dataset: data.ImageDataset,
    index: torch.Tensor,
    config: Config,
    epoch: float,
    mix_gen: torch.Generator,
    host_rng: random.Random,
    optimizer: torch.optim.Optimizer,
    on_gpu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step on the rows ``index`` [M, R]; no host synchronisation.

    Gathers and augments the images on the device, draws the mixing plan,
    runs forward (bf16 autocast and channels_last on GPU if configured),
    backward and ``optimizer.step()``. Returns the loss (scalar), the logits
    [M, R, K] and the labels [M, R], all detached from the graph.
    """
    model = net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net
    m, r = index.shape
    images = dataset.train_images[index.reshape(-1)]
    images = data.augment(images, dataset.hflip, mix_gen, fill=dataset.pad_value)
    if on_gpu and config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    images = images.view(m, r, *images.shape[1:])
    labels = dataset.train_labels[index]
    image_size = tuple(dataset.train_images.shape[-2:])
    # Where the boxes live (the image for the CNNs, the patch grid for the
    # ViTs) and the box_mix scale (None: M) are the model's to say.
    grid = model.mixing_grid(image_size) if hasattr(model, "mixing_grid") else image_size
    plan, weights = methods.sample_plan(config, r, grid, epoch, mix_gen, host_rng, model.num_features,
                                        scale=getattr(model, "mixing_scale", None))
    # The boxes come from cutmix_boxes, valid by construction: skip the ops'
    # value checks, which would cost a host sync per call on CUDA.
    with mixshare_ops.value_checks(False):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu and config.bf16):
            logits = net(images, plan)
        loss = mimo_loss(logits, labels, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach(), labels


# ---------------------------------------------------------------- training


def train(config: Config, out_dir: str, resume: bool = False, stop_after_epoch: Optional[int] = None) -> dict:
    """Trains, evaluates and analyses; returns the final metrics.

    ``stop_after_epoch`` ends the run early after that epoch (as if killed),
    leaving a checkpoint to resume from. A run that fails before writing
    anything leaves no output folder behind (see :func:`mixshare.files.output_folder`).
    """
    validate(config)
    with output_folder(out_dir):
        return _train(config, out_dir, resume, stop_after_epoch)


def _train(config: Config, out_dir: str, resume: bool, stop_after_epoch: Optional[int]) -> dict:
    device = resolve_device(config.device)
    ddp = setup_distributed(device)
    if ddp.enabled and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", ddp.rank)))
        torch.cuda.set_device(device)
    ckpt_path = os.path.join(out_dir, CHECKPOINT)

    torch.manual_seed(config.seed)
    dataset = load_data(config).to(device)
    model = model_from_config(config, dataset.num_classes).to(device)
    on_gpu = device.type == "cuda"
    if on_gpu and config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = model
    if config.compile:  # the heavy part; mixing ops are fused already
        if hasattr(model, "stages"):
            model.stages = torch.compile(model.stages)
        else:  # ViT: each block compiled in place (state_dict keys unchanged)
            for block in [*model.blocks, *model.class_blocks]:
                block.compile()
    if ddp.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if on_gpu else None)

    optimizer = make_optimizer(model, config)
    num_train = dataset.train_images.shape[0]
    steps = data.steps_per_epoch(num_train, config.batch_size, config.batch_repetition)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(config, s, steps))
    # Two device generators: batches (identical on every rank) and
    # per-sample augmentation/mixing draws (one stream per rank).
    batch_gen = torch.Generator(device).manual_seed(config.seed + 1)
    mix_gen = torch.Generator(device).manual_seed(config.seed + 2 + 1000 * ddp.rank)
    host_rng = random.Random(config.seed + 3 + 1000 * ddp.rank)
    history: list[dict] = []
    start_epoch = 0

    if resume and os.path.isfile(ckpt_path):
        state = load_checkpoint(ckpt_path, map_location=device)
        load_weights(model, state["model"], ckpt_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        batch_gen.set_state(state["batch_gen"].cpu())
        mix_gen.set_state(state["mix_gen"].cpu())
        host_rng.setstate(_tuplify(state["host_rng"]))
        if "torch_rng" in state:  # the global generators: a model's own randomness (the ViTs' stochastic depth)
            torch.set_rng_state(state["torch_rng"].cpu())
            if on_gpu and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        history = list(state["history"])
        start_epoch = int(state["epoch"])

    for epoch in range(start_epoch, config.epochs):
        net.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        batches = data.mimo_batches(
            num_train, config.batch_size, config.num_subnets, config.batch_repetition, config.input_repetition,
            batch_gen, device,
        )
        bar = _progress(batches, steps, f"epoch {epoch + 1}/{config.epochs}", config.progress and ddp.main)
        for index in bar:  # [M, R]
            if ddp.enabled:  # each rank takes its share of the rows
                share = index.shape[1] // ddp.world_size
                index = index[:, ddp.rank * share : (ddp.rank + 1) * share]
            loss, logits, labels = training_step(
                net, dataset, index, config, epoch, mix_gen, host_rng, optimizer, on_gpu
            )
            scheduler.step()
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(-1) == labels).sum()
            seen += labels.numel()
        # One sync per epoch.
        stats = torch.stack([loss_sum, correct, torch.tensor(float(seen), device=device)])
        if ddp.enabled:
            dist.all_reduce(stats)
        loss_total, correct_total, seen_total = stats.tolist()
        train_loss = loss_total / (steps * ddp.world_size)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(
                f"training loss became {train_loss} in epoch {epoch + 1}; stopping. The last good checkpoint "
                f"(after epoch {epoch}) is kept at {ckpt_path}. Try a lower lr or disabling bf16."
            )
        test = evaluate_model(model, dataset.test_images, dataset.test_labels, config)
        row = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "train_accuracy": 100.0 * correct_total / max(seen_total, 1),
            "test_accuracy": test["ensemble_accuracy"],
            "test_nll": test["nll"],
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
                    "batch_gen": batch_gen.get_state(),
                    "mix_gen": mix_gen.get_state(),
                    "host_rng": list(_listify(host_rng.getstate())),
                    "torch_rng": torch.get_rng_state(),
                    **({"cuda_rng": torch.cuda.get_rng_state(device)} if on_gpu else {}),
                    "history": history,
                    "epoch": epoch + 1,
                    "config": config.to_dict(),
                    "num_classes": dataset.num_classes,
                },
            )
            write_history(os.path.join(out_dir, "history.csv"), history)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
            return {}

    report = final_report(model, dataset, config, history, out_dir if ddp.main else None)
    if ddp.main:
        atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(report, indent=2) + "\n")
    return report


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
