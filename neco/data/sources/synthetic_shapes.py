"""Drawing primitives of the synthetic demo dataset (datasets.md §11).

Everything here is a pure function of its arguments (a ``numpy`` generator where randomness is
needed) and uses only integer arithmetic and float64 ``+ - * /``, ``sqrt`` and ``floor``, which
IEEE 754 rounds identically on every platform: no ``sin``/``cos``/``exp`` (rotations use the
rational parametrisation of the circle) and no library Gaussian sampler (pixel noise is an
Irwin-Hall sum of raw generator bytes). Images are float64 arrays ``(H, W, 3)`` in 0..255 until
the caller rounds them to ``uint8``.
"""

from __future__ import annotations

import enum
import math

import numpy as np


class Shape(str, enum.Enum):
    """Object outline."""

    DISK = "disk"
    SQUARE = "square"
    TRIANGLE = "triangle"


class Texture(str, enum.Enum):
    """Object fill pattern, drawn in the object's colour pair."""

    STRIPES = "stripes"
    CHECKER = "checker"


_SQRT3 = math.sqrt(3.0)
# Equal-area outlines: an object of "size" s covers the area of a disk of diameter s.
_SQUARE_SIDE = math.sqrt(math.pi) / 2.0  # side / s, since side^2 = pi s^2 / 4
_TRIANGLE_INRADIUS = math.sqrt(
    math.pi / (12.0 * _SQRT3)
)  # inradius / s: 3 sqrt(3) r^2 = pi s^2 / 4
_NOISE_BYTES = 4  # Irwin-Hall terms: sum of 4 uniform bytes, sd = sqrt(4 * (256**2 - 1) / 12)
_NOISE_SD = math.sqrt(_NOISE_BYTES * (256.0**2 - 1.0) / 12.0)


def voc_palette() -> list[int]:
    """The 256-entry Pascal VOC palette as a flat ``[r0, g0, b0, r1, ...]`` list (datasets.md §2.2).

    Index i spreads its bits over the colour channels, most significant first: 1 -> (128, 0, 0),
    15 -> (192, 128, 128), 255 -> (224, 224, 192).
    """
    palette: list[int] = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.extend((r, g, b))
    return palette


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1) x [0, 1] x [0, 1] to RGB in [0, 1] (the standard hexcone formula).

    Args:
        h, s, v: arrays of equal shape ``(...)``.

    Returns:
        ``(..., 3)`` float64.
    """
    h6 = np.asarray(h, np.float64) * 6.0
    sector = np.floor(h6)
    f = h6 - sector
    sector = sector.astype(np.int64) % 6
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    table = np.stack(
        [
            np.stack([v, t, p], -1),
            np.stack([q, v, p], -1),
            np.stack([p, v, t], -1),
            np.stack([p, q, v], -1),
            np.stack([t, p, v], -1),
            np.stack([v, p, q], -1),
        ],
        0,
    )
    rgb: np.ndarray = np.take_along_axis(table, sector[None, ..., None], 0)[0]
    return rgb


def sample_colour_pair(
    rng: np.random.Generator, *, sv_min: float, min_contrast: float, max_tries: int = 1000
) -> np.ndarray:
    """Two colours, H ~ U[0, 1), S, V ~ U[sv_min, 1], at least ``min_contrast`` apart in RGB.

    The same distribution serves every class and the background, so colour carries no class
    information (datasets.md §11, requirement 3).

    Args:
        rng: generator.
        sv_min: lower bound of saturation and value.
        min_contrast: minimum Euclidean RGB distance of the pair, in 0..255 units (keeps the
            texture visible).
        max_tries: rejection-sampling cap (not a result-changing value: hitting it raises).

    Returns:
        ``(2, 3)`` float64 RGB in 0..255.
    """
    for _ in range(max_tries):
        u = rng.random((2, 3))
        hsv_s = sv_min + (1.0 - sv_min) * u[:, 1]
        hsv_v = sv_min + (1.0 - sv_min) * u[:, 2]
        rgb = hsv_to_rgb(u[:, 0], hsv_s, hsv_v) * 255.0
        diff = rgb[0] - rgb[1]
        if math.sqrt(float(diff @ diff)) >= min_contrast:
            return rgb
    raise ValueError(
        f"colour_min_contrast={min_contrast}: no colour pair found in {max_tries} draws "
        f"with colour_min_sv={sv_min}; lower the contrast"
    )


def random_rotation(rng: np.random.Generator) -> tuple[float, float]:
    """(cos t, sin t) for t in (-90, 90) degrees, via t/2 = atan(u), u ~ U(-1, 1).

    The rational parametrisation avoids ``sin``/``cos`` (not correctly rounded on every
    platform). The angle density is not uniform (ratio 2 between centre and ends), which is
    fine: it is the same for every class, and (-90, 90) covers every orientation of a stripe,
    square and triangle.
    """
    u = 2.0 * rng.random() - 1.0
    den = 1.0 + u * u
    return (1.0 - u * u) / den, 2.0 * u / den


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)``, each ``(H, W)`` float64 (centre of (0, 0) = 0.5)."""
    yy, xx = np.meshgrid(
        np.arange(height, dtype=np.float64) + 0.5,
        np.arange(width, dtype=np.float64) + 0.5,
        indexing="ij",
    )
    return yy, xx


