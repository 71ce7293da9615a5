"""MixViT: the ViT's shapes, token mixing on the patch grid, source attribution at training and test
time, presets and config errors, training end to end, the CLI with both ViT presets."""

import json
import math
import pathlib
import random

import pytest
import torch

import mixshare_ops
from mixshare import analysis, cli, methods, optim, train
from mixshare import config as cfg
from mixshare.models import build_model, model_family
from mixshare.vit import MimoViT, band_sources, sincos_position_embedding, source_weights
from tests.test_train import check_report_values

TINY_VIT = dict(
    dataset="synthetic", synthetic_train=48, synthetic_test=24, synthetic_classes=4, synthetic_size=12,
    model="vit-3-32", batch_size=12, epochs=2, progress=False, plots=False, eval_batch_size=24, warmup_epochs=0.5,
)


def tiny_vit(num_subnets=2, depth=3, dim=32, heads=2, classes=5, attribution_depth=2):
    torch.manual_seed(0)
    return MimoViT(classes, num_subnets, depth=depth, dim=dim, heads=heads, attribution_depth=attribution_depth).eval()


def cut_plan(model, batch, grid, seed=0):
    """A mixvit plan for ``batch`` samples on ``grid`` (the model's patch grid), as training draws it."""
    config = cfg.apply(cfg.Config(), dict(cfg.preset("mixvit"), num_subnets=model.num_subnets), "test")
    plan = methods.sample_plan(config, batch, grid, 0, torch.Generator().manual_seed(seed),
                               random.Random(seed), model.num_features, scale=model.mixing_scale)
    return plan, plan.loss_weights


def hand_owner(plan, b, r, c):
    """The input owning token (r, c) of sample b under a binary plan (M = 2)."""
    top, left, bottom, right = plan.boxes[b].tolist()
    weights = plan.inside[b] if top <= r < bottom and left <= c < right else plan.outside[b]
    assert sorted(weights.tolist()) == [0.0, 1.0]
    return int(weights.argmax())


