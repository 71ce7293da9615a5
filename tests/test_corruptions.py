"""The corruptions against the ``imagecorruptions`` package (ImageNet-C parameters) and against
make_cifar_c.py's definitions (CIFAR parameters), plus their contracts (seeding, shapes, range).

Random corruptions are compared draw for draw: the module's random draws are recorded and fed to
the reference in place of ``np.random`` (per image, in the reference's order), so both compute
from the same random numbers and only the arithmetic is compared.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixshare import corruptions as C

ic = pytest.importorskip("imagecorruptions.corruptions", reason="pip install imagecorruptions (test-only reference)")
cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")
ndimage = pytest.importorskip("scipy.ndimage")

# ImageNet-C parameters as the imagecorruptions package (1.1.2) defines them, in this module's units.
IMAGENET = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "shot_noise": (60, 25, 12, 5, 3),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
    "zoom_blur": tuple(tuple(np.arange(1, stop, step)) for stop, step in
                       ((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03))),
    "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
             (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
    "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
    "jpeg_compression": (25, 18, 15, 10, 7),
}
ELASTIC_ALPHA = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)

# Largest |ours - imagecorruptions| (pixel values in [0, 1]) per corruption, on the same images,
# severity and random draws, and why it is not 0.
TOLERANCE = {
    "gaussian_noise": (1e-12, "float64 both: rounding only"),
    "shot_noise": (1e-12, "float64 both"),
    "impulse_noise": (0.0, "exact: the same values set to 0 or 1"),
    "defocus_blur": (1e-6, "OpenCV filters with a float32 kernel"),
    "glass_blur": (1e-12, "float64 both; the same uint8 truncation between the blurs"),
    "motion_blur": (1e-12, "float64 both"),
    "zoom_blur": (1e-6, "the reference zooms a float32 image"),
    "snow": (1e-6, "the reference's image and zoom are float32 (a rounding tie of the uint8 step could "
                   "flip one level, 1/255; it does not on these images)"),
    "frost": (1e-12, "float64 both, the same frost pictures (the reference's resize is in the test)"),
    "fog": (1e-12, "float64 both"),
    "brightness": (1e-12, "HSV round trip vs scaling by V'/V: rounding only"),
    "contrast": (1e-12, "float64 both"),
    "elastic_transform": (1e-6, "the reference samples a float32 image"),
    "pixelate": (1 / 255 + 1e-9, "Pillow rounds to uint8 after its first pass, we do not"),
    "jpeg_compression": (0.0, "the same codec (Pillow) on the same uint8 pixels"),
}


def smooth_images(n=2, size=(32, 32), channels=3, seed=0, dtype=torch.float64):
    """Natural-looking test images: smooth colour fields plus fine texture, on uint8 levels, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, 5, 5, generator=g, dtype=torch.float64)
    x = F.interpolate(low, size=size, mode="bicubic", align_corners=False)
    x = x + 0.1 * torch.rand(n, channels, *size, generator=g, dtype=torch.float64)
    return (x.clamp(0, 1) * 255).round().div(255).to(dtype)


def to_pil(image: torch.Tensor):
    return Image.fromarray((image.permute(1, 2, 0).double() * 255).round().byte().numpy())


def as_unit(result) -> np.ndarray:
    """The reference's output (float 0..255 array or PIL image) as float64 HWC in [0, 1]."""
    return np.asarray(result, dtype=np.float64) / 255.0


# --------------------------------------------------------------------------- replaying our draws


class Recorder:
    """Records every random draw of mixshare.corruptions (name, args, result)."""

    def __init__(self, monkeypatch):
        self.calls = []
        for name in ("_normal", "_uniform", "_randint", "_randint_below", "_poisson"):
            monkeypatch.setattr(C, name, self._wrap(name, getattr(C, name)))

    def _wrap(self, name, fn):
        def recorded(*args, **kwargs):
            out = fn(*args, **kwargs)
            self.calls.append((name, args, out))
            return out
        return recorded

    def drawn(self, name):
        return [(args, out) for n, args, out in self.calls if n == name]


