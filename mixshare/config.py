"""Run configuration: defaults <- method preset <- dataset defaults <- YAML file <- CLI flags <- --set key=value."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from typing import Any, Optional

import yaml

from mixshare import registry


def _key(default, meaning: str):
    """A Config field with its meaning (``metadata["help"]``), the text ``mixshare train --help`` lists."""
    return dataclasses.field(default=default, metadata={"help": meaning})


@dataclasses.dataclass
class Config:
    """Every key of a run; each field's ``metadata["help"]`` says what it means (see :func:`describe_keys`)."""

    # data
    dataset: str = _key("digits", "digits (embedded, no download) | cifar10 | cifar100 | synthetic")
    data_dir: Optional[str] = _key(None, "folder holding cifar-10-batches-py / cifar-100-python")
    calibration_split: float = _key(
        0.0, "fraction of the training images withheld from training (stratified, drawn by seed) to fit the "
             "temperature of the temperature-scaled nll_ts / ece_ts; 0: none withheld, no temperature scaling")
    # model
    model: str = _key("wrn-28-2", f"a registered model (mixshare.registry): {registry.patterns()}")
    input_stem: str = _key(
        "auto", f"torchvision-* / timm-* ResNets' first layers: small (3x3 stride-1 conv, no max-pool: the CIFAR "
                f"adaptation) | imagenet (7x7 stride-2 conv and max-pool) | auto (small for images of at most "
                f"{registry.SMALL_INPUT_SIZE} px)")
    attribution_depth: int = _key(2, "ViT: the last k blocks, with source attribution (class attention)")
    drop_path: float = _key(0.0, "ViT: stochastic depth rate of the last block (linear in depth)")
    # method (filled by the preset named in `method`, see PRESETS below)
    method: str = _key("mixshare-fadeout", "method preset; sets the method keys below it (see --method)")
    num_subnets: int = _key(2, "M, the number of subnetworks (1: a single network)")
    mixing: str = _key("cut", "how the M inputs are mixed: none | sum | linear | cut")
    cut_prob: float = _key(1.0, "probability of a CutMix batch (else linear mixing)")
    cut_decay_start: float = _key(1.0, "fraction of training after which cut_prob decays linearly to 0")
    alpha: float = _key(2.0, "Dirichlet(alpha) mixing ratios (Beta(alpha, alpha) for M = 2)")
    loss_root: float = _key(1.0, "MixMo loss reweighting root r (1: none)")
    unmix: bool = _key(False, "MixShare unmixing: each head pools the part of the final map its input filled")
    unmix_channels: float = _key(1.0, "fraction of the final channels unmixed")
    unmix_normalize: str = _key("mean", "head pooling divides by: mean (h*w) | masked (its mask's sum, the ops' default)")
    fade_epochs: Optional[float] = _key(None, "unmixing fades out over this many epochs (None: no fadeout)")
    fade_fraction: Optional[float] = _key(None, "... or over this fraction of training")
    encoder_init: str = _key("independent", f"initial kernels of the M encoders: {' | '.join(registry.ENCODER_INITS)}")
    input_repetition: float = _key(0.0, "rho: fraction of each batch where every subnetwork sees the same image")
    batch_repetition: int = _key(2, "b: times each image appears in a batch")
    # optimisation
    epochs: int = _key(300, "training epochs")
    batch_size: int = _key(64, "rows per batch, the b repetitions included")
    optimizer: str = _key("sgd", "sgd (the CNN papers') | adamw (the ViT presets')")
    lr: Optional[float] = _key(None, "learning rate (None: sgd 0.1 / b * batch_size / 128, adamw 1e-3)")
    momentum: float = _key(0.9, "sgd momentum")
    nesterov: bool = _key(True, "sgd: Nesterov momentum")
    l2: float = _key(3e-4, "sgd: l2 * sum of squared weights added to the loss (SGD weight decay 2 * l2)")
    weight_decay: float = _key(0.05, "adamw: decoupled weight decay (not on biases, norms, embeddings)")
    schedule: str = _key("step", "step: x lr_decay at lr_milestones | cosine: cosine decay to 0 after warmup")
    warmup_epochs: float = _key(1.0, "epochs of linear warmup (per step)")
    lr_milestones: tuple = _key((0.25, 0.5, 0.75), "fractions of training where the step schedule decays the lr")
    lr_decay: float = _key(0.1, "the step schedule's lr factor at each milestone")
    # evaluation
    ensemble: str = _key("logits", "how the M predictions are combined: logits (mean logits) | probs (mean softmax)")
    eval_batch_size: int = _key(500, "images per evaluation batch")
    # run
    seed: int = _key(0, "seed of the weights, batches, augmentation, mixing and calibration split")
    device: str = _key("auto", "auto, cpu, cuda, cuda:1, ...")
    bf16: bool = _key(True, "bf16 autocast on GPU")
    channels_last: bool = _key(True, "channels-last memory layout on GPU")
    compile: bool = _key(False, "torch.compile the model's core")
    plots: bool = _key(True, "write the PNG plots at the end of the run")
    progress: bool = _key(True, "progress bars")
    synthetic_train: int = _key(2048, "synthetic dataset: training images")
    synthetic_test: int = _key(512, "synthetic dataset: test images")
    synthetic_classes: int = _key(100, "synthetic dataset: classes")
    synthetic_size: int = _key(32, "synthetic dataset: image side (pixels)")
    shift_eval: bool = _key(False, "evaluate under corruptions and OOD after training (metrics.json's cAcc, "
                                   "cNLL, cECE, ood_*, ms_per_example)")

    def lr_value(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.optimizer == "adamw":  # the usual ViT-on-CIFAR value (batch 128); not rescaled with the batch
            return 1e-3
        return 0.1 / self.batch_repetition * self.batch_size / 128

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["lr_milestones"] = list(self.lr_milestones)
        return out


# Method presets: the method fields of Config for each named method; every
# field can still be set on its own. PRESETS are the CNN methods (WRN /
# PreActResNet models), VIT_PRESETS the transformer ones (vit-* models);
# validate() refuses a preset with the other kind of model. A preset's mixing
# keys (mixing, unmix and their settings) are the settings of its mixer
# (mixshare.mixers: one class per `mixing` value, MixShare for unmix), whose
# unset settings are its class's preset: a new mixing mode is a class there and
# a preset here. This table is plain data so that --help needs no torch.
_MIXMO = dict(num_subnets=2, encoder_init="independent", input_repetition=0.0, batch_repetition=2, unmix=False)
_UNMIX = dict(_MIXMO, mixing="cut", cut_prob=1.0, cut_decay_start=1.0, loss_root=1.0, unmix=True,
              unmix_channels=1.0, input_repetition=0.1, fade_epochs=None, fade_fraction=None)

PRESETS = {
    "single": dict(num_subnets=1, mixing="none", batch_repetition=1, unmix=False, encoder_init="independent",
                   input_repetition=0.0, loss_root=1.0),
    "mimo": dict(_MIXMO, mixing="sum", loss_root=1.0),
    "linear-mixmo": dict(_MIXMO, mixing="linear", loss_root=3.0),
    "cut-mixmo": dict(_MIXMO, mixing="cut", cut_prob=0.5, cut_decay_start=11 / 12, loss_root=3.0),
    "unmix": dict(_UNMIX),
    "unmix-align": dict(_UNMIX, encoder_init="identical"),
    "mixshare-partial": dict(_UNMIX, encoder_init="identical", unmix_channels=0.25),
    "mixshare-fadeout": dict(_UNMIX, encoder_init="identical", fade_fraction=1 / 3),
    # MIMO's naive multihead baseline (its Figures 3-4, Tables 1-2): one input, the body shared, M heads.
    # Every member gets the same identically augmented image (input repetition 1, see MimoLoader) and the
    # M encodings are summed: the sum of M linear encoders on one image is one encoder. batch_repetition 1:
    # MIMO's appendix B trains the naive multihead with the baselines' recipe (batch 512, no repetition);
    # batch repetition b = 4 is set for MIMO alone, as part of its own method. b = 1 also gives it the
    # lr of `single` (0.1 / b * batch / 128), the network it only adds M - 1 heads to.
    "multihead": dict(_MIXMO, mixing="sum", loss_root=1.0, input_repetition=1.0, batch_repetition=1),
}


# The ViT recipe (DeiT / CaiT style, scaled to small data): AdamW (lr 1e-3 by
# default), weight decay 0.05, 5 epochs of linear warmup then cosine decay,
# stochastic depth 0.1.
_VIT_TRAINING = dict(optimizer="adamw", weight_decay=0.05, schedule="cosine", warmup_epochs=5.0, drop_path=0.1,
                     encoder_init="independent", unmix=False, attribution_depth=2)

VIT_PRESETS = {
    # One CaiT-style ViT: M = 1, no mixing (its single source embedding is a learned offset).
    "single-vit": dict(_VIT_TRAINING, num_subnets=1, mixing="none", batch_repetition=1, input_repetition=0.0,
                       loss_root=1.0),
    # MixViT: M = 2, a binary CutMix box on the patch grid for every batch (each token has one source to be
    # attributed to), source attribution in the last k = 2 blocks, batch repetition 2 as in the MixMo
    # family, CutMix's area-proportional loss weights (root 1: no MixMo rebalancing).
    "mixvit": dict(_VIT_TRAINING, num_subnets=2, mixing="cut", cut_prob=1.0, cut_decay_start=1.0, batch_repetition=2,
                   input_repetition=0.0, loss_root=1.0),
}

ALL_PRESETS = {**PRESETS, **VIT_PRESETS}





def preset(name: str) -> dict:
    """The config values of method ``name`` (a CNN preset or a ViT preset), ``method`` included."""
    if name not in ALL_PRESETS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(ALL_PRESETS)}")
    return dict(ALL_PRESETS[name], method=name)