class Recorder:
    """Forward hooks recording each call's positional inputs and output."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_hook(lambda _, args, out: self.calls.append((args, out)))

    def remove(self):
        self.handle.remove()


# --------------------------------------------------------------------------- the model


def test_names_sizes_and_shapes():
    tiny = build_model("vit-tiny", 100, num_subnets=2)
    assert isinstance(tiny, MimoViT) and (tiny.depth, tiny.num_features, len(tiny.blocks), len(tiny.class_blocks)) == (
        12, 192, 10, 2)
    count = sum(p.numel() for p in tiny.parameters())
    assert abs(count - 5.4e6) / 5.4e6 < 0.05, count  # DeiT-Tiny-sized (5.7M with its 197-token embedding)
    assert tiny.mixing_grid((32, 32)) == (8, 8) and tiny.mixing_scale == 1.0
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny.mixing_grid((30, 32))

    model = build_model("vit-3-32-2", 7, num_subnets=2)
    assert (model.depth, model.num_features, model.blocks[0].attn.heads) == (3, 32, 2)
    assert build_model("vit-4-128", 7, 1).blocks[0].attn.heads == 2  # default: dim // 64 heads
    images = torch.randn(2, 5, 3, 16, 16)
    assert model(images).shape == (2, 5, 7)
    plan, _ = cut_plan(model, 5, model.mixing_grid((16, 16)))
    assert model(images, plan).shape == (2, 5, 7)
    assert model.predict(images[0]).shape == (2, 5, 7)
    single = build_model("vit-3-32", 7, num_subnets=1)
    assert single.predict(images[0]).shape == (1, 5, 7)
    assert model_family("vit-tiny") == model_family("vit-6-128") == "vit" and model_family("wrn-28-2") == "cnn"


def test_unknown_names_and_bad_sizes_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model 'vit-small'.*wrn-<depth>-<width>.*vit-tiny.*vit-<depth>-<dim>"):
        build_model("vit-small", 10, 2)
    with pytest.raises(ValueError, match=r"attribution_depth must be in \[1, depth - 1\]"):
        build_model("vit-2-32", 10, 2)  # the default k = 2 leaves no shared block
    assert build_model("vit-2-32", 10, 2, attribution_depth=1).attribution_depth == 1
    with pytest.raises(ValueError, match="divisible"):
        build_model("vit-3-30-4", 10, 2)


def test_sincos_position_embedding():
    pos = sincos_position_embedding(3, 4, 16)
    assert pos.shape == (12, 16)
    # token n = r * w + c: the first half encodes the row, the second the column
    assert torch.equal(pos[1, :8], pos[0, :8]) and not torch.equal(pos[4, :8], pos[0, :8])
    assert torch.equal(pos[4, 8:], pos[0, 8:]) and not torch.equal(pos[1, 8:], pos[0, 8:])
    torch.testing.assert_close(pos[0], torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1] * 2))


# --------------------------------------------------------------------------- token mixing


def test_boxes_live_on_the_patch_grid_and_box_mix_copies_tokens():
    model = tiny_vit()
    images = torch.randn(2, 6, 3, 16, 16)
    grid = model.mixing_grid((16, 16))
    plan, weights = cut_plan(model, 6, grid)
    assert plan.scale == 1.0 and grid == (4, 4)
    assert torch.all(plan.boxes[:, :2] >= 0) and torch.all(plan.boxes[:, 2] <= 4) and torch.all(plan.boxes[:, 3] <= 4)
    assert torch.all(plan.boxes[:, 2:] >= plan.boxes[:, :2])
    tokens = model.embed(images)  # [M, B, D, h, w]
    assert tokens.shape == (2, 6, 32, 4, 4)
    mixed = mixshare_ops.box_mix(tokens, plan.boxes, plan.inside, plan.outside, plan.scale)
    hand = torch.empty_like(mixed)
    for b in range(6):
        for r in range(4):
            for c in range(4):
                hand[b, :, r, c] = tokens[hand_owner(plan, b, r, c), b, :, r, c]
    torch.testing.assert_close(mixed, hand, rtol=0, atol=0)  # copied, not averaged
    # the loss weights are the token shares (CutMix's area-proportional weights, root 1)
    share0 = torch.tensor([sum(hand_owner(plan, b, r, c) == 0 for r in range(4) for c in range(4)) / 16
                           for b in range(6)])
    torch.testing.assert_close(weights, 2 * torch.stack([share0, 1 - share0], 1))
    # the model's forward feeds exactly these tokens to the shared blocks
    first = Recorder(model.blocks[0])
    model(images, plan)
    first.remove()
    torch.testing.assert_close(first.calls[0][0][0], model.tokens(hand))


# --------------------------------------------------------------------------- source attribution


def test_training_attribution_follows_the_boxes():
    model = tiny_vit()
    images = torch.randn(2, 6, 3, 16, 16)
    plan, _ = cut_plan(model, 6, (4, 4), seed=3)
    shared_out, class_in = Recorder(model.blocks[-1]), Recorder(model.class_blocks[0])
    logits = model(images, plan)
    shared_out.remove(), class_in.remove()
    assert len(shared_out.calls) == 1 and len(class_in.calls) == 1
    (cls, patches, cls_source, patch_source, _), _ = class_in.calls[0]
    torch.testing.assert_close(patches, shared_out.calls[0][1])  # the shared blocks' tokens, unchanged
    e = model.source_embed.detach()
    assert patch_source.shape == (6, 16, 32)
    for b in range(6):
        for n in range(16):  # each token gets the embedding of the input its patch came from
            torch.testing.assert_close(patch_source[b, n], e[hand_owner(plan, b, n // 4, n % 4)])
    # class token i carries attribution i; the class tokens start as the one shared class token
    assert cls.shape == (6, 2, 32) and cls_source.shape[1:] == (2, 32)
    for i in range(2):
        torch.testing.assert_close(cls_source[:, i].expand(6, -1), e[i].expand(6, -1))
        torch.testing.assert_close(cls[:, i], model.cls_token[0, 0].expand(6, -1))
    # the attribution enters the attention inputs, after the block's LayerNorm
    block = model.class_blocks[0]
    attn_in = Recorder(block.attn)
    model(images, plan)
    attn_in.remove()
    (cls_in, patches_in, _), _ = attn_in.calls[0]
    torch.testing.assert_close(patches_in, block.norm1(patches) + patch_source)
    torch.testing.assert_close(cls_in, block.norm1(cls) + cls_source)
    # source_weights: the weights box_mix applies per token
    weights = source_weights(plan.boxes, plan.inside, plan.outside, (4, 4))
    assert weights.shape == (6, 16, 2)
    assert all(weights[b, n, hand_owner(plan, b, n // 4, n % 4)] == 1 for b in range(6) for n in range(16))
    torch.testing.assert_close(model.patch_attribution(weights), patch_source)
    # head i reads class token i
    features = model.attributed(patches, weights, torch.arange(2))
    torch.testing.assert_close(logits, torch.stack([model.heads[i](features[:, i]) for i in range(2)]))


def test_class_tokens_run_independently():
    """One pass with M class tokens equals M passes with one class token each."""
    model = tiny_vit(num_subnets=3)
    patches = torch.randn(4, 9, 32)
    weights = torch.softmax(torch.randn(4, 9, 3), dim=-1)
    together = model.attributed(patches, weights, torch.arange(3))
    for i in range(3):
        alone = model.attributed(patches, weights, torch.tensor([i]))
        torch.testing.assert_close(together[:, i], alone[:, 0], rtol=1e-5, atol=1e-6)


def test_test_time_shared_layers_once_then_one_attributed_pass_per_subnetwork():
    model = tiny_vit()
    images = torch.randn(5, 3, 16, 16)
    shared = [Recorder(block) for block in model.blocks]
    embed = Recorder(model.patch_embed)
    class_in = Recorder(model.class_blocks[0])
    logits = model.predict(images)
    for r in shared + [embed, class_in]:
        r.remove()
    assert len(embed.calls) == 1 and embed.calls[0][0][0].shape[0] == 5
    assert all(len(r.calls) == 1 and r.calls[0][0][0].shape[0] == 5 for r in shared)  # once, on B images
    (cls, patches, cls_source, patch_source, _), _ = class_in.calls[0]
    assert patches.shape == (2 * 5, 16, 32) and cls.shape == (2 * 5, 1, 32)  # M passes, batched
    shared_out = shared[-1].calls[0][1]
    e = model.source_embed.detach()
    for i in range(2):
        # pass i: the shared tokens, every one attributed to subnetwork i, and class token i
        torch.testing.assert_close(patches[i * 5:(i + 1) * 5], shared_out)
        torch.testing.assert_close(patch_source[i * 5:(i + 1) * 5], e[i].expand(5, 16, -1))
        torch.testing.assert_close(cls_source[i * 5:(i + 1) * 5, 0], e[i].expand(5, -1))
        ones = torch.zeros(5, 16, 2)
        ones[..., i] = 1
        alone = model.attributed(shared_out, ones, torch.tensor([i]))[:, 0]
        torch.testing.assert_close(logits[i], model.heads[i](alone), rtol=1e-5, atol=1e-6)
    # forward without a plan on the same image M times is the same test-time computation
    torch.testing.assert_close(model(images.expand(2, *images.shape)), logits, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter():
    model = tiny_vit().train()
    images = torch.randn(2, 6, 3, 16, 16)
    plan, weights = cut_plan(model, 6, (4, 4), seed=1)
    labels = torch.randint(0, 5, (2, 6))
    train.mimo_loss(model(images, plan), labels, weights).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    # each subnetwork's loss reaches its own head only, and the shared source embeddings
    model.zero_grad()
    model(images, plan)[0].sum().backward()
    assert model.heads[1].weight.grad is None or model.heads[1].weight.grad.abs().sum() == 0
    assert model.source_embed.grad[0].abs().sum() > 0


# --------------------------------------------------------------------------- presets and config


def test_presets_and_family_errors():
    assert set(cfg.VIT_PRESETS) == {"single-vit", "mixvit"}
    assert set(cfg.ALL_PRESETS) == set(cfg.PRESETS) | set(cfg.VIT_PRESETS)
    mixvit = cfg.apply(cfg.Config(model="vit-tiny"), cfg.preset("mixvit"), "")
    cfg.validate(mixvit)
    assert (mixvit.num_subnets, mixvit.mixing, mixvit.cut_prob, mixvit.attribution_depth) == (2, "cut", 1.0, 2)
    assert (mixvit.optimizer, mixvit.schedule, mixvit.weight_decay) == ("adamw", "cosine", 0.05)
    single = cfg.apply(cfg.Config(model="vit-6-96"), cfg.preset("single-vit"), "")
    cfg.validate(single)
    assert single.num_subnets == 1 and single.mixing == "none"
    with pytest.raises(cfg.ConfigError, match="method 'mixvit' needs a ViT model .*got model 'wrn-28-2'"):
        cfg.validate(cfg.apply(cfg.Config(), cfg.preset("mixvit"), ""))
    with pytest.raises(cfg.ConfigError, match="method 'cut-mixmo' is a CNN method.*ViT methods are single-vit, mixvit"):
        cfg.validate(cfg.apply(cfg.Config(model="vit-tiny"), cfg.preset("cut-mixmo"), ""))
    with pytest.raises(cfg.ConfigError, match="unmix applies to the CNNs"):
        cfg.validate(cfg.apply(mixvit, {"unmix": True}, ""))
    with pytest.raises(cfg.ConfigError, match="encoder_init applies to the CNNs"):
        cfg.validate(cfg.apply(mixvit, {"encoder_init": "identical"}, ""))
    with pytest.raises(cfg.ConfigError, match="optimizer must be one of sgd, adamw"):
        cfg.validate(cfg.apply(mixvit, {"optimizer": "lamb"}, ""))
    with pytest.raises(cfg.ConfigError, match="attribution_depth must be >= 1"):
        cfg.validate(cfg.apply(mixvit, {"attribution_depth": 0}, ""))
    with pytest.raises(ValueError, match="valid methods: single, mimo.*single-vit, mixvit"):
        cfg.preset("vit")


def test_optimisers_and_schedules():
    cnn = cfg.apply(cfg.Config(), cfg.preset("mixshare-fadeout"), "")
    assert (cnn.optimizer, cnn.schedule) == ("sgd", "step") and cnn.lr_value() == pytest.approx(0.025)
    sgd = optim.make_optimizer(build_model("wrn-10-1", 10, 2), cnn)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["weight_decay"] == pytest.approx(6e-4)
    vit = cfg.apply(cfg.Config(model="vit-3-32", epochs=10), cfg.preset("mixvit"), "")
    assert vit.lr_value() == pytest.approx(1e-3)
    model = build_model("vit-3-32", 10, 2)
    adamw = optim.make_optimizer(model, vit)
    assert isinstance(adamw, torch.optim.AdamW)
    decayed, undecayed = adamw.param_groups
    assert decayed["weight_decay"] == 0.05 and undecayed["weight_decay"] == 0.0
    assert any(p is model.source_embed for p in undecayed["params"])
    assert any(p is model.cls_token for p in undecayed["params"])
    assert all(p.dim() >= 2 for p in decayed["params"]) and any(p is model.heads[0].weight for p in decayed["params"])
    # cosine after a linear warmup of 5 epochs (320 images: 10 steps per epoch), 0 at the end
    factors = [optim.lr_factor(vit, s, 10, 320) for s in range(100)]
    assert factors[0] == pytest.approx(1 / 50) and factors[49] == pytest.approx(1.0)
    assert factors[50] == pytest.approx(1.0) and factors[75] == pytest.approx(0.5) and factors[-1] < 1e-3
    assert all(a >= b for a, b in zip(factors[50:], factors[51:]))
    # the CNNs' step schedule is unchanged
    assert optim.lr_factor(cnn, 100, 1, 32) == pytest.approx(0.1)


# --------------------------------------------------------------------------- analysis


def test_vit_analysis():
    model = tiny_vit(depth=4)
    images = torch.randn(6, 3, 16, 16)
    variances = analysis.conditional_variance(model, images, batch_size=4)
    names = model.stage_names()
    assert len(variances) == len(names) == 4  # shared blocks 1 and 2, then the two class-attention blocks
    assert [tuple(v.shape) for v in variances] == [(2, 32), (2, 32), (2, 64), (2, 64)]
    assert names[0] == "block 1 (patch tokens)" and names[-1] == "block 4, class attn. (class tokens)"
    assert all(torch.all(v > 0) for v in variances)
    onehot = band_sources(2, (4, 4))
    assert onehot[:, 0].view(4, 4)[:, :2].all() and onehot[:, 1].view(4, 4)[:, 2:].all()
    attention = analysis.source_attention(model, images, batch_size=4)
    assert attention.shape == (2, 2) and torch.all((attention > 0) & (attention < 1))
    report = analysis.feature_sharing_report(model)
    assert report["encoder_share_rate"] is None and "patch embedding" in report["encoder_share_rate_note"]
    assert len(report["classifier_profiles"]) == 2
    heads = torch.stack([head.weight.detach().double().abs().sum(0) for head in model.heads])  # [M, C_final]
    assert report["classifier_share_rate"] == pytest.approx(100.0 * float(heads.amin(0).sum() / heads.amax(0).sum()))
    assert analysis.share_rates(model)["encoder_share_rate"] is None
    json.dumps(report)


# --------------------------------------------------------------------------- end to end


def test_mixvit_trains_on_digits_and_writes_vit_metrics_and_plots(tmp_path):
    config = cfg.apply(cfg.Config(), cfg.preset("mixvit"), "mixvit")
    config = cfg.apply(config, dict(dataset="digits", model="vit-3-32", epochs=1, batch_size=64, batch_repetition=1,
                                    progress=False, warmup_epochs=0.5), "test")
    report = train.train(config, str(tmp_path))
    state = train.load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert state["epoch"] == 1 and math.isfinite(state["history"][0]["train_loss"])
    assert len(report["subnetwork_accuracy"]) == 2 and report["encoder_share_rate"] is None
    assert "encoder_share_rate_note" in report
    check_report_values(config, tmp_path, report)
    assert len(report["source_attention"]) == 2 and len(report["source_attention"][0]) == 2
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["method"] == "mixvit" and saved["model"] == "vit-3-32"
    for name in ("training_curves", "classifier_profiles", "conditional_variance"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "encoder_profiles.png").exists()


def test_killed_and_resumed_vit_run_ends_with_the_same_weights(tmp_path):
    config = cfg.apply(cfg.apply(cfg.Config(), cfg.preset("mixvit"), ""), dict(TINY_VIT, drop_path=0.1), "")
    train.train(config, str(tmp_path / "full"))
    train.train(config, str(tmp_path / "resumed"), stop_after_epoch=1)
    train.train(config, str(tmp_path / "resumed"), resume=True)
    full = train.load_checkpoint(str(tmp_path / "full" / "checkpoint.pt"))
    resumed = train.load_checkpoint(str(tmp_path / "resumed" / "checkpoint.pt"))
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_cli_train_eval_analyze_and_compare_both_vit_presets(tmp_path, capsys):
    args = ["--no-progress", "--set"] + [f"{k}={v}" for k, v in TINY_VIT.items()]
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), *args]) == 0  # a ViT model defaults to mixvit
    printed = json.loads(capsys.readouterr().out)
    assert printed["encoder_share_rate"] is None and len(printed["subnetwork_accuracy"]) == 2
    assert cli.main(["eval", str(out / "checkpoint.pt")]) == 0
    evaluated = json.loads(capsys.readouterr().out)  # the trained run's figures, measured again
    for key in ("ensemble_accuracy", "nll", "classifier_share_rate"):
        assert evaluated[key] == pytest.approx(printed[key], rel=1e-6), key
    assert cli.main(["analyze", str(out / "checkpoint.pt"), "--out", str(tmp_path / "an"), "--num-images", "8"]) == 0
    analysed = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert len(analysed["conditional_variance"]) == len(analysed["conditional_variance_stages"]) == 3
    assert len(analysed["source_attention"]) == 2 and (tmp_path / "an" / "conditional_variance.png").exists()
    capsys.readouterr()
    assert cli.main(["compare", "--methods", "single-vit", "mixvit", "--seeds", "0", "--out", str(tmp_path / "cmp"),
                     *args, "epochs=1"]) == 0
    table = capsys.readouterr().out
    assert "| single-vit |" in table and "| mixvit |" in table
    assert all(line.split("|")[5].strip() == "n/a" for line in table.splitlines() if "vit |" in line)
    assert (tmp_path / "cmp" / "compare.md").read_text().startswith("# synthetic, vit-3-32")
    err = tmp_path / "err"
    assert cli.main(["train", "--method", "mixvit", "--out", str(err), "--no-progress", "--model", "wrn-10-1"]) == 2
    assert "needs a ViT model" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["mixvit", "single-vit"])
def test_cifar_vit_configs_are_valid(method):
    path = pathlib.Path(__file__).parents[1] / "configs" / f"cifar100-vit-tiny-{method}.yaml"
    args = cli.make_parser().parse_args(["train", "--config", str(path), "--out", "unused"])
    config = cli.build_config(args)
    assert (config.method, config.model, config.dataset, config.optimizer) == (method, "vit-tiny", "cifar100", "adamw")
