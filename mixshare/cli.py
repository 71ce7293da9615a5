"""``mixshare`` command line: train, eval, analyze, compare, ensemble."""

# torch is imported only inside the commands, so that --help answers at once.
from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import math
import os
import shlex
import statistics
import sys
import time
from typing import Optional

from mixshare import config as cfg
from mixshare import registry

DEMO_METHODS = ("single", "cut-mixmo", "unmix-align", "mixshare-fadeout")
DEFAULT_VIT_METHOD = "mixvit"  # the default method when the model is a ViT and no method is named
VIT_DEMO_METHODS = ("single-vit", "mixvit")  # compare's default methods for a ViT model


def _add_run_options(p: argparse.ArgumentParser, method_default=None) -> None:
    p.add_argument("--dataset", choices=cfg.TRAINING_DATASETS, help="dataset (default: digits, embedded)")
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py / cifar-100-python")
    p.add_argument("--model", help=f"a registered model: {registry.patterns()} (default {cfg.Config.model}; "
                                    f"listed in 'mixshare train --help')")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--config", help="YAML file of config keys (see configs/)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set lr=0.05 unmix_channels=0.5")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _wants_vit(args, file_values: dict, set_values: dict) -> bool:
    """Whether the model the command line asks for (--set, else --model, else --config, else the default) is a ViT."""
    model = set_values.get("model") or args.model or file_values.get("model") or cfg.Config.model
    try:
        return isinstance(model, str) and registry.find_family(model).kind == "vit"
    except ValueError:
        return False  # an unknown name: the config's check refuses it, naming where it came from


def build_config(args, method=None, seed=None) -> cfg.Config:
    """The run's config from the command line (the merge order: :func:`mixshare.config.merge`).

    Without a method (argument, --method or the file's), a ViT model gets
    ``mixvit`` and any other model ``mixshare-fadeout``.
    """
    file_values = cfg.load_yaml(args.config) if getattr(args, "config", None) else {}
    set_values = cfg.parse_set(args.set)
    default = DEFAULT_VIT_METHOD if _wants_vit(args, file_values, set_values) else cfg.Config.method
    method = method or getattr(args, "method", None) or file_values.get("method") or default
    flags = {
        "dataset": args.dataset, "data_dir": args.data_dir, "model": args.model, "epochs": args.epochs,
        "batch_size": args.batch_size, "device": args.device, "seed": seed if seed is not None else getattr(args, "seed", None),
        "progress": False if args.no_progress else None,
    }
    return cfg.merge(cfg.preset(method), {k: v for k, v in file_values.items() if k != "method"}, flags, set_values,
                     preset_name=f"preset {method}", file_name=args.config or "the config file")


def cmd_train(args) -> int:
    from mixshare.train import train

    config = build_config(args)
    report = train(config, args.out, resume=args.resume, overwrite=args.overwrite, allow_change=args.allow_change)
    if report:
        print(json.dumps({k: report[k] for k in ("ensemble_accuracy", "subnetwork_accuracy", "nll", "ece",
                                                 "temperature", "nll_ts", "ece_ts", "encoder_share_rate",
                                                 "classifier_share_rate")}, indent=2))
    return 0


def _model_from_checkpoint(path, device):
    from mixshare.files import load_checkpoint, load_weights
    from mixshare.models import model_from_config
    from mixshare.runtime import resolve_device

    state = load_checkpoint(path)
    config = cfg.apply(cfg.Config(), state["config"], path)
    device = resolve_device(device or "auto")
    model = model_from_config(config, int(state["num_classes"]))
    load_weights(model, state["model"], path)
    return model.to(device).eval(), config, state, device


def _dataset_for(config, data_dir, device):
    from mixshare.data import load_data

    if data_dir:
        config = cfg.apply(config, {"data_dir": data_dir}, "--data-dir")
    return load_data(config).to(device)