class FakeRandom:
    """Stands in for ``np.random`` (and a ``default_rng`` Generator): returns queued values in order."""

    def __init__(self, **queues):
        self.queues = {k: list(v) for k, v in queues.items()}

    def _pop(self, kind, size=None):
        assert self.queues.get(kind), f"the reference drew more {kind} values than we did"
        value = self.queues[kind].pop(0)
        if size is not None:
            assert np.shape(value) == tuple(np.atleast_1d(size)), (kind, np.shape(value), size)
        return value

    def normal(self, loc=0.0, scale=1.0, size=None):
        return loc + scale * self._pop("normal", size)

    def uniform(self, low=0.0, high=1.0, size=None):
        value = self._pop("uniform", size)
        assert np.all(value >= low) and np.all(value < high)
        return value

    def randint(self, low, high=None, size=None):
        value = self._pop("randint", size)
        lo, hi = (0, low) if high is None else (low, high)
        assert np.all(value >= lo) and np.all(value < hi), (value, lo, hi)
        return value

    def poisson(self, lam=1.0, size=None):
        rate, value = self._pop("poisson")
        np.testing.assert_allclose(lam, rate, rtol=1e-12)
        return value

    def random(self, size=None):
        return self._pop("random", size)

    def default_rng(self, seed=None):
        return self

    def check_used(self):
        assert not any(self.queues.values()), "we drew values the reference did not use"


class NumpyWith:
    """``numpy`` with ``random`` replaced (and numpy 1's ``float_``, which imagecorruptions 1.1.2 uses)."""

    def __init__(self, fake):
        self.random = fake
        self.float_ = np.float64

    def __getattr__(self, name):
        return getattr(np, name)


def hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy() if t.dim() == 3 else t.numpy()


def queues_for(name, rec, i, severity):
    """Our recorded draws for image i, as the reference asks for them."""
    if name == "gaussian_noise":
        return {"normal": [hwc(rec.drawn("_normal")[0][1][i])]}
    if name == "shot_noise":
        (rates, _), counts = rec.drawn("_poisson")[0]
        return {"poisson": [(hwc(rates[i]), hwc(counts[i]))]}
    if name == "impulse_noise":
        return {"random": [hwc(out[i]) for _, out in rec.drawn("_uniform")]}
    if name == "glass_blur":
        return {"randint": [row.numpy() for _, out in rec.drawn("_randint") for row in out[i].reshape(-1, 2)]}
    if name == "motion_blur":
        return {"uniform": [float(rec.drawn("_uniform")[0][1][i])]}
    if name == "snow":
        return {"normal": [rec.drawn("_normal")[0][1][i, 0].numpy()],
                "uniform": [float(rec.drawn("_uniform")[0][1][i])]}
    if name == "frost":
        which = rec.drawn("_randint")[0][1][i]
        starts = [int(out[i]) for _, out in rec.drawn("_randint_below")]
        return {"randint": [int(which)] + starts}
    if name == "fog":
        return {"uniform": [out[i].numpy() for _, out in rec.drawn("_uniform")]}
    if name == "elastic_transform":
        max_d = 32 * 0.005
        return {"uniform": [out[i].numpy() * max_d for _, out in rec.drawn("_uniform")]}
    return {}


def skimage_gaussian(image, sigma=1.0, multichannel=None, **kwargs):
    """imagecorruptions 1.1.2 calls skimage's removed ``multichannel=``; current skimage: ``channel_axis``."""
    from skimage.filters import gaussian
    if multichannel:
        kwargs["channel_axis"] = -1
    return gaussian(image, sigma=sigma, **kwargs)


@functools.lru_cache(maxsize=1)
def imagecorruptions_frost_pictures(size=(32, 32)):
    """The pictures as imagecorruptions prepares them for an image of ``size``: 1.1x, INTER_CUBIC, RGB."""
    import os
    folder = os.path.join(os.path.dirname(ic.__file__), "frost")
    pictures = []
    for name in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"):
        bgr = cv2.imread(os.path.join(folder, name))
        shape = (int(np.ceil(bgr.shape[1] * 1.1)), int(np.ceil(bgr.shape[0] * 1.1)))
        big = cv2.resize(bgr, dsize=shape, interpolation=cv2.INTER_CUBIC)
        pictures.append(torch.from_numpy(big[..., ::-1].copy()).permute(2, 0, 1).double() / 255)
    return pictures


