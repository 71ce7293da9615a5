"""mixshare.evaluate: the best-test-epoch figure beside the last-epoch report, and final_report's keys."""

import json
import math
import types

import pytest
import torch
import torch.nn as nn

from mixshare import evaluate, metrics
from mixshare.config import Config, apply
from mixshare.protocol import MimoModel


def history_rows(accuracies):
    return [
        {"epoch": e + 1, "lr": 0.1, "train_loss": 1.0, "train_accuracy": 50.0, "test_accuracy": a, "test_nll": 1.0,
         "seconds": 0.1}
        for e, a in enumerate(accuracies)
    ]


def test_best_test_epoch_ties_go_to_the_later_epoch():
    # the maximum 70 is reached at epochs 2 and 4: the official code's `>=` keeps epoch 4
    assert evaluate.best_test_epoch(history_rows([50.0, 70.0, 60.0, 70.0, 65.0])) == {
        "best_test_epoch": 4, "best_test_accuracy": 70.0}
    assert evaluate.best_test_epoch(history_rows([10.0, 30.0, 20.0])) == {
        "best_test_epoch": 2, "best_test_accuracy": 30.0}
    assert evaluate.best_test_epoch(history_rows([40.0, 40.0, 40.0]))["best_test_epoch"] == 3
    assert evaluate.best_test_epoch(history_rows([1.0, 2.0, 3.0]))["best_test_epoch"] == 3  # the last epoch


def test_best_test_epoch_skips_missing_values_and_handles_empty_history():
    assert evaluate.best_test_epoch([]) == {"best_test_epoch": None, "best_test_accuracy": None}
    assert evaluate.best_test_epoch(history_rows([math.nan, 20.0, math.nan])) == {
        "best_test_epoch": 2, "best_test_accuracy": 20.0}
    rows = history_rows([5.0, 9.0])
    rows[1]["test_accuracy"] = None
    assert evaluate.best_test_epoch(rows) == {"best_test_epoch": 1, "best_test_accuracy": 5.0}
    # epochs are read from the rows, not from their position (a resumed run's history)
    rows = history_rows([5.0, 9.0])
    for row in rows:
        row["epoch"] += 10
    assert evaluate.best_test_epoch(rows)["best_test_epoch"] == 12


class FixedLogits(MimoModel):
    """A stand-in MIMO model: fixed test logits, M encoders and heads with hand-set weights."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.num_subnets = logits.shape[0]
        self.encoders = nn.ModuleList(nn.Conv2d(3, 4, 1, bias=False) for _ in range(self.num_subnets))
        self.heads = nn.ModuleList(nn.Linear(3, logits.shape[2]) for _ in range(self.num_subnets))
        with torch.no_grad():
            for i, (enc, head) in enumerate(zip(self.encoders, self.heads)):
                enc.weight.fill_(1.0)
                head.weight.fill_(1.0 + 0.5 * i)  # head 1 is head 0 scaled by 1.5

    def predict(self, images):
        index = images[:, 0, 0, 0].long()
        return self.logits[:, index]


def test_final_report_keeps_the_last_epoch_and_adds_the_best_test_epoch():
    logits = torch.tensor(
        [
            [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]],
            [[2.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]],
        ]
    )
    labels = torch.tensor([0, 1, 1, 1])
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()  # pixel value = sample index
    dataset = types.SimpleNamespace(test_images=images, test_labels=labels)
    config = apply(Config(), {"plots": False, "bf16": False, "eval_batch_size": 3}, "test")
    model = FixedLogits(logits)
    history = history_rows([40.0, 75.0, 75.0, 50.0])
    report = evaluate.final_report(model, dataset, config, history, out_dir=None)

    expected = metrics.evaluate_logits(logits, labels, ensemble=config.ensemble)
    for key, value in expected.items():
        assert report[key] == pytest.approx(value), key
    assert report["ensemble_accuracy"] == pytest.approx(50.0)  # the model as it is now: the last epoch
    assert report["best_test_epoch"] == 3 and report["best_test_accuracy"] == 75.0
    assert report["brier_official"] == pytest.approx(report["brier"] / 3)
    # literal share rates: identical encoders -> 100; head 1 = 1.5 x head 0 -> 100 / 1.5
    assert report["encoder_share_rate"] == pytest.approx(100.0)
    assert report["classifier_share_rate"] == pytest.approx(100 / 1.5)
    assert report["classifier_share_rate_normalized"] == pytest.approx(100.0)
    assert report["encoder_share_rate_normalized"] == pytest.approx(100.0)
    json.dumps(report, allow_nan=False)


def test_final_report_fits_the_temperature_on_the_withheld_images_only():
    gen = torch.Generator().manual_seed(0)
    logits = 4.0 * torch.randn(2, 40, 3, generator=gen)
    labels = torch.randint(0, 3, (40,), generator=gen)
    images = torch.arange(40.0).view(40, 1, 1, 1).expand(40, 3, 2, 2).contiguous()  # pixel value = sample index
    test, held = torch.arange(0, 20), torch.arange(20, 40)
    dataset = types.SimpleNamespace(test_images=images[test], test_labels=labels[test],
                                    calibration_images=images[held], calibration_labels=labels[held])
    config = apply(Config(), {"plots": False, "bf16": False, "eval_batch_size": 7, "calibration_split": 0.5}, "test")
    report = evaluate.final_report(FixedLogits(logits), dataset, config, [], out_dir=None)

    temperature = metrics.fit_temperature(logits[:, held], labels[held], config.ensemble)
    assert report["temperature"] == pytest.approx(temperature)
    assert temperature != pytest.approx(metrics.fit_temperature(logits[:, test], labels[test]))  # not the test set
    expected = metrics.calibrated_metrics(logits[:, test], labels[test], temperature, config.ensemble)
    for key in ("nll_ts", "ece_ts", "brier_ts"):
        assert report[key] == pytest.approx(expected[key]), key
    assert report["calibration_images"] == 20 and report["calibration_split"] == 0.5
    assert report["nll"] == pytest.approx(metrics.evaluate_logits(logits[:, test], labels[test])["nll"])
    json.dumps(report, allow_nan=False)


def test_final_report_without_withheld_images_has_no_temperature():
    logits = torch.randn(2, 4, 3)
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    dataset = types.SimpleNamespace(test_images=images, test_labels=torch.tensor([0, 1, 2, 0]))
    config = apply(Config(), {"plots": False, "bf16": False}, "test")
    report = evaluate.final_report(FixedLogits(logits), dataset, config, [], out_dir=None)
    assert report["calibration_split"] == 0.0
    assert all(report[k] is None for k in ("temperature", "calibration_images", "nll_ts", "ece_ts", "brier_ts"))


def test_history_metrics_columns():
    test = metrics.evaluate_logits(torch.randn(3, 5, 4), torch.tensor([0, 1, 2, 3, 0]))
    row = evaluate.history_metrics(test)
    assert list(row) == ["test_accuracy", "test_nll", "test_accuracy_sub0", "test_accuracy_sub1", "test_accuracy_sub2",
                         "test_nll_sub0", "test_nll_sub1", "test_nll_sub2"]
    assert row["test_nll_sub1"] == test["subnetwork_nll"][1] and row["test_accuracy"] == test["ensemble_accuracy"]
