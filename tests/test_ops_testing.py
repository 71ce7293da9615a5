"""mixshare_ops.testing: the boxes, layouts and tolerances the tests and the benchmarks' checks share."""

import pytest
import torch

from mixshare_ops import _layout, testing
from tests import cases


def test_tests_and_benchmarks_use_the_one_definition():
    from benchmarks import gpu_edge

    assert cases.TOLERANCES is testing.TOLERANCES and cases.make_boxes is testing.make_boxes
    assert gpu_edge.make_boxes is testing.make_boxes and gpu_edge.assert_close is testing.assert_close


@pytest.mark.parametrize("kind", testing.BOX_KINDS)
def test_make_boxes_lie_on_the_grid(kind):
    boxes = testing.make_boxes(7, 6, 9, kind, torch.Generator().manual_seed(1))
    assert boxes.dtype == torch.int32 and boxes.shape == (7, 4)
    top, left, bottom, right = boxes.long().unbind(1)
    assert bool(((0 <= top) & (top <= bottom) & (bottom <= 6) & (0 <= left) & (left <= right) & (right <= 9)).all())
    area = (bottom - top) * (right - left)
    if kind == "empty":
        assert bool((area == 0).all())
    if kind == "full":
        assert bool((area == 54).all())
    if kind == "mixed":
        assert area[0] == 54 and area[1] == 0 and tuple(boxes[1, :2].tolist()) != (0, 0)


def test_make_boxes_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of random, empty, full, mixed, got 'some'"):
        testing.make_boxes(2, 4, 4, "some", torch.Generator())


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 2, 3, 4, 5)])
def test_to_layout(shape):
    t = torch.randn(shape)
    last = testing.to_layout(t, channels_last=True)
    assert torch.equal(last, t)
    if len(shape) == 4:
        assert last.is_contiguous(memory_format=torch.channels_last)
    else:
        assert _layout.stacked_layout(last)[1] == _layout.CHANNELS_LAST
    assert testing.to_layout(t.transpose(0, 1), channels_last=False).stride() == t.transpose(0, 1).stride()


def test_assert_close_uses_the_dtype_tolerance():
    x = torch.ones(4, dtype=torch.float16)
    testing.assert_close(x + 1e-3, x)  # float16: atol 2e-3
    with pytest.raises(AssertionError):
        testing.assert_close(x.float() + 1e-3, x.float())  # float32: atol 1e-5