def cmd_eval(args) -> int:
    from mixshare import analysis
    from mixshare.evaluate import best_test_epoch, calibration_report, collect_logits, evaluate_model, \
        fit_calibration

    model, config, state, device = _model_from_checkpoint(args.checkpoint, args.device)
    if args.data_dir:
        config = cfg.apply(config, {"data_dir": args.data_dir}, "--data-dir")
    dataset = _dataset_for(config, None, device)
    logits = collect_logits(model, dataset.test_images, config.eval_batch_size, config.bf16)
    report = evaluate_model(model, dataset.test_images, dataset.test_labels, config, logits=logits)
    report.update(calibration_report(logits, dataset.test_labels, fit_calibration(model, dataset, config), config))
    report.update(analysis.share_rates(model))
    report.update(best_test_epoch(list(state.get("history", []))))
    if args.corrupted_dir is not None and not args.shift:
        raise ValueError("--corrupted-dir gives the corrupted sets of --shift: pass --shift too")
    if args.shift:
        from mixshare.evaluate import released_shift_report, shift_report

        released = args.corrupted_dir is not None
        report.update(shift_report(model, dataset, config, logits=logits, progress=not released,
                                   corruptions=[] if released else args.corruptions, severities=args.severities,
                                   max_images=-1 if args.shift_images is None else args.shift_images))
        if released:
            report.update(released_shift_report(model, dataset, config, args.corrupted_dir, progress=True,
                                                corruptions=args.corruptions, severities=args.severities,
                                                logits=logits))
    print(json.dumps(report, indent=2))
    return 0


def cmd_analyze(args) -> int:
    from mixshare import analysis
    from mixshare.evaluate import write_plots
    from mixshare.files import atomic_write_text, output_folder

    model, config, state, device = _model_from_checkpoint(args.checkpoint, args.device)
    dataset = _dataset_for(config, args.data_dir, device)
    with output_folder(args.out):
        report = analysis.feature_sharing_report(model)
        variances = analysis.conditional_variance(model, dataset.test_images[: args.num_images])
        report["conditional_variance"] = [v.tolist() for v in variances]
        if model.stage_names() is not None:
            report["conditional_variance_stages"] = model.stage_names()
        if model.has_source_attention and model.num_subnets > 1:
            attention = analysis.source_attention(model, dataset.test_images[: args.num_images])
            report["source_attention"] = attention.tolist()
        report["plots"] = write_plots(model, dataset, list(state.get("history", [])), args.out, args.num_images,
                                      config=config)
        atomic_write_text(os.path.join(args.out, "analysis.json"), json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("encoder_share_rate", "classifier_share_rate", "plots")}, indent=2))
    return 0


def cmd_ensemble(args) -> int:
    from mixshare.ensemble import evaluate_ensemble
    from mixshare.files import atomic_write_text, output_folder

    with output_folder(args.out) if args.out is not None else contextlib.nullcontext():
        report = evaluate_ensemble(args.runs, device=args.device, data_dir=args.data_dir, ensemble=args.ensemble,
                                   timing_repeats=args.repeats)
        text = json.dumps(report, indent=2)
        if args.out is not None:
            atomic_write_text(os.path.join(args.out, "ensemble.json"), text + "\n")
    print(text)
    return 0