def shape_mask(
    shape: Shape,
    yy: np.ndarray,
    xx: np.ndarray,
    *,
    cy: float,
    cx: float,
    size: float,
    rot: tuple[float, float],
) -> np.ndarray:
    """Pixels covered by an outline of the area of a disk of diameter ``size``.

    Args:
        shape: outline.
        yy, xx: pixel-centre grids ``(H, W)``.
        cy, cx: centre (centroid for the triangle), pixels.
        size: equal-area disk diameter, pixels.
        rot: ``(cos, sin)`` of the rotation (ignored for the disk).

    Returns:
        ``(H, W)`` bool.
    """
    dy, dx = yy - cy, xx - cx
    c, s = rot
    if shape is Shape.DISK:
        r = size / 2.0
        return dx * dx + dy * dy <= r * r
    u = c * dx + s * dy
    v = c * dy - s * dx
    if shape is Shape.SQUARE:
        half = size * _SQUARE_SIDE / 2.0
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape is Shape.TRIANGLE:
        # Equilateral, centroid at the centre, inradius r; edge normals at 90, 210, 330 degrees.
        r = size * _TRIANGLE_INRADIUS
        return (v <= r) & (-0.5 * v - 0.5 * _SQRT3 * u <= r) & (-0.5 * v + 0.5 * _SQRT3 * u <= r)
    raise ValueError(f"unknown shape {shape!r}; expected one of {[m.value for m in Shape]}")


def texture_mask(
    texture: Texture,
    yy: np.ndarray,
    xx: np.ndarray,
    *,
    period: float,
    rot: tuple[float, float],
    phase: tuple[float, float],
) -> np.ndarray:
    """Which of the two colours each pixel takes.

    Stripes alternate every ``period / 2`` pixels across the direction ``rot``; the checker
    alternates every ``period / 2`` along both rotated axes (one full cycle per ``period``).

    Args:
        texture: pattern.
        yy, xx: pixel-centre grids ``(H, W)``.
        period: full pattern period in pixels.
        rot: ``(cos, sin)`` of the pattern orientation.
        phase: offsets in [0, 1) of a half-period, along u and v.

    Returns:
        ``(H, W)`` bool.
    """
    c, s = rot
    half = period / 2.0
    a = np.floor((c * xx + s * yy) / half + phase[0]).astype(np.int64)
    if texture is Texture.STRIPES:
        stripes: np.ndarray = (a % 2) == 1
        return stripes
    if texture is Texture.CHECKER:
        b = np.floor((c * yy - s * xx) / half + phase[1]).astype(np.int64)
        checker: np.ndarray = ((a + b) % 2) == 1
        return checker
    raise ValueError(f"unknown texture {texture!r}; expected one of {[m.value for m in Texture]}")


def low_frequency_field(
    rng: np.random.Generator, height: int, width: int, *, cells: int
) -> np.ndarray:
    """Smooth random field in [0, 1]: a ``(cells+1)^2`` uniform grid, bilinearly interpolated.

    Returns:
        ``(H, W)`` float64.
    """
    grid = rng.random((cells + 1, cells + 1))
    gy = (np.arange(height, dtype=np.float64) + 0.5) * (cells / height)
    gx = (np.arange(width, dtype=np.float64) + 0.5) * (cells / width)
    iy = np.minimum(np.floor(gy).astype(np.int64), cells - 1)
    ix = np.minimum(np.floor(gx).astype(np.int64), cells - 1)
    fy = (gy - iy)[:, None]
    fx = (gx - ix)[None, :]
    g00 = grid[iy][:, ix]
    g01 = grid[iy][:, ix + 1]
    g10 = grid[iy + 1][:, ix]
    g11 = grid[iy + 1][:, ix + 1]
    top = g00 + (g01 - g00) * fx
    bottom = g10 + (g11 - g10) * fx
    field: np.ndarray = top + (bottom - top) * fy
    return field


def pixel_noise(rng: np.random.Generator, shape: tuple[int, ...], *, sigma: float) -> np.ndarray:
    """Zero-mean, approximately Gaussian noise with standard deviation ``sigma``.

    An Irwin-Hall sum of 4 raw generator bytes (exact integers), rescaled: same mean and
    variance as N(0, sigma^2), support +-3.46 sigma. Raw bytes do not depend on numpy's
    distribution algorithms, which numpy does not promise to keep stable.

    Returns:
        float64 array of ``shape``.
    """
    n = int(np.prod(shape))
    raw = np.frombuffer(rng.bytes(_NOISE_BYTES * n), dtype=np.uint8).reshape(n, _NOISE_BYTES)
    centred = raw.sum(axis=1, dtype=np.int64).astype(np.float64) - _NOISE_BYTES * 127.5
    noise: np.ndarray = (centred * (sigma / _NOISE_SD)).reshape(shape)
    return noise


def boundary_band(labels: np.ndarray, width: int) -> np.ndarray:
    """Pixels within Chebyshev distance ``width`` of a pixel with a different label.

    Image borders are not boundaries (edge padding).

    Args:
        labels: ``(H, W)`` integer label map (before voiding).
        width: band half-width w in pixels; 0 gives an empty band.

    Returns:
        ``(H, W)`` bool.
    """
    if width <= 0:
        return np.zeros(labels.shape, dtype=bool)
    padded = np.pad(labels, width, mode="edge")
    h, w = labels.shape
    k = 2 * width + 1
    # separable (2w+1)^2 max and min filters
    rows_max = np.max([padded[i : i + h, :] for i in range(k)], axis=0)
    rows_min = np.min([padded[i : i + h, :] for i in range(k)], axis=0)
    full_max = np.max([rows_max[:, j : j + w] for j in range(k)], axis=0)
    full_min = np.min([rows_min[:, j : j + w] for j in range(k)], axis=0)
    band: np.ndarray = full_max != full_min
    return band
