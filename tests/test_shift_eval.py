"""Robust prediction where users see it: shift_report (metrics.json's cAcc, cNLL, cECE, OOD, ms/example),
``mixshare eval --shift``, ``shift_eval`` in a run, compare's columns and its severity figure."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from mixshare import cli, corruptions, evaluate, metrics, plots, shift
from mixshare.data import load_data, load_digits
from mixshare.models import model_from_config
from mixshare.seeds import stream_seed
from tests.test_plots import check_layout, figures  # noqa: F401 - figures is a fixture
from tests.test_train import TINY_ARGS, tiny_config

FEW = dict(corruptions=["gaussian_noise", "contrast"], severities=[1, 3])


@pytest.fixture(scope="module")
def tiny():
    """An untrained cut-mixmo WRN-10-1 on the tiny synthetic data (values outside [0, 1] in pixel space)."""
    torch.manual_seed(0)
    config = tiny_config("cut-mixmo", device="cpu")
    dataset = load_data(config)
    model = model_from_config(config, dataset.num_classes).eval()
    return config, dataset, model


def test_pixel_space_inverts_the_normalisation():
    digits = load_digits()
    pixels, mean, std = evaluate.pixel_space(digits)
    assert pixels.min() >= 0 and pixels.max() <= 1 and (mean, std) == (digits.mean, digits.std)
    torch.testing.assert_close(shift.to_model_input(pixels, mean, std), digits.test_images, atol=1e-5, rtol=0)


def test_pixel_space_maps_synthetic_values_onto_the_unit_range(tiny):
    _, dataset, _ = tiny
    raw = dataset.test_images * torch.tensor(dataset.std).view(1, -1, 1, 1) + torch.tensor(dataset.mean).view(1, -1, 1, 1)
    assert raw.min() < 0 or raw.max() > 1  # the case the affine map is for
    pixels, mean, std = evaluate.pixel_space(dataset)
    assert pixels.min() >= 0 and pixels.max() <= 1
    torch.testing.assert_close(shift.to_model_input(pixels, mean, std), dataset.test_images, atol=1e-4, rtol=0)


def test_ood_stand_in_is_grey_photograph_patches_like_the_digits():
    digits = load_digits()
    config = tiny_config("single", dataset="digits")
    name, ood = evaluate.ood_set(digits, config)
    assert name == evaluate.OOD_PHOTOGRAPHS
    assert ood.shape == digits.test_images.shape and ood.dtype == torch.float32
    assert ood.min() >= 0 and ood.max() <= 1 and ood.std() > 0.05
    assert torch.equal(ood, ood[:, :1].expand_as(ood))  # grey, as the digits are
    assert torch.equal(ood, evaluate.photograph_patches(digits.num_test, 3, (32, 32), stream_seed(config.seed, "ood"),
                                                        gray=True))
    normalised = shift.to_model_input(ood, digits.mean, digits.std)
    assert torch.isfinite(normalised).all() and normalised.shape == digits.test_images.shape
    # seeded from the run's seed; colour for a colour dataset
    assert torch.equal(evaluate.ood_set(digits, config)[1], ood)
    assert not torch.equal(evaluate.ood_set(digits, tiny_config("single", dataset="digits", seed=1))[1], ood)
    colour = evaluate.photograph_patches(8, 3, (12, 12), seed=0)
    assert colour.shape == (8, 3, 12, 12) and not torch.equal(colour, colour[:, :1].expand_as(colour))


def test_ood_set_of_cifar_reads_svhn_when_cifar10_is_absent(tmp_path, tiny):
    from scipy.io import savemat

    _, dataset, _ = tiny
    rng = np.random.default_rng(0)
    savemat(tmp_path / "test_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, 30), dtype=np.uint8),
                                          "y": rng.integers(1, 11, (30, 1))})
    fake = dataclasses.replace(dataset, name="cifar100", test_images=torch.zeros(20, 3, 32, 32),
                               mean=(0.5,) * 3, std=(0.25,) * 3)
    name, ood = evaluate.ood_set(fake, tiny_config("single", dataset="cifar100", data_dir=str(tmp_path)))
    assert name == "svhn test" and ood.shape == (20, 3, 32, 32) and 0 <= ood.min() and ood.max() <= 1


def test_shift_report_keys_units_and_values(tiny):
    config, dataset, model = tiny
    report = evaluate.shift_report(model, dataset, config, cost_repeats=1, **FEW)
    for key in ("cAcc", "cNLL", "cECE", "ood_auroc", "ood_aupr_in", "ood_aupr_out", "ood_fpr95", "ms_per_example"):
        assert isinstance(report[key], float) and math.isfinite(report[key]), key
    assert set(report["shift_by_severity"]) == {"0", "1", "3"}
    assert set(report["ood_scores"]) == {"msp", "entropy", "mutual_information"}
    assert report["ood_auroc"] == report["ood_scores"]["msp"]["auroc"]
    assert report["shift_images"] == dataset.num_test and report["ood_images"] == dataset.num_test
    assert report["ood_dataset"] == evaluate.OOD_PHOTOGRAPHS and report["ms_per_example"] > 0
    json.dumps(report)  # metrics.json can hold it

    # cAcc, cNLL, cECE: means over the sets, each made independently here with the run's seed
    pixels, mean, std = evaluate.pixel_space(dataset)
    rows = []
    with torch.no_grad():
        for name in FEW["corruptions"]:
            for severity in FEW["severities"]:
                images = corruptions.corrupt(pixels, name, severity,
                                             generator=torch.Generator().manual_seed(config.seed))
                probs = metrics.ensemble_probs(model.predict(shift.to_model_input(images, mean, std)))
                rows.append((metrics.accuracy(probs, dataset.test_labels), metrics.nll(probs, dataset.test_labels),
                             metrics.ece(probs, dataset.test_labels)))
    acc, nll, ece = (sum(column) / len(rows) for column in zip(*rows))
    assert report["cAcc"] == pytest.approx(acc, abs=1e-9)
    assert report["cNLL"] == pytest.approx(nll, rel=1e-5)
    assert report["cECE"] == pytest.approx(ece, abs=1e-3)
    # OOD, in percent: the maximum softmax probability of the clean test images against the OOD patches,
    # AUROC as the probability that an OOD patch scores above a test image (ties 1/2), FPR95 as the
    # fraction of patches accepted at the strictest threshold accepting 95% of the test images
    with torch.no_grad():
        patches = evaluate.photograph_patches(dataset.num_test, 3, tuple(pixels.shape[-2:]),
                                              seed=stream_seed(config.seed, "ood"))
        score_in = -torch.softmax(model.predict(dataset.test_images).double().mean(0), -1).amax(-1)
        score_out = -torch.softmax(model.predict(shift.to_model_input(patches, mean, std)).double().mean(0),
                                   -1).amax(-1)
    above = (score_out[:, None] > score_in[None, :]).double() + 0.5 * (score_out[:, None] == score_in[None, :])
    assert report["ood_auroc"] == pytest.approx(100.0 * above.mean().item(), abs=1e-6)
    threshold = score_in.sort().values[math.ceil(0.95 * dataset.num_test) - 1]
    assert report["ood_fpr95"] == pytest.approx(100.0 * (score_out <= threshold).double().mean().item(), abs=1e-6)
    # severity 0 is the clean path
    clean = evaluate.evaluate_model(model, dataset.test_images, dataset.test_labels, config)
    assert report["shift_by_severity"]["0"]["accuracy"] == pytest.approx(clean["ensemble_accuracy"])
    assert report["shift_by_severity"]["0"]["nll"] == pytest.approx(clean["nll"], rel=1e-6)


def test_shift_report_subsamples_the_corrupted_sets(tiny):
    config, dataset, model = tiny
    report = evaluate.shift_report(model, dataset, config, corruptions=["brightness"], severities=[2], max_images=10,
                                   cost_repeats=1)
    assert report["shift_images"] == 10 and report["ood_images"] == dataset.num_test
    assert report["shift_by_severity"]["0"]["accuracy"] * 10 / 100 == pytest.approx(
        round(report["shift_by_severity"]["0"]["accuracy"] * 10 / 100))  # accuracy of 10 images


def _report(method, acc, nll, ood=None, ms=None, severity=None):
    r = {"ensemble_accuracy": acc, "subnetwork_accuracy": [acc], "classifier_share_rate": 100.0,
         "encoder_share_rate": 100.0, "nll": nll, "ece": 2.0, "model": "wrn-10-1", "dataset": "digits"}
    if ood is not None:
        r.update(cAcc=acc - 20, cNLL=nll + 1, cECE=12.5, ood_auroc=ood, ms_per_example=ms,
                 shift_by_severity=severity, forward_passes=1)
    return r


def _severity(acc, nll):
    return {str(s): {"accuracy": acc - 8 * s, "nll": nll + 0.3 * s, "ece": 1.0 + s} for s in range(6)}


def test_comparison_table_shift_columns():
    plain = {"single": [_report("single", 95.0, 0.2)]}
    assert "cAcc" not in cli.comparison_table(plain) and "ms/example" not in cli.comparison_table(plain)
    results = {"single": [_report("single", 95.0, 0.2, 80.0, 0.5, _severity(95, 0.2))],
               "cut-mixmo": [_report("cut-mixmo", 96.0, 0.15, 84.0, 0.6, _severity(96, 0.15)),
                             _report("cut-mixmo", 97.0, 0.15)]}
    lines = cli.comparison_table(results).splitlines()
    assert "| cAcc (%) | cNLL | cECE (%) | AUROC (%) | ms/example | passes |" in lines[0]
    assert lines[2].endswith("| 75.0 | 1.200 | 12.50 | 80.0 | 0.500 | 1 | 1 |")
    assert lines[3].endswith("| 76.0 | 1.150 | 12.50 | 84.0 | 0.600 | 1 | 2 |")  # the run without them left out
    # mCE after cECE; the side-by-side cost, where given, in place of the runs' own timings
    lines = cli.comparison_table(results, mce={"single": [100.0], "cut-mixmo": [80.0, None]},
                                 costs={"cut-mixmo": {"ms_per_example": 0.25, "forward_passes": 1}}).splitlines()
    assert "| cAcc (%) | cNLL | cECE (%) | mCE (%) | AUROC (%) | ms/example | passes |" in lines[0]
    assert lines[2].endswith("| 75.0 | 1.200 | 12.50 | 100.0 | 80.0 | 0.500 | 1 | 1 |")
    assert lines[3].endswith("| 76.0 | 1.150 | 12.50 | 80.0 | 84.0 | 0.250 | 1 | 2 |")


def test_corruption_errors_against_the_baseline_method():
    """mCE per run: per corruption the run's error over the baseline's (its runs' accuracy averaged over
    seeds), averaged over corruptions, in percent; None where the corrupted sets differ."""
    def run(fog, snow, severities=(1, 2)):
        return {"shift_corruptions": ["fog", "snow"], "shift_severities": list(severities),
                "shift_by_corruption": {"fog": {"accuracy": fog}, "snow": {"accuracy": snow}}}

    results = {"single": [run(60.0, 80.0), run(40.0, 60.0)],  # baseline errors: fog 50, snow 30
               "mixshare": [run(75.0, 85.0), run(50.0, 70.0, severities=(1,)), {"cAcc": None}]}
    mce = cli.corruption_errors(results, "single")
    assert mce["single"] == pytest.approx([(40 / 50 + 20 / 30) / 2 * 100, (60 / 50 + 40 / 30) / 2 * 100])
    assert mce["mixshare"][0] == pytest.approx((25 / 50 + 15 / 30) / 2 * 100)
    assert mce["mixshare"][1:] == [None, None]
    assert cli.corruption_errors(results, "no-such-method") == {}


def test_severity_figure(tmp_path, figures):  # noqa: F811
    results = {"single": [_report("s", 95.0, 0.2, 80.0, 0.5, _severity(95, 0.2)),
                          _report("s", 93.0, 0.3, 81.0, 0.5, _severity(93, 0.3))],
               "mixshare-fadeout": [_report("m", 97.0, 0.1, 85.0, 0.6, _severity(97, 0.1))],
               "no-shift": [_report("n", 90.0, 0.4)]}
    plots.plot_severity(results, tmp_path / "severity.png", title="digits, wrn-10-1, seeds [0, 1]: under corruption")
    fig = figures[-1]
    assert check_layout(fig) == []
    assert (tmp_path / "severity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [ax.get_ylabel() for ax in fig.axes] == [label for _, label in plots.SEVERITY_PANELS]
    accuracy, nll = fig.axes
    assert len(accuracy.lines) == 2  # one line per method with values
    single = accuracy.lines[0]
    assert list(single.get_xdata()) == [0, 1, 2, 3, 4, 5]
    assert list(single.get_ydata()) == pytest.approx([94 - 8 * s for s in range(6)])  # mean over the seeds
    assert list(nll.lines[1].get_ydata()) == pytest.approx([0.1 + 0.3 * s for s in range(6)])
    assert [t.get_text() for t in accuracy.get_xticklabels()][0] == "clean"
    assert fig._suptitle.get_text().startswith("digits, wrn-10-1")


def test_shift_eval_run_compare_and_eval_shift_cli(tmp_path, capsys):
    """shift_eval in two compare runs (all 15 corruptions on 12 x 12 images): metrics.json's keys, the
    table's columns and the severity figure; then ``eval --shift`` on one checkpoint."""
    out = tmp_path / "cmp"
    assert cli.main(["compare", "--methods", "single", "cut-mixmo", "--seeds", "0", "--out", str(out),
                     *TINY_ARGS, "shift_eval=true"]) == 0
    printed = capsys.readouterr()
    assert "cAcc (%)" in printed.out and "ms/example" in printed.out
    assert "[shift 15/15] jpeg_compression" in printed.err
    saved = json.loads((out / "cut-mixmo" / "seed0" / "metrics.json").read_text())
    assert saved["shift_corruptions"] == list(corruptions.CORRUPTIONS) and saved["shift_severities"] == [1, 2, 3, 4, 5]
    assert saved["shift_by_severity"]["0"]["accuracy"] == pytest.approx(saved["ensemble_accuracy"])
    assert (out / "compare_severity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # mCE against single (itself: 100) and the two runs timed side by side in one process
    header, _, single_row, mixmo_row = printed.out.split("== the cost of a prediction")[1].splitlines()[1:5]
    assert "| mCE (%) |" in header and single_row.split("|")[header.split("|").index(" mCE (%) ")] == " 100.0 "
    costs = json.loads((out / "compare_costs.json").read_text())
    assert set(costs) == {"single", "cut-mixmo"} and costs["single"]["forward_passes"] == 1
    assert costs["cut-mixmo"]["parameters"] > costs["single"]["parameters"]  # M encoders and heads
    assert f"| {costs['cut-mixmo']['ms_per_example']:.3f} | 1 |" in mixmo_row
    assert cli.main(["compare", "--methods", "single", "--seeds", "0", "--out", str(out), "--mce-baseline",
                     "cut-mixmo", *TINY_ARGS, "shift_eval=true"]) == 2
    assert "--mce-baseline cut-mixmo is not among the methods compared (single)" in capsys.readouterr().err

    checkpoint = str(out / "cut-mixmo" / "seed0" / "checkpoint.pt")
    assert cli.main(["eval", checkpoint, "--shift", "--corruptions", "gaussian_noise", "fog",
                     "--severities", "1", "5"]) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out)
    assert report["shift_corruptions"] == ["gaussian_noise", "fog"] and set(report["shift_by_severity"]) == {"0", "1", "5"}
    assert report["ensemble_accuracy"] == pytest.approx(saved["ensemble_accuracy"])
    assert report["ood_auroc"] == pytest.approx(saved["ood_auroc"])  # same seed, same OOD set
    assert "[shift 1/2] gaussian_noise" in printed.err and "[shift 2/2] fog" in printed.err
    assert cli.main(["eval", checkpoint, "--shift", "--corruptions", "rain"]) == 2
    assert "unknown corruption 'rain'" in capsys.readouterr().err
    assert cli.main(["eval", checkpoint, "--corrupted-dir", str(tmp_path)]) == 2
    assert "pass --shift too" in capsys.readouterr().err
    assert cli.main(["eval", checkpoint, "--shift", "--corrupted-dir", str(tmp_path)]) == 2
    assert "the released corrupted sets are CIFAR-10-C / CIFAR-100-C; this is a synthetic run" in \
        capsys.readouterr().err