def ours_with_imagenet_params(name, images, severity, generator):
    """Our function with the ImageNet-C parameters (and imagecorruptions' variant of a step where
    the two packages differ in more than parameters)."""
    fn = C.CORRUPTIONS[name]
    if name == "elastic_transform":
        # imagecorruptions: alpha * gaussian(U(-d, d)) with d = 0.005 * 32, i.e. ours with alpha * d
        # (our field is drawn from U(-1, 1)), sigma 0.01 * 32 and no affine step.
        alpha = ELASTIC_ALPHA[severity - 1] * 32 * 0.005
        return fn(images, severity, generator, params=(alpha, 32 * 0.01, 0.0))
    params = IMAGENET[name][severity - 1]
    extra = {"zoom_blur": {"_centre": False}, "snow": {"_variant": "imagecorruptions"},
             "frost": {"pictures": imagecorruptions_frost_pictures()},
             "pixelate": {"_upsample": "nearest"}}.get(name, {})
    return fn(images, severity, generator, params=params, **extra)


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_against_imagecorruptions(name, monkeypatch):
    images = smooth_images(n=2)
    monkeypatch.setattr(ic, "gaussian", skimage_gaussian)
    worst = 0.0
    for severity in C.SEVERITIES:
        rec = Recorder(monkeypatch)
        ours = ours_with_imagenet_params(name, images, severity, torch.Generator().manual_seed(severity))
        for i in range(images.shape[0]):
            fake = FakeRandom(**queues_for(name, rec, i, severity))
            monkeypatch.setattr(ic, "np", NumpyWith(fake))
            if name == "impulse_noise":
                import skimage.util.noise
                monkeypatch.setattr(skimage.util.noise, "np", NumpyWith(fake))
            expected = as_unit(getattr(ic, name)(to_pil(images[i]), severity))
            fake.check_used()
            worst = max(worst, float(np.abs(hwc(ours[i]) - expected).max()))
        monkeypatch.undo()
        monkeypatch.setattr(ic, "gaussian", skimage_gaussian)
    print(f"{name}: max |ours - imagecorruptions| = {worst:.3g}")
    tolerance, why = TOLERANCE[name]
    assert worst <= tolerance, f"{name}: max |ours - imagecorruptions| = {worst} > {tolerance} ({why})"


# --------------------------------------------------------------------------- CIFAR definitions


def cifar_clipped_zoom(img, zoom_factor):
    """make_cifar_c.py's clipped_zoom, verbatim in substance (square HWC float image)."""
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim_top = (img.shape[0] - h) // 2
    return img[trim_top:trim_top + h, trim_top:trim_top + h]


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_zoom_blur_matches_make_cifar_c(severity):
    images = smooth_images(n=1)
    x = hwc(images[0]).astype(np.float32)
    factors = C.CIFAR_PARAMETERS["zoom_blur"][severity - 1]
    out = np.zeros_like(x)
    for z in factors:
        out += cifar_clipped_zoom(x, z)
    expected = np.clip((x + out) / (len(factors) + 1), 0, 1)
    np.testing.assert_allclose(hwc(C.zoom_blur(images, severity)[0]), expected, atol=1e-5)


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_pixelate_matches_pillow_box_box(severity):
    """make_cifar_c.py: BOX down to int(32 c), BOX back up (Pillow; it rounds to uint8 after each pass)."""
    images = smooth_images(n=2)
    c = C.CIFAR_PARAMETERS["pixelate"][severity - 1]
    ours = C.pixelate(images, severity)
    for i in range(2):
        pil = to_pil(images[i]).resize((int(32 * c), int(32 * c)), Image.BOX).resize((32, 32), Image.BOX)
        assert np.abs(hwc(ours[i]) - as_unit(pil)).max() <= 1 / 255 + 1e-9


def test_frost_pictures_match_cv2_resize():
    """make_cifar_c.py: cv2.imread, cv2.resize(fx=fy=0.2) (INTER_LINEAR), BGR -> RGB."""
    import os
    folder = os.path.join(os.path.dirname(ic.__file__), "frost")
    for name, ours in zip(("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"),
                          C.frost_pictures(0.2)):
        ref = cv2.resize(cv2.imread(os.path.join(folder, name)), (0, 0), fx=0.2, fy=0.2)[..., ::-1]
        assert ours.shape == (3,) + ref.shape[:2]
        assert np.abs(hwc(ours) * 255 - ref).max() <= 1.0