def _mean_std(values, digits: int = 1) -> str:
    """``mean ± std`` (sample std) of the numbers among ``values``; "n/a" when there is none."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def comparison_table(results: dict, mce: Optional[dict] = None, costs: Optional[dict] = None) -> str:
    """Markdown table in the form of MixShare's Table 1 from {method: [metrics, ...]}, with the ensemble's
    test NLL and ECE (%) after it; the temperature-scaled NLL and ECE too when some run has them
    (``calibration_split`` > 0); cAcc (%), cNLL, cECE (%) and the OOD AUROC (%, maximum softmax) when
    some run has them, with mCE (%) from ``mce`` ({method: [mCE or None per run]},
    :func:`corruption_errors`) when given; ms/example with the forward passes of a prediction when some
    run has it (``shift_eval``): from ``costs`` ({method: cost}, :func:`side_by_side_costs`) where it
    has the method, else the mean of the runs' own timings."""
    def some(key):
        return any(r.get(key) is not None for runs in results.values() for r in runs)

    costs = costs or {}
    scaled = some("nll_ts")
    shifted = some("cAcc") or some("ood_auroc")
    timed = some("ms_per_example") or bool(costs)
    header = ("| method | ensemble acc. (%) | individual acc. (%) | classifier share rate (%) | "
              "encoder share rate (%) | NLL | ECE (%) |")
    header += " NLL (TS) | ECE (TS, %) |" if scaled else ""
    header += " cAcc (%) | cNLL | cECE (%) |" + (" mCE (%) |" if mce else "") + " AUROC (%) |" if shifted else ""
    header += " ms/example | passes |" if timed else ""
    header += " runs |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for method, runs in results.items():
        individual = [sum(r["subnetwork_accuracy"]) / len(r["subnetwork_accuracy"]) for r in runs]
        line = (
            f"| {method} | {_mean_std([r['ensemble_accuracy'] for r in runs])} | {_mean_std(individual)} | "
            f"{_mean_std([r.get('classifier_share_rate') for r in runs])} | "
            f"{_mean_std([r.get('encoder_share_rate') for r in runs])} | "
            f"{_mean_std([r.get('nll') for r in runs], 3)} | {_mean_std([r.get('ece') for r in runs], 2)} |"
        )
        if scaled:
            line += (f" {_mean_std([r.get('nll_ts') for r in runs], 3)} |"
                     f" {_mean_std([r.get('ece_ts') for r in runs], 2)} |")
        if shifted:
            line += (f" {_mean_std([r.get('cAcc') for r in runs])} | {_mean_std([r.get('cNLL') for r in runs], 3)} |"
                     f" {_mean_std([r.get('cECE') for r in runs], 2)} |")
            line += f" {_mean_std(mce.get(method, []))} |" if mce else ""
            line += f" {_mean_std([r.get('ood_auroc') for r in runs])} |"
        if timed and method in costs:
            line += f" {costs[method]['ms_per_example']:.3f} | {costs[method]['forward_passes']} |"
        elif timed:
            passes = sorted({str(r["forward_passes"]) for r in runs if r.get("forward_passes")})
            line += f" {_mean_std([r.get('ms_per_example') for r in runs], 3)} | {'/'.join(passes) or 'n/a'} |"
        lines.append(line + f" {len(runs)} |")
    return "\n".join(lines)


def _run_json(path: str):
    """The JSON content of a run's file, or ValueError saying how to replace the run."""
    with open(path) as fh:
        try:
            return json.load(fh)
        except ValueError:
            raise ValueError(f"{path} is not readable JSON; pass --rerun to retrain the run") from None


def _saved_config(run_dir: str):
    """The config of the run in ``run_dir`` (its config.json, else its checkpoint's), or None when the
    folder holds no run."""
    from mixshare import files

    path = os.path.join(run_dir, files.RUN_CONFIG)
    if os.path.isfile(path):
        values = _run_json(path)
        if not isinstance(values, dict):
            raise ValueError(f"{path} is not a JSON mapping of config keys; pass --rerun to retrain the run")
        return cfg.apply(cfg.Config(), values, path)
    checkpoint = os.path.join(run_dir, files.CHECKPOINT)
    if os.path.isfile(checkpoint):
        return cfg.apply(cfg.Config(), files.load_checkpoint(checkpoint)["config"], checkpoint)
    if files.run_records(run_dir):
        raise ValueError(f"{run_dir} holds run files but neither {files.RUN_CONFIG} nor {files.CHECKPOINT}: "
                         f"its config is unknown; pass --rerun to retrain it")
    return None


def compare_run(config: cfg.Config, run_dir: str, rerun: bool = False, announce: Optional[str] = None) -> dict:
    """The metrics of ``config``'s run in ``run_dir``: read back when a finished run with the same
    config (:func:`mixshare.config.experiment_differences`) is there, resumed when an unfinished one is,
    trained otherwise; a run of another config there is refused. ``rerun``: train anew, replacing it.
    ``announce``: a line printed before training (not when the run is read back)."""
    report = None if rerun else finished_run(config, run_dir)
    return report if report is not None else train_run(config, run_dir, rerun, announce)


def train_run(config: cfg.Config, run_dir: str, rerun: bool = False, announce: Optional[str] = None) -> dict:
    """Trains ``config``'s run in ``run_dir`` for compare: anew, replacing it, with ``rerun``; else
    resuming the checkpoint there, if any. ``announce``: a line printed first."""
    from mixshare import files
    from mixshare.train import train

    if announce is not None:
        print(announce, flush=True)
    if rerun:
        return train(config, run_dir, overwrite=True)
    return train(config, run_dir, resume=os.path.isfile(os.path.join(run_dir, files.CHECKPOINT)))


