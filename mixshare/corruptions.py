"""The 15 benchmark corruptions of Hendrycks & Dietterich (2019) on batched image tensors, on any device.

``images``: float ``[N, C, H, W]`` with C = 1 or 3, values in [0, 1] (pixel space, BEFORE the
dataset's normalisation), any H, W, on any device. Every corruption returns a tensor of the same
shape, dtype and device, clipped to [0, 1]. Arithmetic runs in float32 (float64 for float64 input).
Randomness comes only from ``generator`` (a ``torch.Generator`` on the images' device; None: torch's
global generator), so one seed gives the same corrupted set on every run on that device.

Parameters: for 32 x 32 images those of the authors' ``make_cifar_c.py`` (hendrycks/robustness),
which made CIFAR-10-C / CIFAR-100-C; for other sizes the lengths in pixels are scaled by
``r = min(H, W) / 32`` (:func:`cifar_parameters`, README "Corruptions"). Every function also takes
``params=`` (one severity's parameters in this module's units) to run with other values, e.g.
the ImageNet-C ones of the ``imagecorruptions`` package.

Where the released CIFAR-C data came from libraries this module does not use, it follows the
``imagecorruptions`` package's numpy re-implementation (motion blur: ImageMagick's, replaced by the
same kernel on the tensor) or computes in floating point what the original rounded to uint8
between steps (pixelate's two PIL passes). JPEG uses Pillow's codec (on the CPU, per image);
frost needs the frost pictures that the ``imagecorruptions`` package ships (or ``pictures=``).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import math
import operator
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mixshare.tensor_checks import check_float_tensor

__all__ = [
    "CORRUPTIONS",
    "CIFAR_PARAMETERS",
    "SEVERITIES",
    "cifar_parameters",
    "corrupt",
    "frost_pictures",
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
]

SEVERITIES = (1, 2, 3, 4, 5)

#: make_cifar_c.py's parameters per corruption, one entry per severity 1..5 (32 x 32 pixels).
CIFAR_PARAMETERS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),                        # noise std
    "shot_noise": (500, 250, 100, 75, 50),                                    # photons per unit intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),                          # fraction of values hit
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # disk radius, alias sigma
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # sigma, delta, iters
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),              # radius, sigma
    "zoom_blur": tuple(tuple(np.arange(1, stop, 0.01).tolist()) for stop in (1.06, 1.11, 1.16, 1.21, 1.26)),
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),  # loc, scale, zoom, threshold,
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),  # radius, sigma,
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),                            # blend
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),     # image weight, frost weight
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),            # fog weight, wibble decay
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),                                # added to HSV value
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),                                  # factor about the mean
    # (alpha, sigma, affine) as fractions of the image size (make_cifar_c.py: IMSIZE * these)
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                          (0.1, 0.03, 0.03)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),                                # resize ratio
    "jpeg_compression": (80, 65, 58, 50, 40),                                 # JPEG quality
}

#: CIFAR frost pictures are shrunk by this (cv2.resize fx = fy = 0.2) for 32 x 32 images.
FROST_SCALE = 0.2


# --------------------------------------------------------------------------- checks


def _check_images(images) -> None:
    check_float_tensor(images, "images", "[N, C, H, W] (pixel space, values in [0, 1])", empty_ok=(0,))
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got shape {tuple(images.shape)}")
    if images.numel():
        lo, hi = torch.aminmax(images.detach())
        lo, hi = float(lo), float(hi)
        if not (lo >= 0.0 and hi <= 1.0):  # also false for nan
            raise ValueError(f"images must lie in [0, 1] (pixel space, before normalisation), got values in "
                             f"[{lo}, {hi}]")


def _check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or int(severity) not in SEVERITIES:
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    return int(severity)


def _check_generator(generator, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(f"generator must be on the images' device ({device.type}), got one on "
                         f"{generator.device.type}")


def _prepare(images, severity, generator, name: str, params):
    """Checks; returns (working float tensor, parameters)."""
    _check_images(images)
    severity = _check_severity(severity)
    _check_generator(generator, images.device)
    if params is None:
        params = cifar_parameters(name, severity, tuple(images.shape[-2:]))
    work = torch.float64 if images.dtype == torch.float64 else torch.float32
    return images.detach().to(work), params


def _finish(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return out.clamp(0.0, 1.0).to(like.dtype)


# --------------------------------------------------------------------------- parameters


def _scaled_int(value: float, ratio: float) -> int:
    return max(1, int(round(value * ratio)))


def cifar_parameters(name: str, severity: int, size: Sequence[int] = (32, 32)):
    """make_cifar_c.py's parameters of ``name`` at ``severity`` for images of ``size`` (H, W).

    Lengths in pixels are multiplied by ``r = min(H, W) / 32`` (rounded to an int >= 1 where the
    original is an int): defocus radius and alias sigma, glass-blur sigma and shuffle distance,
    motion-blur radius and sigma (also snow's), elastic alpha / sigma / affine (fractions of the
    size, as in the original), frost's picture scale (``0.2 r``, returned as a third value). Noise,
    zoom factors, fog (its fractal is generated at the next power of two of the size), brightness,
    contrast, pixelate ratio and JPEG quality are per pixel or relative, and not scaled. At 32 x 32
    every value is the published one.
    """
    if name not in CIFAR_PARAMETERS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    severity = _check_severity(severity)
    h, w = (operator.index(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be (H, W) with H, W >= 1, got {tuple(size)}")
    r = min(h, w) / 32.0
    p = CIFAR_PARAMETERS[name][severity - 1]
    if name == "defocus_blur":
        return (p[0] * r, p[1] * r)
    if name == "glass_blur":
        return (p[0] * r, _scaled_int(p[1], r), p[2])
    if name == "motion_blur":
        return (_scaled_int(p[0], r), p[1] * r)
    if name == "snow":
        return p[:4] + (_scaled_int(p[4], r), p[5] * r, p[6])
    if name == "elastic_transform":
        s = min(h, w)
        return (s * p[0], s * p[1], s * p[2])
    if name == "frost":
        return (p[0], p[1], FROST_SCALE * r)
    return p


# --------------------------------------------------------------------------- random draws
# Every random number comes from one of these (tests record them to replay into the reference).


def _normal(shape, generator, device) -> torch.Tensor:
    """Standard normal, float64."""
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float64)


def _uniform(low: float, high: float, shape, generator, device) -> torch.Tensor:
    """Uniform on [low, high), float64."""
    return low + (high - low) * torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def _randint(low: int, high: int, shape, generator, device) -> torch.Tensor:
    """Integers uniform on [low, high), int64."""
    return torch.randint(low, high, shape, generator=generator, device=device)


def _randint_below(high: torch.Tensor, generator) -> torch.Tensor:
    """One integer uniform on [0, high[i]) per entry of the int64 tensor ``high`` (all >= 1)."""
    u = torch.rand(high.shape, generator=generator, device=high.device, dtype=torch.float64)
    return torch.minimum((u * high).floor().long(), high - 1)


def _poisson(rates: torch.Tensor, generator) -> torch.Tensor:
    return torch.poisson(rates, generator=generator)


# --------------------------------------------------------------------------- index maps and filters


def _reflect101(i: torch.Tensor, n: int) -> torch.Tensor:
    """OpenCV's BORDER_REFLECT_101 (``dcb|abcd|cba``) for any integer index."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    j = i.abs() % period
    return torch.where(j >= n, period - j, j)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """scipy.ndimage's mode "reflect" (``dcba|abcd|dcba``) for any integer index."""
    j = i % (2 * n)
    return torch.where(j >= n, 2 * n - 1 - j, j)