def test_elastic_affine_matches_opencv(monkeypatch):
    """The CIFAR affine step (3 moved points, cv2.getAffineTransform, cv2.warpAffine with
    BORDER_REFLECT_101) against OpenCV; alpha = 0 leaves only that step."""
    images = smooth_images(n=2)
    rec = Recorder(monkeypatch)
    ours = C.elastic_transform(images, 1, torch.Generator().manual_seed(3), params=(0.0, 0.0, 32 * 0.08))
    moved = rec.drawn("_uniform")[0][1]
    centre = np.float32((32, 32)) // 2
    side = 32 // 3
    pts1 = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    for i in range(2):
        pts2 = pts1 + moved[i].numpy().astype(np.float32)
        m = cv2.getAffineTransform(pts1, pts2)
        ref = cv2.warpAffine(hwc(images[i]).astype(np.float32), m, (32, 32), borderMode=cv2.BORDER_REFLECT_101)
        assert np.abs(hwc(ours[i]) - ref).max() <= 1e-5  # OpenCV warps the float32 image


def test_filters_match_scipy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 7, 9, generator=g, dtype=torch.float64)
    for mode in ("nearest", "reflect"):
        for sigma in (0.3, 1.1, 4.0):
            ref = np.stack([ndimage.gaussian_filter(a, sigma, mode=mode, truncate=3.0) for a in x.numpy()])
            np.testing.assert_allclose(C._gaussian_filter(x, sigma, mode=mode, truncate=3.0).numpy(), ref,
                                       atol=1e-12)
    coords = torch.rand(2, 7, 9, generator=g, dtype=torch.float64) * 30 - 12, \
        torch.rand(2, 7, 9, generator=g, dtype=torch.float64) * 30 - 12
    ours = C._map_coordinates_reflect(x[:, None], *coords)[:, 0]
    for i in range(2):
        ref = ndimage.map_coordinates(x[i].numpy(), [coords[0][i].numpy(), coords[1][i].numpy()], order=1,
                                      mode="reflect")
        np.testing.assert_allclose(ours[i].numpy(), ref, atol=1e-12)