FIELDS = {f.name: f for f in dataclasses.fields(Config)}
DATASETS = ("digits", "cifar10", "cifar100")  # the datasets mixshare.data loads by name
TRAINING_DATASETS = DATASETS + ("synthetic",)  # what a run's ``dataset`` may name (see mixshare.data.load_data)
#: The values of ``mixing``: one class of :mod:`mixshare.mixers` each (its ``MIXERS``, held equal by a test).
MIXINGS = ("none", "sum", "linear", "cut")
UNMIX_NEEDS_CUT = "unmixing needs CutMix on every batch (mixing: cut, cut_prob: 1)"
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")


def choices() -> dict[str, tuple]:
    """The valid values of each config key with a fixed set of them, from the module owning each list.

    Imports torch (through the modules owning the lists); the command line's help does not call it.
    """
    from mixshare.metrics import ENSEMBLE_MODES
    from mixshare_ops.checks import NORMALIZE_MODES

    return {
        "dataset": TRAINING_DATASETS,
        "mixing": MIXINGS,
        "unmix_normalize": NORMALIZE_MODES,
        "encoder_init": registry.ENCODER_INITS,
        "input_stem": registry.INPUT_STEMS,
        "ensemble": ENSEMBLE_MODES,
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
    }


class ConfigError(ValueError):
    """An unknown key or a value of the wrong type or range."""