def _nearest(i: torch.Tensor, n: int) -> torch.Tensor:
    """scipy.ndimage's mode "nearest" / OpenCV's BORDER_REPLICATE."""
    return i.clamp(0, n - 1)


def _pad(x: torch.Tensor, dim: int, before: int, after: int, index_map) -> torch.Tensor:
    n = x.shape[dim]
    idx = index_map(torch.arange(-before, n + after, device=x.device), n)
    return x.index_select(dim, idx)


def _correlate(x: torch.Tensor, kernel: torch.Tensor, index_map) -> torch.Tensor:
    """2-D correlation of every channel of ``x [N, C, H, W]`` with ``kernel [kh, kw]`` (odd sides,
    anchored at the centre), borders extended by ``index_map``."""
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    y = _pad(_pad(x.reshape(n * c, 1, h, w), 2, kh // 2, kh // 2, index_map), 3, kw // 2, kw // 2, index_map)
    return F.conv2d(y, kernel.to(x.dtype).view(1, 1, kh, kw)).view(n, c, h, w)


def _gaussian_kernel1d(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    """scipy.ndimage's Gaussian weights: radius ``int(truncate * sigma + 0.5)``, normalised."""
    radius = int(truncate * float(sigma) + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def _gaussian_filter(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """``scipy.ndimage.gaussian_filter`` over the last two dims of ``x [..., H, W]`` (what
    ``skimage.filters.gaussian`` does per channel); sigma ~ 0 leaves ``x`` as it is."""
    if sigma <= 1e-15:
        return x
    index_map = {"nearest": _nearest, "reflect": _reflect}[mode]
    k = _gaussian_kernel1d(sigma, truncate, x.dtype, x.device)
    shape = x.shape
    y = x.reshape(-1, 1, *shape[-2:])
    y = _correlate(y, k.view(-1, 1), index_map)
    y = _correlate(y, k.view(1, -1), index_map)
    return y.view(shape)


def _sample_bilinear(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, index_map) -> torch.Tensor:
    """``x [N, C, H, W]`` at per-image coordinates ``ys, xs [N, H', W']`` (pixel units, float64),
    linear interpolation, neighbours outside the image mapped by ``index_map``."""
    n, c, h, w = x.shape
    y0, x0 = ys.floor(), xs.floor()
    fy, fx = (ys - y0).to(x.dtype), (xs - x0).to(x.dtype)
    y0, x0 = y0.long(), x0.long()
    flat = x.reshape(n, c, h * w)
    out_shape = ys.shape[1:]

    def at(yi, xi):
        idx = (index_map(yi, h) * w + index_map(xi, w)).view(n, 1, -1).expand(n, c, -1)
        return flat.gather(2, idx).view(n, c, *out_shape)

    fy, fx = fy.unsqueeze(1), fx.unsqueeze(1)
    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def _gray(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's RGB2GRAY weights (0.299, 0.587, 0.114): ``[N, 3, H, W]`` -> ``[N, 1, H, W]``; 1 channel as is."""
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


# --------------------------------------------------------------------------- noise


def gaussian_noise(images, severity, generator=None, *, params=None):
    """``x + N(0, c^2)`` per value. ``images [N, C, H, W]`` in [0, 1] -> same shape."""
    x, c = _prepare(images, severity, generator, "gaussian_noise", params)
    z = _normal(x.shape, generator, x.device)
    return _finish(x + (z * c).to(x.dtype), images)


def shot_noise(images, severity, generator=None, *, params=None):
    """Poisson noise: ``Poisson(x c) / c`` per value. ``[N, C, H, W]`` -> same shape."""
    x, c = _prepare(images, severity, generator, "shot_noise", params)
    counts = _poisson(x.double() * c, generator)
    return _finish((counts / c).to(x.dtype), images)


def impulse_noise(images, severity, generator=None, *, params=None):
    """Salt and pepper (``skimage.util.random_noise(mode="s&p")``): each value is hit with
    probability c, a hit is 1 or 0 with probability 1/2 each. ``[N, C, H, W]`` -> same shape."""
    x, c = _prepare(images, severity, generator, "impulse_noise", params)
    flipped = _uniform(0.0, 1.0, x.shape, generator, x.device) <= c
    salted = _uniform(0.0, 1.0, x.shape, generator, x.device) <= 0.5
    return _finish(torch.where(flipped, salted.to(x.dtype), x), images)


# --------------------------------------------------------------------------- blur


def _disk(radius: float, alias_blur: float) -> torch.Tensor:
    """make_cifar_c.py's anti-aliased disk kernel (a 3 x 3 Gaussian of ``alias_blur`` over the
    aliased disk, OpenCV's REFLECT_101 border), cut to its non-zero support. float64."""
    half = 8 if radius <= 8 else int(math.ceil(radius))  # the original: arange(-8, 9) or arange(-r, r + 1)
    ksize = 3 if radius <= 8 else 5
    grid = torch.arange(-half, half + 1, dtype=torch.float64) if radius <= 8 else \
        torch.from_numpy(np.arange(-radius, radius + 1)).double()
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).double()
    disk = (disk / disk.sum()).float().double()  # the original builds it in float32
    g = torch.exp(-((torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2) ** 2) / (2 * alias_blur ** 2))
    g = g / g.sum()
    out = _correlate(disk.view(1, 1, *disk.shape), torch.outer(g, g), _reflect101)[0, 0]
    nz = out.nonzero()
    if nz.numel() == 0:
        return out[half:half + 1, half:half + 1]
    centre = out.shape[0] // 2
    reach = int((nz - centre).abs().max())
    return out[centre - reach:centre + reach + 1, centre - reach:centre + reach + 1]


def defocus_blur(images, severity, generator=None, *, params=None):
    """Correlation with an anti-aliased disk (radius, alias sigma), OpenCV's REFLECT_101 border.
    ``[N, C, H, W]`` -> same shape; deterministic."""
    x, (radius, alias) = _prepare(images, severity, generator, "defocus_blur", params)
    return _finish(_correlate(x, _disk(radius, alias).to(x.device), _reflect101), images)


def _shuffle(x: torch.Tensor, offsets: torch.Tensor, delta: int) -> torch.Tensor:
    """glass blur's local shuffle as make_cifar_c.py runs it: for h, w from the bottom-right corner
    (``range(H - delta, delta, -1)``), ``x[h, w] = x[h + dy, w + dx]`` (the original's tuple "swap"
    of numpy views copies one way only). ``offsets [N, nh, nw, 2]`` holds (dx, dy) per position."""
    n, _, h, w = x.shape
    hs, ws = range(h - delta, delta, -1), range(w - delta, delta, -1)
    rows = torch.arange(n, device=x.device)
    if delta == 1:  # offsets in {-1, 0}: every source is read before it is written, so one gather does it
        hh = torch.tensor(list(hs), device=x.device).view(1, -1, 1)
        ww = torch.tensor(list(ws), device=x.device).view(1, 1, -1)
        src = (hh + offsets[..., 1]) * w + (ww + offsets[..., 0])  # [N, nh, nw]
        flat = x.reshape(n, -1, h * w)
        vals = flat.gather(2, src.view(n, 1, -1).expand(-1, flat.shape[1], -1))
        out = x.clone()
        out[:, :, delta + 1:h - delta + 1, delta + 1:w - delta + 1] = vals.view(n, -1, len(hs), len(ws)).flip(2, 3)
        return out
    x = x.clone()
    for a, hh in enumerate(hs):
        for b, ww in enumerate(ws):
            x[:, :, hh, ww] = x[rows, :, hh + offsets[:, a, b, 1], ww + offsets[:, a, b, 0]]
    return x


def glass_blur(images, severity, generator=None, *, params=None):
    """Gaussian blur (sigma), rounded down to uint8 levels, ``iterations`` local pixel shuffles
    (offsets in [-delta, delta)), Gaussian blur again. ``[N, C, H, W]`` -> same shape."""
    x, (sigma, delta, iterations) = _prepare(images, severity, generator, "glass_blur", params)
    n, _, h, w = x.shape
    x = torch.floor(_gaussian_filter(x, sigma) * 255) / 255
    nh, nw = len(range(h - delta, delta, -1)), len(range(w - delta, delta, -1))
    for _ in range(iterations):
        offsets = _randint(-delta, delta, (n, nh, nw, 2), generator, x.device)
        if nh and nw:
            x = _shuffle(x, offsets, delta)
    return _finish(_gaussian_filter(x, sigma), images)


def _motion_blur(x: torch.Tensor, radius: int, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick's motion blur as the ``imagecorruptions`` package re-implements it: the sum over
    i < 2 radius + 1 of Gaussian weights (sigma) times the image shifted i steps along ``angles``
    (degrees, one per image), edges replicated; a step past the image border ends the sum."""
    n, c, h, w = x.shape
    width = 2 * int(radius) + 1
    i = torch.arange(width, dtype=torch.float64, device=x.device)
    kernel = torch.exp(-i ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    rad = angles.double() * (math.pi / 180.0)
    p0, p1 = width * torch.sin(rad), width * torch.cos(rad)  # [N]
    hyp = torch.hypot(p0, p1)
    dy = -torch.ceil(i.view(1, -1) * p0.view(-1, 1) / hyp.view(-1, 1) - 0.5).long()  # [N, width]
    dx = -torch.ceil(i.view(1, -1) * p1.view(-1, 1) / hyp.view(-1, 1) - 0.5).long()
    outside = (dy.abs() >= h) | (dx.abs() >= w)
    keep = (outside.long().cumsum(1) == 0)  # the original breaks at the first step outside
    weights = (kernel.view(1, -1) * keep).to(x.dtype)  # [N, width]
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    out = torch.zeros_like(x)
    flat = x.reshape(n, c, h * w)
    for k in range(width):
        ys = (rows.view(1, -1) - dy[:, k:k + 1]).clamp(0, h - 1)  # [N, H]
        xs = (cols.view(1, -1) - dx[:, k:k + 1]).clamp(0, w - 1)  # [N, W]
        idx = (ys.view(n, h, 1) * w + xs.view(n, 1, w)).view(n, 1, -1).expand(n, c, -1)
        out += weights[:, k].view(n, 1, 1, 1) * flat.gather(2, idx).view(n, c, h, w)
    return out


def motion_blur(images, severity, generator=None, *, params=None):
    """Motion blur (radius, sigma) at an angle uniform in [-45, 45) degrees per image.
    ``[N, C, H, W]`` -> same shape."""
    x, (radius, sigma) = _prepare(images, severity, generator, "motion_blur", params)
    angles = _uniform(-45.0, 45.0, (x.shape[0],), generator, x.device)
    return _finish(_motion_blur(x, radius, sigma, angles), images)


def _clipped_zoom(x: torch.Tensor, factor: float, centre: bool = True) -> torch.Tensor:
    """make_cifar_c.py's ``clipped_zoom``: the central ``ceil(H / z)`` crop zoomed by z with
    ``scipy.ndimage.zoom(order=1)`` (output ``round(size z)``, corners aligned), then the central
    H x W (``centre=False``: the zoomed crop whole, as the ``imagecorruptions`` package returns it)."""
    h, w = x.shape[-2:]
    ch, cw = int(math.ceil(h / float(factor))), int(math.ceil(w / float(factor)))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    size = (int(round(ch * factor)), int(round(cw * factor)))
    zoomed = F.interpolate(crop, size=size, mode="bilinear", align_corners=True)
    if not centre:
        return zoomed
    th, tw = (size[0] - h) // 2, (size[1] - w) // 2
    return zoomed[..., th:th + h, tw:tw + w]


def zoom_blur(images, severity, generator=None, *, params=None, _centre: bool = True):
    """Mean of the image and its zooms by each factor (:func:`_clipped_zoom`). ``[N, C, H, W]`` ->
    same shape; deterministic."""
    x, factors = _prepare(images, severity, generator, "zoom_blur", params)
    h, w = x.shape[-2:]
    out = x.clone()
    for z in factors:
        out += _clipped_zoom(x, z, _centre)[..., :h, :w]
    return _finish(out / (len(factors) + 1), images)


# --------------------------------------------------------------------------- weather


def snow(images, severity, generator=None, *, params=None, _variant: str = "cifar"):
    """Snow: a normal (loc, scale) layer zoomed by ``zoom``, values below ``threshold`` cut, motion
    blurred (radius, sigma) at an angle in [-135, -45) degrees, added twice (the second turned by
    180 degrees) to the image blended (``blend``) with its brightened grey.
    ``[N, C, H, W]`` -> same shape.

    ``_variant="cifar"`` (default): make_cifar_c.py's order (central crop after the zoom, the layer
    rounded down to uint8 levels before the blur, to the nearest after it);
    ``"imagecorruptions"``: that package's (no crop before the blur, no rounding before it).
    """
    x, (loc, scale, zoom, threshold, radius, sigma, blend) = _prepare(images, severity, generator, "snow", params)
    n, _, h, w = x.shape
    layer = (loc + scale * _normal((n, 1, h, w), generator, x.device)).to(x.dtype)
    layer = _clipped_zoom(layer, zoom, centre=_variant == "cifar")
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0, 1)
    if _variant == "cifar":
        layer = torch.floor(layer * 255) / 255
    angles = _uniform(-135.0, -45.0, (n,), generator, x.device)
    layer = torch.round(_motion_blur(layer, radius, sigma, angles) * 255) / 255
    layer = layer[..., :h, :w]
    x = blend * x + (1 - blend) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return _finish(x + layer + layer.flip(-2, -1), images)


def _frost_dir() -> Path:
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("frost needs the frost pictures that the imagecorruptions package ships: "
                          "pip install imagecorruptions (or pass pictures=)")
    return Path(list(spec.submodule_search_locations)[0]) / "frost"


@functools.lru_cache(maxsize=8)
def _frost_pictures_cpu(scale: float) -> tuple:
    from PIL import Image

    folder = _frost_dir()
    pictures = []
    for name in ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"frost picture {name} not found in the imagecorruptions package "
                                    f"({folder}); reinstall it: pip install --force-reinstall imagecorruptions")
        with Image.open(path) as img:
            pixels = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32).copy())
        t = pixels.permute(2, 0, 1).unsqueeze(0)
        # cv2.resize(fx=fy=scale, INTER_LINEAR): output round(size * scale), source (o + 0.5) / scale - 0.5
        t = F.interpolate(t, scale_factor=scale, mode="bilinear", align_corners=False,
                          recompute_scale_factor=False)
        pictures.append((t[0].round().clamp(0, 255) / 255).double())
    return tuple(pictures)


def frost_pictures(scale: float = FROST_SCALE) -> list:
    """The first five frost pictures of the ``imagecorruptions`` package (make_cifar_c.py draws
    from these five), RGB ``[3, h, w]`` in [0, 1] (float64, CPU), shrunk by ``scale`` as
    ``cv2.resize(fx=fy=scale)`` does. Raises ImportError naming the package when it is absent."""
    return list(_frost_pictures_cpu(float(scale)))


def frost(images, severity, generator=None, *, params=None, pictures=None):
    """``clip(a x + b frost)``: a random crop of a random frost picture per image (pictures shrunk
    by ``0.2 r``, enlarged to fit when smaller than the image). 1 channel: the crop's grey
    (``imagecorruptions``' weights 0.2989, 0.5870, 0.1140). ``pictures``: a list of RGB
    ``[3, h, w]`` tensors in [0, 1] to use instead. ``[N, C, H, W]`` -> same shape."""
    x, p = _prepare(images, severity, generator, "frost", params)
    a, b = p[0], p[1]
    n, c, h, w = x.shape
    if pictures is None:
        pictures = frost_pictures(p[2] if len(p) > 2 else FROST_SCALE)
    fitted = []
    for pic in pictures:
        if not (isinstance(pic, torch.Tensor) and pic.dim() == 3 and pic.shape[0] == 3):
            raise ValueError("pictures must be RGB tensors [3, h, w] in [0, 1]")
        ph, pw = pic.shape[-2:]
        if ph <= h or pw <= w:  # too small for a crop: enlarged to fit, as imagecorruptions does
            f = max((h + 1) / ph, (w + 1) / pw)
            pic = F.interpolate(pic[None].double(), size=(int(math.ceil(ph * f)), int(math.ceil(pw * f))),
                                mode="bilinear", align_corners=False)[0]
        fitted.append(pic.to(device=x.device, dtype=x.dtype))
    which = _randint(0, len(fitted), (n,), generator, x.device)
    heights = torch.tensor([p.shape[1] for p in fitted], device=x.device)[which]
    widths = torch.tensor([p.shape[2] for p in fitted], device=x.device)[which]
    starts_y = _randint_below(heights - h, generator)
    starts_x = _randint_below(widths - w, generator)
    crops = torch.empty((n, 3, h, w), dtype=x.dtype, device=x.device)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    for k, pic in enumerate(fitted):
        sel = (which == k).nonzero().flatten()
        if sel.numel():
            ys = (starts_y[sel].view(-1, 1) + rows).view(-1, h, 1)
            xs = (starts_x[sel].view(-1, 1) + cols).view(-1, 1, w)
            crops[sel] = pic[:, ys, xs].transpose(0, 1)  # [3, k, h, w] -> [k, 3, h, w]
    if c == 1:
        crops = 0.2989 * crops[:, 0:1] + 0.5870 * crops[:, 1:2] + 0.1140 * crops[:, 2:3]
    return _finish(a * x + b * crops, images)


def _plasma_fractal(n: int, mapsize: int, decay: float, generator, device) -> torch.Tensor:
    """make_cifar_c.py's diamond-square height map, ``[n, mapsize, mapsize]`` in [0, 1] (float64)."""
    m = torch.zeros((n, mapsize, mapsize), dtype=torch.float64, device=device)
    step, wibble = mapsize, 100.0

    def wibbled(total):
        return total / 4 + wibble * _uniform(-wibble, wibble, total.shape, generator, device)

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        sq = corner + corner.roll(-1, 1)
        sq = sq + sq.roll(-1, 2)
        m[:, half::step, half::step] = wibbled(sq)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, 0::step] = wibbled(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wibble /= decay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True)


def fog(images, severity, generator=None, *, params=None):
    """``(x + a fractal) max(x) / (max(x) + a)`` with a diamond-square fractal (wibble decay) of
    side the next power of two >= max(H, W) (32 for CIFAR) per image. ``[N, C, H, W]`` -> same shape."""
    x, (a, decay) = _prepare(images, severity, generator, "fog", params)
    n, _, h, w = x.shape
    mapsize = max(2, 1 << (max(h, w) - 1).bit_length())
    fractal = _plasma_fractal(n, mapsize, decay, generator, x.device)[:, None, :h, :w].to(x.dtype)
    peak = x.amax((1, 2, 3), keepdim=True)
    return _finish((x + a * fractal) * peak / (peak + a), images)


def brightness(images, severity, generator=None, *, params=None):
    """HSV value + c (clipped at 1), hue and saturation kept: RGB scaled by ``V' / V`` (black
    becomes grey V'); 1 channel: ``x + c``. ``[N, C, H, W]`` -> same shape; deterministic."""
    x, c = _prepare(images, severity, generator, "brightness", params)
    value = x.amax(1, keepdim=True)
    new = (value + c).clamp(max=1.0)
    out = torch.where(value > 0, x * (new / value.clamp_min(torch.finfo(x.dtype).tiny)), new)
    return _finish(out, images)


# --------------------------------------------------------------------------- digital


def contrast(images, severity, generator=None, *, params=None):
    """``(x - mean) c + mean``, the mean per image and channel. ``[N, C, H, W]`` -> same shape."""
    x, c = _prepare(images, severity, generator, "contrast", params)
    mean = x.mean((2, 3), keepdim=True)
    return _finish((x - mean) * c + mean, images)


def _affine_matrices(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``cv2.getAffineTransform`` per image: 3 point pairs ``[N, 3, 2]`` (x, y) -> ``[N, 2, 3]``."""
    ones = torch.ones(src.shape[:2] + (1,), dtype=torch.float64, device=src.device)
    a = torch.cat([src.double(), ones], 2)  # [N, 3, 3]: rows (x, y, 1)
    return torch.linalg.solve(a, dst.double()).transpose(1, 2)


def _warp_affine(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """``cv2.warpAffine(x, M, borderMode=BORDER_REFLECT_101)`` per image (bilinear on float images).
    ``matrices [N, 2, 3]`` map source to destination points (x, y)."""
    n, _, h, w = x.shape
    lin, off = matrices[:, :, :2], matrices[:, :, 2:]
    inv = torch.linalg.inv(lin)
    inv_off = -inv @ off
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=x.device),
                            torch.arange(w, dtype=torch.float64, device=x.device), indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 0)  # [2, HW]
    src = inv @ pts + inv_off  # [N, 2, HW]
    return _sample_bilinear(x, src[:, 1].view(n, h, w), src[:, 0].view(n, h, w), _reflect101)


def elastic_transform(images, severity, generator=None, *, params=None):
    """make_cifar_c.py's elastic transform: a random affine warp (3 points moved by up to
    ``affine`` pixels, REFLECT_101 border), then a displacement field ``alpha * gaussian(U(-1, 1),
    sigma)`` per axis (scipy "reflect" border, truncate 3), sampled bilinearly (scipy
    ``map_coordinates(order=1, mode="reflect")``). ``[N, C, H, W]`` -> same shape."""
    x, (alpha, sigma, affine) = _prepare(images, severity, generator, "elastic_transform", params)
    n, _, h, w = x.shape
    if affine > 0:
        centre = torch.tensor([h // 2, w // 2], dtype=torch.float32)
        side = min(h, w) // 3
        pts = torch.stack([centre + side, torch.stack([centre[0] + side, centre[1] - side]), centre - side])
        pts = pts.to(x.device).expand(n, 3, 2)
        moved = pts + _uniform(-affine, affine, (n, 3, 2), generator, x.device).float()
        x = _warp_affine(x, _affine_matrices(pts, moved))
    fields = []
    for _ in range(2):  # dx, then dy, as drawn in the original
        u = _uniform(-1.0, 1.0, (n, h, w), generator, x.device)
        fields.append((_gaussian_filter(u, sigma, mode="reflect", truncate=3.0) * alpha).float().double())
    dx, dy = fields
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=x.device),
                            torch.arange(w, dtype=torch.float64, device=x.device), indexing="ij")
    return _finish(_map_coordinates_reflect(x, yy + dy, xx + dx), images)


def _map_coordinates_reflect(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """``scipy.ndimage.map_coordinates(order=1, mode="reflect")`` per channel: coordinates outside
    [-0.5, n - 0.5] are mirrored about those edges, neighbours past them repeat the edge pixel."""
    h, w = x.shape[-2:]

    def fold(c, n):
        period = 2 * n
        c = torch.remainder(c + 0.5, period)
        c = torch.where(c >= n, period - c, c)
        return c - 0.5

    return _sample_bilinear(x, fold(ys, h), fold(xs, w), _reflect)


@functools.lru_cache(maxsize=64)
def _pil_box_weights_cpu(in_size: int, out_size: int) -> torch.Tensor:
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    weights = torch.zeros((out_size, in_size), dtype=torch.float64)
    for o in range(out_size):
        centre = (o + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        for i in range(lo, hi):
            t = (i - centre + 0.5) / filterscale
            if -0.5 < t <= 0.5:
                weights[o, i] = 1.0
        total = weights[o].sum()
        if total > 0:
            weights[o] /= total
    return weights


def _pil_box_weights(in_size: int, out_size: int, device) -> torch.Tensor:
    """Pillow's resampling coefficients for the BOX filter (``ImagingResample``), ``[out, in]`` float64."""
    return _pil_box_weights_cpu(in_size, out_size).to(device)


def _pil_nearest_index(in_size: int, out_size: int, device) -> torch.Tensor:
    scale = in_size / out_size
    return torch.tensor([min(int((o + 0.5) * scale), in_size - 1) for o in range(out_size)], device=device)


def pixelate(images, severity, generator=None, *, params=None, _upsample: str = "box"):
    """Pillow's BOX resize to ``int(size c)`` and back (make_cifar_c.py; ``_upsample="nearest"``:
    back with NEAREST, as ``imagecorruptions`` does), in floating point. ``[N, C, H, W]`` -> same shape."""
    x, c = _prepare(images, severity, generator, "pixelate", params)
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * c)), max(1, int(w * c))
    small = torch.einsum("oh,nchw,pw->ncop", _pil_box_weights(h, sh, x.device).to(x.dtype), x,
                         _pil_box_weights(w, sw, x.device).to(x.dtype))
    if _upsample == "nearest":
        out = small[:, :, _pil_nearest_index(sh, h, x.device)][..., _pil_nearest_index(sw, w, x.device)]
    else:
        out = torch.einsum("oh,nchw,pw->ncop", _pil_box_weights(sh, h, x.device).to(x.dtype), small,
                           _pil_box_weights(sw, w, x.device).to(x.dtype))
    return _finish(out, images)


def jpeg_compression(images, severity, generator=None, *, params=None):
    """Pillow's JPEG encoder at quality c, decoded again, per image on the CPU (pixels rounded to
    uint8 first; 1 channel: a greyscale JPEG). ``[N, C, H, W]`` -> same shape; deterministic."""
    x, quality = _prepare(images, severity, generator, "jpeg_compression", params)
    from PIL import Image

    pixels = torch.round(x.double() * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(pixels)
    for i, img in enumerate(pixels):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img, mode="L" if img.shape[-1] == 1 else "RGB")
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as decoded:
            out[i] = np.asarray(decoded).reshape(img.shape)
    result = torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2).to(x.dtype) / 255
    return _finish(result, images)


# --------------------------------------------------------------------------- registry

#: name -> function(images, severity, generator=None, *, params=None), in the benchmark's order.
CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}


def corrupt(images: torch.Tensor, name: str, severity: int, generator: Optional[torch.Generator] = None,
            **kwargs) -> torch.Tensor:
    """``CORRUPTIONS[name](images, severity, generator, **kwargs)``: ``[N, C, H, W]`` in [0, 1] -> same."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name](images, severity, generator, **kwargs)