def finished_run(config: cfg.Config, run_dir: str) -> Optional[dict]:
    """The metrics of a finished run of ``config`` in ``run_dir``, None when there is none yet; a run of
    another config, or one written by an older mixshare, is refused."""
    from mixshare import files
    from mixshare.evaluate import METRICS_FORMAT

    saved = _saved_config(run_dir)
    if saved is not None:
        differences = cfg.experiment_differences(saved, config)
        if differences:
            raise cfg.ConfigError(f"{run_dir} holds a run of another config ({cfg.describe_differences(differences)}); "
                                  f"pass --rerun to retrain it, or choose another --out")
        metrics_path = os.path.join(run_dir, files.METRICS)
        if os.path.isfile(metrics_path):
            report = _run_json(metrics_path)
            if not isinstance(report, dict) or report.get("metrics_format") != METRICS_FORMAT:
                raise ValueError(f"{metrics_path} was written by an older mixshare (its rates are in other units); "
                                 f"pass --rerun to retrain the run")
            return report
    return None


def deep_ensembles(args, results: dict, configs: dict) -> dict:
    """compare's reference row: ``{"deep-ensemble (M singles)": [report, ...]}``, the Deep Ensembles
    (:func:`mixshare.ensemble.evaluate_ensemble`) of the ``single`` runs taken M seeds at a time, M the
    largest of the other methods (MIMO's Tables 1-2 compare M subnetworks with M networks); empty
    without ``single``, with fewer single runs than M, or on the synthetic data (its test set is drawn
    from the seed, so runs of other seeds are scored on other images). Each is written to
    ``OUT/deep-ensemble/seeds<a>-<b>/ensemble.json``."""
    from mixshare.ensemble import evaluate_ensemble
    from mixshare.files import atomic_write_text

    size = max((c.num_subnets for (method, _), c in configs.items() if method != "single"), default=1)
    if "single" not in results or size < 2 or len(args.seeds) < size:
        return {}
    if configs["single", args.seeds[0]].dataset == "synthetic":
        print("== no deep-ensemble row: the synthetic test set differs from seed to seed", flush=True)
        return {}
    name = f"deep-ensemble ({size} singles)"
    rows = []
    for start in range(0, len(args.seeds) - size + 1, size):
        seeds = args.seeds[start:start + size]
        config = configs["single", seeds[0]]
        print(f"== {name}: the single runs of seeds {', '.join(map(str, seeds))}", flush=True)
        report = evaluate_ensemble([os.path.join(args.out, "single", f"seed{s}") for s in seeds],
                                   device=config.device, data_dir=config.data_dir, ensemble=config.ensemble,
                                   shift=config.shift_eval, progress=config.shift_eval)
        folder = os.path.join(args.out, "deep-ensemble", f"seeds{seeds[0]}-{seeds[-1]}")
        os.makedirs(folder, exist_ok=True)
        atomic_write_text(os.path.join(folder, "ensemble.json"), json.dumps(report, indent=2) + "\n")
        rows.append(report)
    return {name: rows}


def corruption_errors(results: dict, baseline: str) -> dict:
    """``{method: [mCE (%) or None per run]}``: each run's mean corruption error against the ``baseline``
    method (:func:`mixshare.shift.mean_corruption_error_of_means` of its ``shift_by_corruption`` and the
    baseline runs' per-corruption accuracy averaged over their seeds; 100 = the baseline's errors); None
    for a run without shift results or with other corruptions or severities than the baseline's. Empty
    when the baseline has no run with shift results."""
    from mixshare import shift

    def shift_sets(report):
        return (tuple(report.get("shift_corruptions") or ()), tuple(report.get("shift_severities") or ()))

    base_runs = [r for r in results.get(baseline, []) if r.get("shift_by_corruption")]
    if not base_runs or len({shift_sets(r) for r in base_runs}) != 1:
        return {}
    sets = shift_sets(base_runs[0])
    means = {c: {"accuracy": statistics.mean(r["shift_by_corruption"][c]["accuracy"] for r in base_runs)}
             for c in base_runs[0]["shift_by_corruption"]}
    return {method: [shift.mean_corruption_error_of_means(r["shift_by_corruption"], means)["mCE"]
                     if r.get("shift_by_corruption") and shift_sets(r) == sets else None for r in runs]
            for method, runs in results.items()}