def test_released_corrupted_sets_give_the_shift_columns(tmp_path, capsys):
    """eval --shift --corrupted-dir: cAcc is the mean accuracy over the released files' sets, each
    scored by hand here; a run of another dataset, or the folder without --shift, is refused."""
    import dataclasses

    import numpy as np

    from mixshare import data as mdata, metrics as mmetrics, shift as mshift
    from mixshare.evaluate import collect_logits, pixel_space, released_shift_report
    from mixshare.models import model_from_config
    from tests.test_train import tiny_config

    config = tiny_config("single", synthetic_size=8, synthetic_classes=4)
    dataset = mdata.load_data(config)
    model = model_from_config(config, dataset.num_classes).eval()
    n = dataset.test_labels.shape[0]
    gen = np.random.default_rng(0)
    for name in ("fog", "snow"):
        np.save(tmp_path / f"{name}.npy", gen.integers(0, 256, (5 * n, 8, 8, 3), dtype=np.uint8))
    np.save(tmp_path / "labels.npy", np.tile(dataset.test_labels.numpy(), 5))
    as_cifar = dataclasses.replace(config, dataset="cifar10")
    report = released_shift_report(model, dataset, as_cifar, str(tmp_path), corruptions=["fog", "snow"],
                                   severities=[1, 3])
    _, mean, std = pixel_space(dataset)
    accuracies = []
    for name in ("fog", "snow"):
        images, labels = mshift.read_cifar_c(tmp_path, name, [1, 3])
        for block in images:
            logits = collect_logits(model, mshift.to_model_input(block, mean, std))
            accuracies.append(mmetrics.accuracy(mmetrics.ensemble_probs(logits, config.ensemble), labels))
    assert report["cAcc"] == pytest.approx(sum(accuracies) / 4)
    assert set(report["shift_by_severity"]) == {"0", "1", "3"} and report["shift_images"] == n
    with pytest.raises(ValueError, match="this is a synthetic run"):
        released_shift_report(model, dataset, config, str(tmp_path))