_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False}


@functools.cache
def _type_hints() -> dict:
    """Config's field types, resolved once (``typing.get_type_hints`` costs about a millisecond)."""
    return typing.get_type_hints(Config)


def _convert(name: str, value: Any):
    """``value`` as the type of config key ``name``, refusing a value of another kind: a bool is
    ``true`` / ``false`` (also as a string), a number is a number (a string that reads as one, e.g.
    YAML's ``1e-3``, included) and never a bool or a list, ``lr_milestones`` is a list of numbers,
    a text key takes a string."""
    hint = _type_hints()[name]
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{name} cannot be None")
    expected = {bool: "true or false", int: "an integer", float: "a number", tuple: "a list of numbers",
                str: "a string"}[base]
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.strip().lower()]
            raise ValueError(value)
        if base is tuple:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            return tuple(_number(v, float) for v in value)
        if base in (int, float):
            return _number(value, base)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError, OverflowError, yaml.YAMLError):
        raise ConfigError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})") from None


def _number(value: Any, kind: type):
    """``value`` as ``kind`` (int or float): an int, a float (integral for an int) or a string reading
    as one; never a bool, a list or a mapping."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    if isinstance(value, str):
        value = float(value) if kind is float else _int_text(value)
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    return float(value)


def _int_text(text: str):
    try:
        return int(text.strip())
    except ValueError:
        return float(text)


def nearest_key(name: str) -> Optional[str]:
    """The config key closest to ``name`` (difflib, dashes read as underscores), or None if none is close."""
    name = str(name).strip().lstrip("-").replace("-", "_")
    if name in FIELDS:
        return name
    close = difflib.get_close_matches(name, list(FIELDS), n=1, cutoff=0.6)
    return close[0] if close else None


def apply(config: Config, updates: dict, source: str) -> Config:
    """A copy of ``config`` with ``updates``; an unknown key names the nearest valid one and lists them all."""
    changes = {}
    for key, value in updates.items():
        if key not in FIELDS:
            near = nearest_key(key)
            hint = f"; did you mean {near!r}?" if near else ";"
            raise ConfigError(f"unknown config key {key!r} in {source}{hint} valid keys: {', '.join(sorted(FIELDS))}")
        try:
            changes[key] = _convert(key, value)
        except ConfigError as error:
            raise ConfigError(f"{error} in {source}") from None
    return dataclasses.replace(config, **changes)


# The embedded digits have 1,348 training images, so a short run is a few hundred steps: the
# CIFAR recipe's lr (0.025 at b = 2, batch 64), one epoch of warmup and a first decay at 25% of
# training leave the MIMO methods far from converged there. These replace them on digits, for the
# SGD (CNN) recipe only; a YAML file, flags and --set still override them.
DIGITS_SGD_DEFAULTS = {"lr": 0.1, "lr_milestones": (0.5, 0.75), "warmup_epochs": 0.5}


# ImageNet ResNets (the families with an input_stem: torchvision-*, timm-*) keep the recipe's lr
# (0.1 / b * batch / 128) on digits: at lr 0.1 and batch 32 torchvision 0.29.1's ResNet-18 stayed at
# chance there (10-12% after one or two epochs, either stem; Cut-MixMo and MixShare fadeout), at
# the recipe's 0.025 it learned (after 5 epochs: 86.9% and 88.0% with the small-input stem).


def dataset_defaults(config: Config) -> dict:
    """The settings ``config``'s dataset brings on top of the method preset (empty but for digits with SGD;
    there, no lr for an ImageNet ResNet)."""
    if config.dataset != "digits" or config.optimizer != "sgd":
        return {}
    defaults = dict(DIGITS_SGD_DEFAULTS)
    try:
        if "input_stem" in registry.find_family(config.model).options:
            del defaults["lr"]
    except ValueError:
        pass  # an unknown model: validate refuses it
    return defaults


def merge(preset_values: dict, file_values: dict, flags: dict, set_values: dict, *,
          preset_name: str = "the preset", file_name: str = "the config file") -> Config:
    """The run's config, validated: defaults <- method preset <- dataset defaults <- YAML file <- flags <- --set.

    ``flags`` with the value None are left out. The dataset (and optimizer) that pick the dataset
    defaults are those of the other layers merged.
    """
    layers = [
        (preset_values, preset_name),
        (file_values, file_name),
        ({k: v for k, v in flags.items() if v is not None}, "the command line"),
        (set_values, "--set"),
    ]

    def build(extra: list) -> Config:
        config = Config()
        for values, source in layers[:1] + extra + layers[1:]:
            config = apply(config, values, source)
        return config

    probe = build([])
    config = build([(dataset_defaults(probe), f"the {probe.dataset} defaults")])
    validate(config)
    return config


def load_yaml(path: str) -> dict:
    """The mapping of config keys in the YAML file ``path`` (values are type-checked when applied)."""
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ConfigError(f"{path} is not valid YAML{at}: {getattr(error, 'problem', None) or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    bad = [key for key in data if not isinstance(key, str)]
    if bad:
        raise ConfigError(f"{path}: config keys are names, got {bad[0]!r} ({type(bad[0]).__name__})")
    return data


def parse_set(items) -> dict:
    """``["key=value", ...]`` -> dict (values parsed as YAML scalars)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: cannot read the value {value!r}") from None
    return out