def side_by_side_costs(args, results: dict, device=None) -> dict:
    """``{row: cost}`` (:func:`mixshare.cost.side_by_side`): the first seed's run of each method and the
    first Deep Ensemble row's networks, timed in one process with their calls interleaved, on the first
    :data:`mixshare.evaluate.COST_IMAGES` test images, on ``device`` (None: the runs' default); empty when
    fewer than two models."""
    from mixshare import cost
    from mixshare.data import load_data
    from mixshare.ensemble import DeepEnsemble, checkpoint_path, load_runs
    from mixshare.evaluate import COST_IMAGES

    rows = {method: [os.path.join(args.out, method, f"seed{args.seeds[0]}")] for method in results
            if not method.startswith("deep-ensemble")}
    rows.update({name: [run["checkpoint"] for run in reports[0]["runs"]] for name, reports in results.items()
                 if name.startswith("deep-ensemble")})
    if len(rows) < 2:
        return {}
    rows = {name: [os.path.realpath(checkpoint_path(p)) for p in paths] for name, paths in rows.items()}
    unique = list(dict.fromkeys(p for paths in rows.values() for p in paths))
    _, loaded, configs, device = load_runs(unique, device)
    by_path = dict(zip(unique, loaded))
    models = {}
    for name, paths in rows.items():
        members = [by_path[p] for p in paths]
        models[name] = members[0] if len(members) == 1 else DeepEnsemble(members)
    images = load_data(configs[0]).test_images[:COST_IMAGES].to(device)
    print(f"== the cost of a prediction: {len(models)} models timed side by side on {images.shape[0]} test images",
          flush=True)
    return cost.side_by_side(models, images, repeats=10, warmup=2)