def test_glass_shuffle_fast_path_equals_loop():
    """delta = 1 gathers once; the sequential loop of the original gives the same."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 12, 10, generator=g)
    offsets = torch.randint(-1, 1, (3, 10, 8, 2), generator=g)
    fast = C._shuffle(x, offsets, 1)
    slow = x.clone()
    rows = torch.arange(3)
    for a, h in enumerate(range(12 - 1, 1, -1)):
        for b, w in enumerate(range(10 - 1, 1, -1)):
            slow[:, :, h, w] = slow[rows, :, h + offsets[:, a, b, 1], w + offsets[:, a, b, 0]]
    torch.testing.assert_close(fast, slow, rtol=0, atol=0)


# --------------------------------------------------------------------------- contracts


RANDOM = [n for n in C.CORRUPTIONS if n not in
          ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression")]


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_seeded_shapes_dtypes_range(name):
    for shape, dtype in (((2, 3, 32, 32), torch.float32), ((2, 1, 8, 8), torch.float64),
                         ((1, 3, 20, 27), torch.float16)):
        images = smooth_images(n=shape[0], size=shape[2:], channels=shape[1], dtype=dtype)
        a = C.corrupt(images, name, 3, generator=torch.Generator().manual_seed(7))
        b = C.corrupt(images, name, 3, generator=torch.Generator().manual_seed(7))
        assert a.shape == images.shape and a.dtype == dtype and a.device == images.device
        assert float(a.min()) >= 0 and float(a.max()) <= 1
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        if name in RANDOM and shape[0] > 1:
            c = C.corrupt(images, name, 3, generator=torch.Generator().manual_seed(8))
            assert not torch.equal(a, c), f"{name}: a different seed gave the same images"
    assert not torch.equal(images, a) or name == "jpeg_compression", f"{name} left the images unchanged"


# The published CIFAR severities are not all ordered by the mean distance |corrupted - clean|
# (measured here on smooth 32 x 32 images, the same on random ones):
#   motion_blur 3 -> 4: radius 6 -> 8 at sigma 2 only adds weights below exp(-9): equal distances;
#   glass_blur 2 -> 3: sigma 0.25 -> 0.4 lowers the distance slightly; 4 -> 5 likewise;
#   frost 3 -> 5: less image (0.9 -> 0.75), more frost (0.4 -> 0.45): the distance falls on these images;
#   pixelate 2 -> 3: 28 -> 27 pixels, the aliasing pattern of 27 -> 32 is closer to the image;
#   elastic_transform: decreasing throughout: the affine step (0.08 -> 0.03 of the size) dominates.
# For those, severity 5 is still farther than severity 1 (except elastic), and every severity changes
# the images; all others increase strictly.
WEAKLY_MONOTONE = {"motion_blur"}
NOT_MONOTONE = {"glass_blur", "frost", "pixelate", "elastic_transform"}


@pytest.mark.parametrize("name", list(C.CORRUPTIONS))
def test_severity_monotone_in_mean_distance(name):
    images = smooth_images(n=8, seed=1, dtype=torch.float32)
    dist = [float((C.corrupt(images, name, s, torch.Generator().manual_seed(0)) - images).abs().mean())
            for s in C.SEVERITIES]
    steps = list(zip(dist, dist[1:]))
    assert min(dist) > 0.004, f"{name}: a severity leaves the images (almost) unchanged: {dist}"
    if name in NOT_MONOTONE:
        assert name == "elastic_transform" or dist[-1] > dist[0], f"{name}: {dist}"
    elif name in WEAKLY_MONOTONE:
        assert all(b >= a - 1e-6 for a, b in steps) and dist[-1] > dist[0], f"{name}: {dist}"
    else:
        assert all(b > a for a, b in steps), f"{name}: mean |corrupted - clean| by severity {dist}"


def test_cifar_parameters_scale():
    assert C.cifar_parameters("motion_blur", 5, (32, 32)) == (9, 2.5)
    assert C.cifar_parameters("glass_blur", 4, (32, 32)) == (0.25, 1, 2)
    assert C.cifar_parameters("motion_blur", 5, (8, 8)) == (2, 2.5 / 4)
    assert C.cifar_parameters("glass_blur", 4, (8, 8)) == (0.25 / 4, 1, 2)
    assert C.cifar_parameters("elastic_transform", 2, (64, 80)) == (64 * 0.05, 64 * 0.2, 64 * 0.07)
    assert C.cifar_parameters("frost", 1, (16, 16)) == (1, 0.2, 0.1)
    assert C.cifar_parameters("jpeg_compression", 2, (8, 8)) == 65


def test_bad_input():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown corruption 'blur'"):
        C.corrupt(x, "blur", 1)
    with pytest.raises(ValueError, match="severity must be an int in 1..5"):
        C.corrupt(x, "contrast", 6)
    with pytest.raises(ValueError, match="severity must be an int in 1..5"):
        C.corrupt(x, "contrast", True)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        C.corrupt(x * 3 - 1, "contrast", 1)
    with pytest.raises(ValueError, match=r"images must lie in \[0, 1\]"):
        C.corrupt(torch.full((1, 3, 4, 4), float("nan")), "contrast", 1)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        C.corrupt(torch.rand(1, 2, 8, 8), "contrast", 1)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        C.corrupt(torch.rand(3, 8, 8), "contrast", 1)
    with pytest.raises(TypeError, match="floating point"):
        C.corrupt(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "contrast", 1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        C.corrupt(x, "gaussian_noise", 1, generator=0)
    empty = C.corrupt(torch.rand(0, 3, 8, 8), "gaussian_noise", 1)
    assert empty.shape == (0, 3, 8, 8)


def test_frost_without_package_names_it(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "imagecorruptions" else real(name, *a))
    C._frost_pictures_cpu.cache_clear()
    try:
        with pytest.raises(ImportError, match="pip install imagecorruptions"):
            C.frost(torch.rand(1, 3, 8, 8), 1)
    finally:
        C._frost_pictures_cpu.cache_clear()