# Valid range of each numeric value: (low, high, low included, high included); None: unbounded.
RANGES = {
    "calibration_split": (0, 1, True, False),
    "attribution_depth": (1, None, True, True),
    "drop_path": (0, 1, True, False),
    "num_subnets": (1, None, True, True),
    "cut_prob": (0, 1, True, True),
    "cut_decay_start": (0, 1, True, True),
    "alpha": (0, None, False, True),
    "loss_root": (0, None, False, True),
    "unmix_channels": (0, 1, True, True),
    "fade_epochs": (0, None, True, True),
    "fade_fraction": (0, 1, True, True),
    "input_repetition": (0, 1, True, True),
    "batch_repetition": (1, None, True, True),
    "epochs": (1, None, True, True),
    "batch_size": (1, None, True, True),
    "lr": (0, None, False, True),
    "momentum": (0, 1, True, False),
    "l2": (0, None, True, True),
    "weight_decay": (0, None, True, True),
    "warmup_epochs": (0, None, True, True),
    "lr_decay": (0, 1, False, True),
    "eval_batch_size": (1, None, True, True),
    "seed": (0, 2**63 - 1, True, True),
    "synthetic_train": (1, None, True, True),
    "synthetic_test": (1, None, True, True),
    "synthetic_classes": (2, None, True, True),
    "synthetic_size": (4, None, True, True),  # the CNNs' three stride-2 stages need 4 pixels
}


