"""Hypothesis property tests over shapes and boxes (compiled CPU kernels vs reference)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mixshare_ops
from mixshare_ops import reference

pytestmark = pytest.mark.skipif("cpu" not in mixshare_ops.available_backends("cpu"), reason="C++ extension not built")
SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def grid_and_boxes(draw, max_batch=4, max_size=12):
    batch = draw(st.integers(0, max_batch))
    height = draw(st.integers(1, max_size))
    width = draw(st.integers(1, max_size))
    rows = []
    for _ in range(batch):
        top = draw(st.integers(0, height))
        left = draw(st.integers(0, width))
        rows.append([top, left, draw(st.integers(top, height)), draw(st.integers(left, width))])
    boxes = torch.tensor(rows, dtype=torch.int32).reshape(batch, 4)
    return batch, height, width, boxes


@SETTINGS
@given(st.lists(st.floats(0, 1), min_size=0, max_size=16), st.integers(1, 40), st.integers(1, 40), st.data())
def test_cutmix_boxes_area_is_mask_mean(lams, height, width, data):
    lam = torch.tensor(lams, dtype=torch.float32)
    center = torch.tensor(
        data.draw(st.lists(st.tuples(st.floats(0, 0.999), st.floats(0, 0.999)), min_size=len(lams), max_size=len(lams))),
        dtype=torch.float32,
    ).reshape(len(lams), 2)
    boxes, area = mixshare_ops.cutmix_boxes(lam, center, height, width, backend="cpu")
    ref_boxes, _ = reference.cutmix_boxes(lam, center, height, width)
    assert torch.equal(boxes, ref_boxes)
    mask = mixshare_ops.cutmix_mask(boxes, height, width, backend="cpu")
    torch.testing.assert_close(mask.mean(dim=(1, 2, 3)), area)
    # The box never exceeds the target ratio's side lengths (cut sizes are
    # float64, with the correctly rounded root of math.sqrt).
    for (top, left, bottom, right), value in zip(boxes.tolist(), lam.tolist()):
        assert bottom - top <= math.floor(height * math.sqrt(value))
        assert right - left <= math.floor(width * math.sqrt(value))


@SETTINGS
@given(grid_and_boxes(), st.integers(2, 4), st.integers(0, 5), st.booleans(), st.floats(-3, 3))
def test_box_mix_matches_reference(grid, subnets, channels, channels_last, scale):
    batch, height, width, boxes = grid
    x = torch.randn(subnets, batch, channels, height, width)
    if channels_last:
        x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    inside, outside = torch.rand(batch, subnets), torch.rand(batch, subnets)
    out = mixshare_ops.box_mix(x, boxes, inside, outside, scale, backend="cpu")
    torch.testing.assert_close(out, reference.box_mix(x, boxes, inside, outside, scale))


@SETTINGS
@given(grid_and_boxes(max_size=20), st.data(), st.floats(0, 1), st.booleans())
def test_unmix_matches_reference_and_partitions_features(grid, data, ratio, channels_last):
    batch, box_h, box_w, boxes = grid
    height = data.draw(st.integers(1, box_h))
    width = data.draw(st.integers(1, box_w))
    channels = data.draw(st.integers(0, 4))
    unmixed = data.draw(st.integers(0, channels))
    feats = torch.randn(batch, channels, height, width)
    if channels_last:
        feats = feats.to(memory_format=torch.channels_last)
    kw = dict(box_size=(box_h, box_w), ratio=ratio, channels=unmixed)
    out = mixshare_ops.cutmix_unmix(feats, boxes, backend="cpu", **kw)
    torch.testing.assert_close(out, reference.cutmix_unmix(feats, boxes, **kw))
    # Default weights form a partition of unity: with ratio 0 the two
    # subnetworks' unmixed maps add back up to the features.
    parts = mixshare_ops.cutmix_unmix(feats, boxes, box_size=(box_h, box_w), backend="cpu")
    torch.testing.assert_close(parts.sum(0), feats, rtol=1e-5, atol=1e-5)
    for normalize in ("mean", "masked"):
        pooled = mixshare_ops.cutmix_unmix_pool(feats, boxes, normalize=normalize, backend="cpu", **kw)
        torch.testing.assert_close(pooled, reference.cutmix_unmix_pool(feats, boxes, normalize=normalize, **kw))
