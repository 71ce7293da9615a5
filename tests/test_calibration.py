"""Temperature scaling on withheld training images, the reliability diagram, per-subnetwork history
columns, TensorBoard scalars beside history.csv, plot titles and compare's calibration columns."""

import csv
import json
import sys

import pytest
import torch
import torch.nn.functional as F

from mixshare import cli, data, plots, train
from mixshare import config as cfg
from tests.test_train import member_logits, saved_run, tiny_config


def _dataset(n=60, classes=4, seed=0):
    return data.synthetic_dataset(n, 8, classes, size=4, seed=seed)


# ------------------------------------------------------------------ the held-out split


def test_hold_out_is_stratified_disjoint_and_deterministic():
    dataset = _dataset()
    state = torch.get_rng_state()
    split = data.hold_out(dataset, 0.25, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # no global random state used
    assert split.calibration_images.shape[0] == 16 and split.train_images.shape[0] == 44
    for c in range(4):  # 15 images per class -> round(3.75) = 4 withheld each
        assert int((split.calibration_labels == c).sum()) == 4
    # the two parts are the training split, each in the original order
    rows = {tuple(x.flatten().tolist()): i for i, x in enumerate(dataset.train_images)}
    kept = [rows[tuple(x.flatten().tolist())] for x in split.train_images]
    held = [rows[tuple(x.flatten().tolist())] for x in split.calibration_images]
    assert kept == sorted(kept) and held == sorted(held) and sorted(kept + held) == list(range(60))
    again = data.hold_out(dataset, 0.25, seed=3)
    assert torch.equal(again.calibration_images, split.calibration_images)
    other = data.hold_out(dataset, 0.25, seed=4)
    assert not torch.equal(other.calibration_images, split.calibration_images)
    assert torch.equal(split.test_images, dataset.test_images) and split.mean == dataset.mean


def test_hold_out_refuses_an_empty_part():
    with pytest.raises(ValueError, match="both must be at least 1"):
        data.hold_out(_dataset(n=4, classes=4), 0.1)
    with pytest.raises(ValueError, match="calibration_split"):
        data.hold_out(_dataset(), 1.0)


def test_load_data_without_calibration_split_is_the_whole_training_split():
    config = tiny_config("cut-mixmo")
    assert config.calibration_split == 0.0
    dataset = data.load_data(config)
    whole = data.synthetic_dataset(config.synthetic_train, config.synthetic_test, config.synthetic_classes,
                                   size=config.synthetic_size, seed=config.seed)
    assert torch.equal(dataset.train_images, whole.train_images) and dataset.calibration_images is None
    split = data.load_data(cfg.apply(config, {"calibration_split": 0.25}, "test"))
    assert split.num_train == 36 and split.calibration_images.shape[0] == 12
    assert split.to("cpu").calibration_labels is not None


# ------------------------------------------------------------------ a run


def _history(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_run_with_calibration_split_reports_temperature_scaled_metrics(tmp_path):
    config = tiny_config("mixshare-fadeout", calibration_split=0.25, plots=True)
    report = train.train(config, str(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["calibration_split"] == 0.25 and saved["calibration_images"] == 12
    assert report["nll_ts"] == saved["nll_ts"]
    # recomputed from the saved weights: the temperature minimises the NLL of the mean logits over T on the
    # withheld images, and nll_ts / brier_ts are the test set's at that temperature
    dataset, model = saved_run(config, tmp_path)
    held = member_logits(model, dataset.calibration_images).mean(0)
    cross = lambda logits, labels, t: F.cross_entropy(logits / t, labels).item()  # noqa: E731
    t = saved["temperature"]
    assert cross(held, dataset.calibration_labels, t) <= min(
        cross(held, dataset.calibration_labels, t * 1.05), cross(held, dataset.calibration_labels, t / 1.05)) + 1e-9
    test = member_logits(model, dataset.test_images).mean(0)
    assert saved["nll_ts"] == pytest.approx(cross(test, dataset.test_labels, t), rel=1e-5)
    probs = torch.softmax(test / t, -1)
    brier = ((probs - F.one_hot(dataset.test_labels, probs.shape[1])) ** 2).sum(1).mean().item()
    assert saved["brier_ts"] == pytest.approx(brier, rel=1e-5)
    confidence, predicted = probs.max(1)  # 15 equal bins on (0, 1], right-closed
    bins = (torch.ceil(confidence * 15).long() - 1).clamp(0, 14)
    gaps = [abs((predicted == dataset.test_labels)[bins == b].double().sum() - confidence[bins == b].sum())
            for b in range(15)]
    assert saved["ece_ts"] == pytest.approx(100.0 * float(sum(gaps)) / len(probs), abs=1e-6)
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_without_calibration_split_has_no_temperature(tmp_path):
    report = train.train(tiny_config("single", epochs=1), str(tmp_path))
    assert report["calibration_split"] == 0.0
    assert report["temperature"] is None and report["nll_ts"] is None and report["ece_ts"] is None


def test_history_has_subnetwork_columns_and_tensorboard_the_same_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config("cut-mixmo", epochs=3)
    train.train(config, str(tmp_path), stop_after_epoch=2)
    # As if killed after logging epoch 2 but before its checkpoint: the checkpoint of epoch 1 (another
    # folder's, the same numbers) is resumed, and epoch 2's stale scalars must give way to the new ones.
    train.train(config, str(tmp_path / "first"), stop_after_epoch=1)
    (tmp_path / "checkpoint.pt").write_bytes((tmp_path / "first" / "checkpoint.pt").read_bytes())
    train.train(config, str(tmp_path), resume=True)
    rows = _history(tmp_path / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0])[:6] == ["epoch", "lr", "train_loss", "train_accuracy", "test_accuracy", "test_nll"]
    for column in ("test_accuracy_sub0", "test_accuracy_sub1", "test_nll_sub0", "test_nll_sub1"):
        assert column in rows[0]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(rows[0]) - {"epoch"}
    for tag in events.Tags()["scalars"]:
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        expected = [(int(r["epoch"]), pytest.approx(float(r[tag]), rel=1e-6)) for r in rows]
        if tag == "seconds":  # epoch 1's row and scalars come from two runs: the same numbers but for the time
            logged, expected = logged[1:], expected[1:]
        assert logged == expected, tag


def test_without_tensorboard_only_history_csv(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    train.train(tiny_config("single", epochs=1), str(tmp_path))
    assert (tmp_path / "history.csv").exists() and not (tmp_path / "tensorboard").exists()


def test_plot_titles_carry_method_and_seed(tmp_path, monkeypatch):
    titles = {}

    def recorder(name, real):
        def record(*args, **kwargs):
            titles[name] = kwargs.get("title", args[2] if len(args) > 2 else None)
            return real(*args, **kwargs)
        return record

    for name in ("plot_training_curves", "plot_reliability", "plot_feature_profiles", "plot_conditional_variance"):
        monkeypatch.setattr(plots, name, recorder(name, getattr(plots, name)))
    train.train(tiny_config("mixshare-fadeout", plots=True, seed=7, epochs=1), str(tmp_path))
    assert set(titles) == {"plot_training_curves", "plot_reliability", "plot_feature_profiles",
                           "plot_conditional_variance"}
    for name, title in titles.items():
        assert title.startswith("mixshare-fadeout, seed 7: "), (name, title)


# ------------------------------------------------------------------ compare's table


def _result(accuracy, nll, ece, nll_ts=None, ece_ts=None):
    return {"ensemble_accuracy": accuracy, "subnetwork_accuracy": [accuracy - 1, accuracy - 2],
            "classifier_share_rate": 50.0, "encoder_share_rate": 10.0, "nll": nll, "ece": ece,
            "nll_ts": nll_ts, "ece_ts": ece_ts}


def test_comparison_table_has_nll_and_ece_columns():
    table = cli.comparison_table({"fadeout": [_result(80.0, 0.9, 8.0), _result(82.0, 1.1, 6.0)],
                                  "unmix-align": [_result(81.0, 0.7, 2.0)]})
    header, rule, fadeout, align = table.splitlines()
    assert header.endswith("| NLL | ECE (%) | runs |") and rule.count("|") == header.count("|")
    assert "| 1.000 ± 0.141 | 7.00 ± 1.41 | 2 |" in fadeout
    assert "| 0.700 | 2.00 | 1 |" in align
    scaled = cli.comparison_table({"a": [_result(80.0, 0.9, 8.0, 0.8, 1.5)], "b": [_result(80.0, 0.9, 8.0)]})
    header, _, a, b = scaled.splitlines()
    assert header.endswith("| NLL | ECE (%) | NLL (TS) | ECE (TS, %) | runs |")
    assert a.endswith("| 0.900 | 8.00 | 0.800 | 1.50 | 1 |") and b.endswith("| n/a | n/a | 1 |")


# ------------------------------------------------------------------ the reliability diagram


def test_plot_reliability(tmp_path):
    from mixshare import metrics

    gen = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(2, 200, 5, generator=gen)
    labels = torch.randint(0, 5, (200,), generator=gen)
    bins = metrics.reliability_bins(metrics.ensemble_probs(logits), labels)
    path = tmp_path / "reliability.png"
    assert plots.plot_reliability(bins, path, title="single, seed 0: reliability") == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scaled = metrics.reliability_bins(metrics.ensemble_probs(logits, "logits", 2.5), labels)
    plots.plot_reliability(bins, tmp_path / "both.png", scaled=scaled, temperature=2.5, nll=1.5, scaled_nll=1.2)
    assert (tmp_path / "both.png").exists()
    with pytest.raises(ValueError, match="bins need"):
        plots.plot_reliability({"edges": [0, 1]}, tmp_path / "bad.png")
    assert "dashed diagonal" in plots.CONDITIONAL_VARIANCE_NOTE and "input 0 only" in plots.CONDITIONAL_VARIANCE_NOTE
    plots.plot_conditional_variance([torch.rand(2, 8) + 0.1], tmp_path / "cv.png", note=None)
    assert plots.run_label("unmix", 3) == "unmix, seed 3" and plots.run_label(None, None) is None