def cmd_compare(args) -> int:
    from mixshare.files import atomic_write_text, output_folder

    methods = args.methods
    if methods is None:
        file_values = cfg.load_yaml(args.config) if args.config else {}
        methods = VIT_DEMO_METHODS if _wants_vit(args, file_values, cfg.parse_set(args.set)) else DEMO_METHODS
    for option, values in (("--seeds", args.seeds), ("--methods", methods)):
        repeated = sorted({v for v in values if list(values).count(v) > 1}, key=str)
        if repeated:
            raise ValueError(f"{option} names {', '.join(map(str, repeated))} more than once: each is one run")
    baseline = args.mce_baseline or "single"
    if args.mce_baseline is not None and args.mce_baseline not in methods:
        raise ValueError(f"--mce-baseline {args.mce_baseline} is not among the methods compared "
                         f"({', '.join(methods)})")
    from mixshare.plots import plot_comparison, plot_severity
    from mixshare.train import duration

    results, configs = {}, {}
    runs = [(method, seed) for method in methods for seed in args.seeds]
    started, trained = time.perf_counter(), []  # seconds of each run trained here (not read back)
    with output_folder(args.out):
        for index, (method, seed) in enumerate(runs):
            config = configs[method, seed] = build_config(args, method=method, seed=seed)
            elapsed = time.perf_counter() - started
            eta = f", about {duration(statistics.mean(trained) * (len(runs) - index))} left" if trained else ""
            announce = (f"== run {index + 1}/{len(runs)}: {method}, seed {seed}: {config.model} on {config.dataset}, "
                        f"{config.epochs} epochs ({duration(elapsed)} so far{eta})")
            run_dir = os.path.join(args.out, method, f"seed{seed}")
            report = None if args.rerun else finished_run(config, run_dir)
            if report is None:
                run_started = time.perf_counter()
                report = train_run(config, run_dir, args.rerun, announce)
                trained.append(time.perf_counter() - run_started)
            results.setdefault(method, []).append(report)
        results.update(deep_ensembles(args, results, configs))
        mce = corruption_errors(results, baseline)
        first = configs[runs[0]]
        costs = side_by_side_costs(args, results, first.device) if first.shift_eval else {}
        if costs:
            atomic_write_text(os.path.join(args.out, "compare_costs.json"), json.dumps(costs, indent=2) + "\n")
        table = comparison_table(results, mce, costs)
        first = next(iter(results.values()))[0]
        header = f"{first.get('dataset', args.dataset or 'digits')}, {first['model']}, seeds {args.seeds}"
        atomic_write_text(os.path.join(args.out, "compare.md"), f"# {header}\n\n{table}\n")
        atomic_write_text(os.path.join(args.out, "compare.json"), json.dumps(results, indent=2) + "\n")
        figure = plot_comparison(results, os.path.join(args.out, "compare.png"), title=header)
        if any(r.get("shift_by_severity") for runs in results.values() for r in runs):
            figure += ", " + plot_severity(results, os.path.join(args.out, "compare_severity.png"),
                                           title=f"{header}: under corruption")
    print(table)
    read_back = len(runs) - len(trained)
    print(f"figure: {figure}; {len(trained)} run{'' if len(trained) == 1 else 's'} trained"
          + (f", {read_back} read back" if read_back else "") + f", {duration(time.perf_counter() - started)} in all",
          flush=True)
    return 0


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose unrecognised options name the nearest option or config key, and whose
    errors are one line (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(unrecognized_message(extras, self._options_of(namespace)))
        return namespace

    def _options_of(self, namespace) -> list[str]:
        """The option strings of the command in ``namespace`` (this parser's own without one)."""
        parser = self
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                parser = action.choices.get(getattr(namespace, action.dest, None), self)
        return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def unrecognized_message(extras: list, options: list) -> str:
    """argparse's "unrecognized arguments" line, with a hint per unknown ``--option``: the nearest option of
    the command, or the config key it names (to pass with ``--set key=value``)."""
    hints = []
    for extra in extras:
        if not extra.startswith("--"):
            continue
        name = extra.split("=", 1)[0]
        key = name[2:].replace("-", "_")
        if key in cfg.FIELDS:
            hints.append(f"{name} is a config key: use --set {key}=VALUE")
            continue
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
        if close:
            hints.append(f"{name}: did you mean {close[0]}?")
            continue
        near = cfg.nearest_key(key)
        if near:
            hints.append(f"{name}: did you mean the config key {near!r} (--set {near}=VALUE)?")
    message = f"unrecognized arguments: {' '.join(extras)}"
    return message + ("; " + "; ".join(hints) if hints else "")


def models_help() -> str:
    """The registered model families, one line each (those whose package is missing say how to install it)."""
    lines = ["models (--model, or the config key model; mixshare.registry.list_models() lists examples):"]
    return "\n".join(lines + [f"  {family.describe()}" for family in registry.families()])


CONFIG_KEYS_HELP = ("config keys: set them with --set KEY=VALUE, in a --config YAML file, or with the flags\n"
                    "above. Shown: each key's default before the method preset (--method) and the dataset's\n"
                    "defaults apply, its meaning and its valid range:")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mixshare", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one method, evaluate and analyse it",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=f"{models_help()}\n\n{CONFIG_KEYS_HELP}\n{cfg.describe_keys()}")
    _add_run_options(p)
    p.add_argument("--method", choices=list(cfg.ALL_PRESETS),
                   help="method preset (default: mixshare-fadeout, or mixvit for a vit-* model)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", required=True, help="output folder")
    runs = p.add_mutually_exclusive_group()
    runs.add_argument("--resume", action="store_true",
                      help="continue the run in OUT from its checkpoint (its config must match: see --allow-change)")
    runs.add_argument("--overwrite", action="store_true",
                      help="replace the run in OUT (its checkpoint, metrics, history, plots; no other file)")
    p.add_argument("--allow-change", nargs="+", default=[], metavar="KEY",
                   help="with --resume: config keys that may differ from the checkpoint's (e.g. epochs); "
                        f"never {', '.join(cfg.IDENTITY_KEYS)}")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its dataset's test split")
    p.add_argument("checkpoint")
    p.add_argument("--data-dir")
    p.add_argument("--device")
    p.add_argument("--shift", action="store_true",
                   help="also under shift: cAcc, cNLL, cECE over the corrupted test sets, OOD detection "
                        "(ood_auroc ...) and ms_per_example (see README, 'Robust prediction in a run')")
    p.add_argument("--corruptions", nargs="+", metavar="NAME",
                   help="with --shift: the corruptions (default: all 15 of mixshare.corruptions)")
    p.add_argument("--severities", nargs="+", type=int, choices=range(1, 6), metavar="S",
                   help="with --shift: severities in 1..5 (default: all)")
    p.add_argument("--shift-images", type=_non_negative_int, metavar="N",
                   help="with --shift: test images per corrupted set, a seeded subset (0: all; default: 150 "
                        "on digits and synthetic, all on CIFAR)")
    p.add_argument("--corrupted-dir", metavar="DIR",
                   help="with --shift on a CIFAR run: the released CIFAR-10-C / CIFAR-100-C folder "
                        "(<corruption>.npy, labels.npy) instead of the sets corrupted here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("analyze", help="feature-sharing analysis and plots of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir")
    p.add_argument("--device")
    p.add_argument("--num-images", type=_positive_int, default=256, help="test images for the conditional variance")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("compare", help="several methods x seeds, printed as MixShare's Table 1",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=f"{models_help()}\n\n{CONFIG_KEYS_HELP}\n{cfg.describe_keys()}")
    _add_run_options(p)
    p.add_argument("--methods", nargs="+", choices=list(cfg.ALL_PRESETS),
                   help=f"default: {' '.join(DEMO_METHODS)}; for a vit-* model: {' '.join(VIT_DEMO_METHODS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", required=True)
    p.add_argument("--rerun", action="store_true",
                   help="retrain every run, replacing those in OUT (default: reuse a finished run of the same "
                        "config, resume an unfinished one, refuse one of another config)")
    p.add_argument("--mce-baseline", metavar="METHOD",
                   help="with shift_eval: the method whose corruption errors are 100%% in the mCE column "
                        "(default: single; no column when it is not among --methods)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("ensemble", help="the Deep Ensemble of independently trained runs on their test split")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_CHECKPOINT",
                   help="2 or more run folders (holding checkpoint.pt) or checkpoints, of one dataset")
    p.add_argument("--out", help="folder to write ensemble.json into")
    p.add_argument("--data-dir")
    p.add_argument("--device")
    p.add_argument("--ensemble", choices=["probs", "logits"], default="probs",
                   help="how the runs' predictions are combined: probs (mean softmax, default) | logits (mean logits)")
    p.add_argument("--repeats", type=_non_negative_int, default=10,
                   help="timed predictions of ms_per_example (median; 0: not timed)")
    p.set_defaults(func=cmd_ensemble)
    return parser


def _int_at_least(least: int, what: str):
    """An argparse type: an integer >= ``least``, refused as "expected ``what``"."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _continue_hint(args, argv: list) -> str:
    """How to continue an interrupted command."""
    if args.command == "train":
        again = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
        return f"continue with: mixshare {shlex.join(again)}"
    if args.command == "compare":
        return "run the same command again to continue (finished runs are reused, an unfinished one resumes)"
    return "nothing was written"


def main(argv=None) -> int:
    """Runs a command; any failure ends in one line on stderr and exit status 2 (Ctrl-C: 130).
    ``MIXSHARE_TRACEBACK=1`` re-raises an error of a class no command expects, with its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt as interrupt:
        said = _one_line(interrupt) or "interrupted"
        print(f"mixshare {args.command}: {said}; {_continue_hint(args, argv)}", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure is one line
        training = sys.modules.get("mixshare.train")  # loaded whenever a run can have diverged
        expected = isinstance(exc, (ValueError, OSError) + ((training.TrainingDiverged,) if training else ()))
        if not expected and os.environ.get("MIXSHARE_TRACEBACK") == "1":
            raise
        message = _one_line(exc) or "(no message)"
        if not expected:
            message = f"{type(exc).__name__}: {message} (MIXSHARE_TRACEBACK=1 shows where)"
        print(f"mixshare {args.command}: error: {message}", file=sys.stderr, flush=True)
        return 2


def run() -> None:
    """The ``mixshare`` command: :func:`main`'s status as the process's exit status. After Ctrl-C
    (130) the process ends at once with that status: everything a run keeps is written by then, and
    CPython would otherwise re-raise SIGINT at exit when the interrupt landed in code that C
    extensions run (the status then reads as killed by SIGINT, not 130)."""
    status = main()
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(status)


if __name__ == "__main__":
    run()