# The keys a resumed run (and compare's reuse of a finished one) is compared on: all but
# RUNTIME_KEYS, where and how a run executes (free to change). IDENTITY_KEYS, what the weights and
# the data are, never change on resume; any other key may, when named with --allow-change.
RUNTIME_KEYS = ("data_dir", "device", "progress", "plots", "compile", "channels_last", "eval_batch_size")
IDENTITY_KEYS = ("method", "model", "input_stem", "dataset", "num_subnets", "seed", "calibration_split", "synthetic_train",
                 "synthetic_test", "synthetic_classes", "synthetic_size")


def experiment_differences(saved: Config, config: Config) -> dict[str, tuple]:
    """``{key: (saved value, new value)}`` for every key but :data:`RUNTIME_KEYS` where they differ."""
    return {f.name: (getattr(saved, f.name), getattr(config, f.name)) for f in dataclasses.fields(Config)
            if f.name not in RUNTIME_KEYS and getattr(saved, f.name) != getattr(config, f.name)}


def describe_differences(differences: dict) -> str:
    """``{key: (there, now)}`` as ``key: there ..., now ...`` items separated by semicolons."""
    return "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in differences.items())


def check_resume(saved: Config, config: Config, allow_change=(), source: str = "the checkpoint") -> None:
    """Raises ConfigError unless ``config`` continues the experiment ``saved`` describes: every key
    outside :data:`RUNTIME_KEYS` equal, but those named in ``allow_change`` (never an
    :data:`IDENTITY_KEYS` one). The message names each differing key with both values."""
    for key in allow_change:
        if key not in FIELDS:
            near = nearest_key(key)
            hint = f"; did you mean {near!r}?" if near else ""
            raise ConfigError(f"--allow-change: unknown config key {key!r}{hint}")
        if key in IDENTITY_KEYS:
            raise ConfigError(f"--allow-change {key}: {key} defines the run ({', '.join(IDENTITY_KEYS)} never "
                              f"change on resume); start a new run in another --out")
    refused = {k: v for k, v in experiment_differences(saved, config).items() if k not in allow_change}
    if not refused:
        return
    listed = describe_differences(refused)
    identity = [k for k in refused if k in IDENTITY_KEYS]
    if identity:
        advice = (f"{', '.join(identity)} {'defines' if len(identity) == 1 else 'define'} another experiment: "
                  f"start it in another --out (or replace this one with --overwrite)")
    else:
        advice = f"to continue with the new values, pass --allow-change {' '.join(refused)}"
    raise ConfigError(f"{source} was trained with another config ({listed}); {advice}")


def describe_keys(width: int = 100) -> str:
    """Every config key with its default and meaning (the fields' ``metadata["help"]``), one block per key."""
    import textwrap

    lines = []
    for f in dataclasses.fields(Config):
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        head = f"  {f.name} = {default!r}" if not isinstance(default, str) else f"  {f.name} = {default}"
        lines.append(head)
        meaning = f.metadata.get("help", "")
        if f.name in RANGES:
            meaning += f" [{_range_text(*RANGES[f.name])}]"
        lines.extend(textwrap.wrap(meaning, width=width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)


def _range_text(low, high, low_in, high_in) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {low}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def check_range(key: str, value) -> None:
    """Raises ConfigError unless ``value`` (None allowed for optional keys) is finite and in RANGES[key]."""
    if value is None:
        return
    low, high, low_in, high_in = RANGES[key]
    ok = math.isfinite(value) and (value >= low if low_in else value > low)
    if high is not None:
        ok = ok and (value <= high if high_in else value < high)
    if not ok:
        raise ConfigError(f"{key} must be {_range_text(low, high, low_in, high_in)}, got {value!r}")


def check_choice(key: str, value, valid=None) -> None:
    """Raises ConfigError unless ``value`` is one of ``valid`` (default: ``choices()[key]``)."""
    valid = choices()[key] if valid is None else valid
    if value not in valid:
        raise ConfigError(f"{key} must be one of {', '.join(valid)}, got {value!r}")


def check_value(key: str, value):
    """``value`` for config key ``key`` as a config file's would be taken: converted to the key's type,
    then checked against its range (RANGES) or its choices; raises ConfigError naming the key."""
    value = _convert(key, value)
    if key in RANGES:
        check_range(key, value)
    valid = choices().get(key)
    if valid is not None:
        check_choice(key, value, valid)
    return value


def validate(config: Config) -> None:
    for key, valid in choices().items():
        check_choice(key, getattr(config, key), valid)
    for key in RANGES:
        check_range(key, getattr(config, key))
    from mixshare.runtime import check_device_name

    try:
        check_device_name(config.device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    check_mixing(config.mixing, config.num_subnets, config.unmix, config.cut_prob)
    checks = [
        (all(isinstance(m, (int, float)) and 0 < m < 1 for m in config.lr_milestones),
         f"lr_milestones are fractions of training in (0, 1), got {list(config.lr_milestones)}"),
        (config.optimizer != "sgd" or not config.nesterov or config.momentum > 0,
         "Nesterov momentum needs momentum > 0: set nesterov: false, or a momentum in (0, 1)"),
        (config.dataset != "synthetic" or config.synthetic_train >= config.synthetic_classes,
         f"synthetic_train {config.synthetic_train} leaves classes without a training image: "
         f"need synthetic_train >= synthetic_classes ({config.synthetic_classes})"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _validate_family(config)


def check_mixing(mixing: str, num_subnets: int, unmix: bool = False, cut_prob: float = 1.0) -> None:
    """The mixing keys together (:func:`validate`'s rule and, at construction, every mixer's of
    :mod:`mixshare.mixers`): M = 1 exactly with ``mixing: none``; unmixing needs CutMix on every batch."""
    if num_subnets == 1 and mixing != "none":
        raise ConfigError("a single network (num_subnets = 1) needs mixing: none")
    if num_subnets != 1 and mixing == "none":
        raise ConfigError("mixing: none needs num_subnets = 1")
    if unmix and (mixing != "cut" or cut_prob != 1.0):
        raise ConfigError(UNMIX_NEEDS_CUT)


def check_model_arguments(num_subnets, encoder_init: Optional[str] = None) -> None:
    """The models' check of their arguments, by the config's rules: ``num_subnets`` an int in
    ``RANGES["num_subnets"]``, ``encoder_init`` (when given) one of ``registry.ENCODER_INITS``."""
    message = f"num_subnets must be an int {_range_text(*RANGES['num_subnets'])}, got {num_subnets!r}"
    if isinstance(num_subnets, bool) or not isinstance(num_subnets, int):
        raise ConfigError(message)
    try:
        check_range("num_subnets", num_subnets)
    except ConfigError:
        raise ConfigError(message) from None
    if encoder_init is not None and encoder_init not in registry.ENCODER_INITS:
        raise ConfigError(f"encoder_init must be one of {', '.join(registry.ENCODER_INITS)}, got {encoder_init!r}")


def _validate_family(config: Config) -> None:
    """The method presets and knobs of the CNNs and of the ViTs each need their own kind of model; the
    model's family (:mod:`mixshare.registry`) says which options apply to it."""
    try:
        family = registry.find_family(config.model)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    vit = family.kind == "vit"
    if config.method in VIT_PRESETS and not vit:
        raise ConfigError(
            f"method {config.method!r} needs a ViT model ({registry.patterns('vit')}), got model {config.model!r}; "
            f"the CNN methods are {', '.join(PRESETS)}")
    if config.method in PRESETS and vit:
        raise ConfigError(
            f"method {config.method!r} is a CNN method ({registry.patterns('cnn')}), got model {config.model!r}; "
            f"the ViT methods are {', '.join(VIT_PRESETS)}")
    if config.unmix and not family.unmix:
        raise ConfigError(f"unmix applies to the CNNs; model {config.model!r} ({family.pattern}) does not unmix"
                          + ("; a ViT separates its subnetworks by source attribution (attribution_depth), "
                             "set unmix: false" if vit else ""))
    if config.encoder_init != "independent" and "encoder_init" not in family.options:
        raise ConfigError("encoder_init applies to the CNNs' M input encoders; a ViT has one patch embedding "
                          "shared by its subnetworks (encoder_init must stay independent)")
    if config.input_stem != "auto" and "input_stem" not in family.options:
        takes = ", ".join(f.pattern for f in registry.families() if "input_stem" in f.options)
        raise ConfigError(f"input_stem applies to {takes}; model {config.model!r} ({family.pattern}) has its own "
                          f"first layers (input_stem must stay auto)")
