"""Offline `synthetic-svhn`: house-number crops in the style of SVHN's 32x32 cropped digits.

Each image shows the labelled digit centred, with the house number's neighbouring digits (when present,
of their own size and height) cut off at the left and right edges. What varies, per example:

* glyph: one of 23 faces (every matplotlib/Pillow face with real digits: DejaVu, STIX, Computer Modern,
  Pillow's default; see `svhn_glyphs.FACES`) or, for 15% of the examples, a stroked skeleton with
  jittered points and a random pen width; optional bolding, thinning or dilation of the ink;
  neighbours sometimes in another face; now and then small stray text above or below;
* geometry: rotation (sd 7 deg, up to 25), shear, aspect, scale, a perspective (keystone) warp, a
  smooth elastic displacement field, and a jitter of the digit's centre;
* photometry: digit and background colours with a heavy tail of low contrast, gradients, coarse and
  fine textures, siding stripes, plate edges, drop shadows, bars and blobs occluding part of the digit,
  glare spots, uneven lighting, colour casts, blur, low resolution (rendered small and upsampled),
  sensor noise, and JPEG compression at a random quality.

`difficulty` (`data.synthetic.difficulty`, 0 to 1, default 1) scales every nuisance above: amplitudes,
probabilities and the tail of faint digits shrink toward clean renders of the same digits in the same
faces and layout (the demo renders 0.5). It is recorded in the manifest, so it is part of the data version.

No labels are flipped, but a small share of renders is hard or impossible to read by design (very low
contrast, heavy occlusion or blur), as in real SVHN; `benchmarks/svhn_calibration.py` measures what a
classifier makes of it (benchmarks/RESULTS.md, "synthetic-svhn/2: calibration").

Examples are rendered in fixed chunks of `CHUNK`; each chunk draws all of its random numbers from its
own generator seeded by `SeedSequence(seed, spawn_key=(chunk,))`, so example `i` of a stream depends
only on `(seed, i)`: not on how many examples are asked for, from where, or by how many processes.

Pixel work is vectorised over a chunk and uses only element-wise arithmetic (no BLAS, no reductions
over pixels, no transcendental functions on pixels), because a batched matrix product or a pairwise
sum may round differently with the batch's shape, which would make a slice of a render differ from a
render of that slice. The bytes also depend on the FreeType and libjpeg that Pillow ships (glyph
rasterisation, compression); bump `GENERATOR_VERSION` for any change here.
"""

from __future__ import annotations

import io
import math
import multiprocessing
from collections.abc import Callable

import numpy as np

from gan_models.data.svhn_glyphs import FACES, JITTER_POINTS, font_dir, font_glyph, stroke_glyph

__all__ = ["CHUNK", "FACES", "GENERATOR_VERSION", "SIZE", "font_dir", "render_digits", "render_split"]

GENERATOR_VERSION = "synthetic-svhn/2"  # recorded with the data; bump whenever the bytes change

CHUNK = 1024  # examples per random stream; changing it changes the bytes
SIZE = 32  # output side
_BLOCK = 256  # rows rendered at once: bounds the memory of the float temporaries, not part of the format
_CANVAS = 64  # side of the glyph canvas the output is sampled from (room for rotation and neighbours)
_BLUR_RADIUS = 4  # taps each side of the gaussian blur; covers 3 sigma of the largest blur
_TEXTURE_GRID = 5  # coarse background texture: a 5x5 grid of random colours, bilinearly upsampled
_FINE_GRID = 12  # fine texture (grain, foliage, brick): a 12x12 grid
_WARP_GRID = 4  # elastic displacement: a 4x4 grid of random offsets, bilinearly upsampled

# Bold faces are common on number plates, so they are drawn twice as often.
_FACE_WEIGHTS = np.array([2 if "Bol" in f else 1 for f in FACES], dtype=np.float64)

# Label frequencies of the real SVHN train split (digits 0..9): house numbers hold many 1s and 2s.
_SVHN_TRAIN_COUNTS = np.array(
    [4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659], dtype=np.float64
)

_MIN_HEIGHT, _MAX_HEIGHT = 15, 30  # ink height of the digit in output pixels: 47%..95% of 32
_STROKE_SHARE = 0.15  # share of examples drawn from stroke skeletons instead of fonts
_MIN_CONTRAST = 0.1  # luminance difference of digit and background, before lighting and noise
_CONTRAST_MEDIAN, _CONTRAST_SPREAD = 0.45, 0.5  # log-normal contrast: a heavy tail toward faint digits


# Glyphs.


def _paste(canvas: np.ndarray, mask: np.ndarray, y: int, x: int) -> None:
    """Max-combine `mask` into `canvas` at (y, x), clipped so the canvas keeps a blank 1-pixel border."""
    h, w = mask.shape
    y0, x0 = max(y, 1), max(x, 1)
    y1, x1 = min(y + h, _CANVAS - 1), min(x + w, _CANVAS - 1)
    if y0 >= y1 or x0 >= x1:
        return
    region = canvas[y0:y1, x0:x1]
    np.maximum(region, mask[y0 - y : y1 - y, x0 - x : x1 - x], out=region)


def _glyph(p: dict[str, np.ndarray], i: int, slot: int, digit: int, height: int) -> tuple[np.ndarray, int]:
    """Glyph `slot` (0: labelled digit, 1, 2: neighbours, 3: stray text) of example `i`."""
    if p["stroke"][i]:
        return stroke_glyph(
            digit,
            height,
            float(p["pen"][i] * height),
            float(p["stroke_aspect"][i]),
            p["stroke_jitter"][i, slot],
        )
    face = int(p["face"][i] if slot == 0 else p["nb_face"][i, min(slot, 3) - 1])
    return font_glyph(face, height, bool(p["bold"][i]) and height >= 18, digit)


# Random parameters of a chunk.


def _chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(chunk,))))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _with_luminance(rgb: np.ndarray, lum: np.ndarray) -> np.ndarray:
    """Shift colours to the wanted luminance, keeping their hue as far as [0, 1] allows."""
    return np.clip(rgb - _luminance(rgb)[:, None] + lum[:, None], 0.0, 1.0)


def _unit(angle: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def _draw_params(rng: np.random.Generator, difficulty: float = 1.0) -> dict[str, np.ndarray]:
    """Every per-example random choice of one chunk, drawn in a fixed order with fixed sizes.

    `difficulty` in [0, 1] scales every nuisance (distortion amplitudes, the share of stroke digits,
    occluders, glare, low resolution and JPEG, the tail of faint digits) from none to the full setting;
    the same numbers are drawn whatever its value (only what they are multiplied by changes), and at 1
    every product is exact, so the full setting's bytes are those of the unscaled generator.

    Everything non-linear (trigonometry, exponentials, matrix products) is computed here for the whole
    chunk, so an example's parameters are the same whichever rows of the chunk are rendered.
    """
    n, h = CHUNK, difficulty  # h: how hard
    p: dict[str, np.ndarray] = {}
    p["label"] = rng.choice(10, size=n, p=_SVHN_TRAIN_COUNTS / _SVHN_TRAIN_COUNTS.sum()).astype(np.int64)
    p["left"] = np.where(rng.random(n) < 0.6, rng.integers(0, 10, n), -1)  # -1: no neighbour
    p["right"] = np.where(rng.random(n) < 0.6, rng.integers(0, 10, n), -1)
    # Stray text (a street name, a second number) above or below: digit, side, size.
    p["stray"] = np.where(rng.random(n) < 0.08 * h, rng.integers(0, 10, n), -1)
    p["stray_below"] = rng.random(n) < 0.5
    p["stray_height"] = rng.integers(6, 11, n)

    # Glyph style. Neighbours usually share the labelled digit's face, sometimes not (mixed plates).
    p["stroke"] = rng.random(n) < _STROKE_SHARE * h
    p["face"] = rng.choice(len(FACES), size=n, p=_FACE_WEIGHTS / _FACE_WEIGHTS.sum())
    other = rng.choice(len(FACES), size=(n, 3), p=_FACE_WEIGHTS / _FACE_WEIGHTS.sum())
    p["nb_face"] = np.where(rng.random((n, 3)) < 0.8, p["face"][:, None], other)
    p["height"] = rng.integers(_MIN_HEIGHT, _MAX_HEIGHT + 1, n)
    p["bold"] = rng.random(n) < 0.2 * h  # a 1-pixel outline stroke: thicker than any face
    p["pen"] = rng.uniform(0.06, 0.2, n)  # stroke digits: pen width relative to the height
    p["stroke_aspect"] = rng.uniform(0.75, 1.3, n)
    wobble = rng.uniform(0.0, 0.025 * h, n)[:, None, None, None]
    p["stroke_jitter"] = rng.standard_normal((n, 4, JITTER_POINTS, 2)) * wobble
    # Neighbours: own height (a plate's digits are not always one size), baseline offset and gap.
    p["nb_height"] = np.round(p["height"][:, None] * rng.uniform(0.75, 1.25, (n, 2))).astype(np.int64)
    p["nb_dy"] = np.round(rng.normal(0.0, 0.08, (n, 2)) * p["height"][:, None]).astype(np.int64)
    gap = rng.uniform(0.04, 0.45, (n, 2)) * p["height"][:, None]
    p["gap"] = np.round(gap).astype(np.int64)
    # Ink morphology on the canvas: 0 none, 1 half erosion (thinner, fainter strokes), 2 dilation.
    p["morph"] = rng.choice(3, size=n, p=[1.0 - 0.2 * h, 0.08 * h, 0.12 * h])

    # Geometry. Source (canvas) = centre + A^-1 (out - centre - jitter) / w + elastic, where
    # w = 1 + g.(out - centre) is a keystone (perspective) term, and A = R(angle) . shear . diag(sx, sy).
    angle = np.deg2rad(np.clip(rng.normal(0.0, 7.0, n) * h, -25.0, 25.0))
    shear = rng.uniform(-0.2, 0.2, n) * h
    scale = rng.uniform(0.9, 1.1, n)
    aspect = rng.uniform(0.75, 1.2, n)  # width relative to height: condensed to wide faces
    jitter = rng.uniform(-2.0, 2.0, (n, 2))
    sx, sy = scale * aspect, scale
    c, s = np.cos(angle), np.sin(angle)
    a, b, d, e = c * sx, (c * shear - s) * sy, s * sx, (s * shear + c) * sy
    det = a * e - b * d
    p["inverse"] = np.stack([e / det, -b / det, -d / det, a / det], axis=1)
    p["jitter"] = jitter
    p["keystone"] = rng.uniform(-0.008, 0.008, (n, 2)) * h * (rng.random(n) < 0.5)[:, None]
    p["warp_amp"] = rng.uniform(0.0, 1.0, n) * h * (rng.random(n) < 0.4)
    p["warp"] = rng.standard_normal((n, 2, _WARP_GRID, _WARP_GRID), dtype=np.float32)

    # Colours: background and digit whose luminances differ by a log-normal contrast (heavy tail of
    # faint digits); light digits on dark plates about as often as dark digits on light walls.
    bg_rgb, fg_rgb = rng.random((n, 3)), rng.random((n, 3))
    saturation = rng.uniform(0.0, 1.0, (n, 2)) ** 2.5  # many real crops are nearly grey
    grey_bg, grey_fg = _luminance(bg_rgb)[:, None], _luminance(fg_rgb)[:, None]
    bg_rgb = grey_bg + (bg_rgb - grey_bg) * saturation[:, :1]
    fg_rgb = grey_fg + (fg_rgb - grey_fg) * saturation[:, 1:]
    # Easier settings shift the contrast toward the median's upper side and narrow its tail.
    median = _CONTRAST_MEDIAN + (1.0 - h) * 0.15
    contrast = np.exp(np.log(median) + _CONTRAST_SPREAD * h * rng.standard_normal(n))
    contrast = np.clip(contrast, _MIN_CONTRAST + (1.0 - h) * 0.2, 0.85)
    low = rng.uniform(0.03, 1.0 - contrast)
    light_digit = rng.random(n) < 0.45
    bg_lum = np.where(light_digit, low, low + contrast)
    fg_lum = np.where(light_digit, low + contrast, low)
    p["bg"] = bg = _with_luminance(bg_rgb, bg_lum)
    fg = _with_luminance(fg_rgb, fg_lum)
    # Clipping to [0, 1] can lose some of the contrast; win it back by moving the digit toward white
    # (light digits) or black, just far enough.
    target = np.where(light_digit, 1.0, 0.0)
    wanted = _luminance(bg) + np.where(light_digit, 1.0, -1.0) * np.minimum(contrast, 0.8)
    have = _luminance(fg)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip(np.nan_to_num((wanted - have) / (target - have)), 0.0, 1.0)
    p["fg"] = fg + (target[:, None] - fg) * t[:, None]

    # Shadow or embossing: a copy of the digit offset by up to 2 pixels, between digit and background.
    p["shadow"] = rng.random(n) < 0.2 * h
    p["shadow_shift"] = rng.integers(-2, 3, (n, 2))
    mix = rng.uniform(0.2, 0.7, n)[:, None]
    toward = np.where(rng.random(n)[:, None] < 0.6, 0.0, 1.0)
    p["shadow_rgb"] = p["bg"] * (1 - mix) + toward * mix

    # Background: gradient, coarse and fine texture, siding stripes, sometimes a plate edge across it.
    grad = rng.uniform(0.0, 0.3, n) / SIZE
    p["grad"] = _unit(rng.uniform(0, 2 * np.pi, n)) * grad[:, None]
    p["texture_amp"] = rng.uniform(0.0, 0.12, n) * h * (rng.random(n) < 0.7)
    p["fine_amp"] = rng.uniform(0.0, 0.08, n) * h * (rng.random(n) < 0.5)
    period = rng.uniform(3.0, 10.0, n)
    p["stripe_dir"] = _unit(rng.choice([0.0, 0.5 * np.pi], n) + rng.normal(0.0, 0.15, n)) / period[:, None]
    p["stripe_phase"] = rng.random(n)
    p["stripe_amp"] = rng.uniform(0.03, 0.12, n) * h * (rng.random(n) < 0.15)
    p["edge_normal"] = _unit(rng.uniform(0, 2 * np.pi, n))
    p["edge_offset"] = rng.uniform(8.0, 20.0, n)  # from the centre: plate edges lie near the border
    p["edge_rgb"] = rng.uniform(-0.45, 0.45, (n, 3)) * h * (rng.random(n) < 0.35)[:, None]

    # Occluders in front of the digit: a bar (pole, wire, railing) or a blob (leaf, dirt).
    occluded = rng.random(n) < 0.12 * h
    is_bar = rng.random(n) < 0.6
    p["bar_normal"] = _unit(rng.uniform(0, 2 * np.pi, n))
    p["bar_offset"] = rng.uniform(3.0, 16.0, n)
    p["bar_half"] = rng.uniform(0.5, 2.0, n)
    p["blob_centre"] = rng.uniform(-13.0, 13.0, (n, 2))
    radius = rng.uniform(2.0, 5.0, n)
    p["blob_r2"] = radius**2
    p["blob_soft"] = 1.0 / (2.0 * radius)  # the ramp of r^2 - d^2 is about 2r per pixel at the rim
    p["occ_alpha"] = rng.uniform(0.5, 0.9, n) * occluded
    p["occ_bar"] = is_bar
    p["occ_rgb"] = rng.random((n, 3))

    # Lighting: a multiplicative gradient, a glare spot, and a colour cast over everything.
    light = rng.uniform(0.0, 0.45, n) * h / SIZE
    p["light"] = _unit(rng.uniform(0, 2 * np.pi, n)) * light[:, None]
    p["glare_centre"] = rng.uniform(-14.0, 14.0, (n, 2))
    p["glare_inv_r2"] = 1.0 / rng.uniform(4.0, 14.0, n) ** 2
    p["glare"] = rng.uniform(0.15, 0.5, n) * (rng.random(n) < 0.1 * h)
    p["cast"] = np.exp(rng.normal(0.0, 0.08, (n, 3)) * h)

    sigma = rng.uniform(0.25, 0.25 + 0.95 * h, n)
    p["edge_soft"] = 1.0 + 2.0 * sigma  # the plate edge's ramp width, as blurred as the digit
    taps = np.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    p["blur"] = weights / weights.sum(axis=1, keepdims=True)
    # Low resolution: rendered at r x r and upsampled back (0: full resolution).
    p["lowres"] = np.where(rng.random(n) < 0.3 * h, rng.integers(14, 27, n), 0)
    p["noise"] = np.exp(rng.uniform(np.log(0.5), np.log(0.5 + 7.5 * h), n)) / 255.0
    # JPEG at a random quality (0: none).
    p["jpeg"] = np.where(rng.random(n) < 0.4 * h, rng.integers(20, 86, n), 0)

    p["texture"] = rng.standard_normal((n, _TEXTURE_GRID, _TEXTURE_GRID), dtype=np.float32)
    p["fine"] = rng.standard_normal((n, _FINE_GRID, _FINE_GRID), dtype=np.float32)
    p["pixel_noise"] = rng.standard_normal((n, 3, SIZE, SIZE), dtype=np.float32)
    return p


# Rendering.


def _compose_canvas(p: dict[str, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paste each example's digits into a canvas; returns canvases and the labelled digit's ink centre."""
    canvas = np.zeros((len(rows), _CANVAS, _CANVAS), dtype=np.uint8)
    centre = np.empty((len(rows), 2), dtype=np.float64)  # (x, y) in canvas pixels
    for k, i in enumerate(rows):
        height = int(p["height"][i])
        mask, top = _glyph(p, i, 0, int(p["label"][i]), height)
        h, w = mask.shape
        x0, y0 = (_CANVAS - w) // 2, (_CANVAS - h) // 2
        baseline = y0 - top
        _paste(canvas[k], mask, y0, x0)
        centre[k] = (x0 + w / 2, y0 + h / 2)
        for side, key in enumerate(("left", "right")):
            if p[key][i] < 0:
                continue
            nb_height = int(np.clip(p["nb_height"][i, side], 8, 36))
            m, t = _glyph(p, i, 1 + side, int(p[key][i]), nb_height)
            x = x0 - int(p["gap"][i, 0]) - m.shape[1] if side == 0 else x0 + w + int(p["gap"][i, 1])
            _paste(canvas[k], m, baseline + int(p["nb_dy"][i, side]) + t, x)
        if p["stray"][i] >= 0:
            m, t = _glyph(p, i, 3, int(p["stray"][i]), int(p["stray_height"][i]))
            y = y0 + h + 2 if p["stray_below"][i] else y0 - 2 - m.shape[0]
            _paste(canvas[k], m, y, x0 + (w - m.shape[1]) // 2)
    return canvas, centre


def _morph(canvas: np.ndarray, op: np.ndarray) -> np.ndarray:
    """Per-canvas 3x3-cross morphology: op 1 = half erosion (average with the eroded ink), 2 = dilation."""
    if not op.any():
        return canvas
    pad = np.pad(canvas, ((0, 0), (1, 1), (1, 1)))
    c = pad[:, 1:-1, 1:-1]
    shifted = (pad[:, :-2, 1:-1], pad[:, 2:, 1:-1], pad[:, 1:-1, :-2], pad[:, 1:-1, 2:])
    eroded, dilated = c.copy(), c.copy()
    for s in shifted:
        np.minimum(eroded, s, out=eroded)
        np.maximum(dilated, s, out=dilated)
    thinned = ((c.astype(np.uint16) + eroded) // 2).astype(np.uint8)
    op = op[:, None, None]
    return np.where(op == 1, thinned, np.where(op == 2, dilated, canvas))


def _gather(flat: np.ndarray, side: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear lookup in images `flat` (n, side*side) at float coords (n, P), clipped inside: (n, P)."""
    n = len(flat)
    f32 = np.float32
    x = np.clip(x, 0, side - 1.001)
    y = np.clip(y, 0, side - 1.001)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    index = y0.astype(np.int32) * side + x0.astype(np.int32)
    index += (np.arange(n, dtype=np.int32) * (side * side))[:, None]
    flat = flat.reshape(-1)
    v00 = flat.take(index).astype(f32)
    v01 = flat.take(index + 1).astype(f32)
    index += side
    v10 = flat.take(index).astype(f32)
    v11 = flat.take(index + 1).astype(f32)
    v01 -= v00
    v01 *= fx
    v00 += v01  # top row, interpolated along x
    v11 -= v10
    v11 *= fx
    v10 += v11  # bottom row
    v10 -= v00
    v10 *= fy
    v00 += v10
    return v00


def _sample(p: dict[str, np.ndarray], rows: np.ndarray, canvas: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Resample each canvas through its warp onto the 32x32 output: ink in [0, 1], (n, 32, 32)."""
    n = len(canvas)
    f32 = np.float32
    # Output pixel centres, flattened row-major, relative to where the labelled digit's centre lands.
    coords = np.arange(SIZE, dtype=f32) + f32(0.5 - SIZE / 2)
    jitter = p["jitter"][rows].astype(f32)
    u = np.tile(coords, SIZE)[None, :] - jitter[:, :1]
    v = np.repeat(coords, SIZE)[None, :] - jitter[:, 1:]
    inv = p["inverse"][rows].astype(f32)
    g = p["keystone"][rows].astype(f32)
    w = f32(1) + g[:, :1] * u + g[:, 1:] * v
    # Source coordinates in canvas pixels, shifted by -0.5 so integer values hit pixel centres.
    x = (inv[:, 0:1] * u + inv[:, 1:2] * v) / w + (centre[:, :1] - 0.5).astype(f32)
    y = (inv[:, 2:3] * u + inv[:, 3:4] * v) / w + (centre[:, 1:] - 0.5).astype(f32)
    warp = _upsample_grid(p["warp"][rows].reshape(-1, _WARP_GRID, _WARP_GRID)).reshape(n, 2, SIZE * SIZE)
    amp = p["warp_amp"][rows].astype(f32)[:, None]
    x += warp[:, 0] * amp
    y += warp[:, 1] * amp
    # Clipping into the canvas reads its blank border, so anything outside it is background.
    ink = _gather(canvas.reshape(n, -1), _CANVAS, x, y)
    ink *= f32(1 / 255)
    return ink.reshape(n, SIZE, SIZE)


def _shift(ink: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Each image's ink moved by its own (dx, dy) of -2..2 pixels, blank where it came from outside."""
    padded = np.pad(ink, ((0, 0), (2, 2), (2, 2)))
    idx = np.arange(SIZE)
    b = np.arange(len(ink))[:, None, None]
    ys = (idx[None, :] + 2 - shift[:, 1, None])[:, :, None]
    xs = (idx[None, :] + 2 - shift[:, 0, None])[:, None, :]
    return padded[b, ys, xs]


def _upsample_grid(grid: np.ndarray) -> np.ndarray:
    """Bilinearly upsample (n, g, g) to (n, 32, 32) by gathering, without matrix products."""
    g = grid.shape[1]
    pos = (np.arange(SIZE) + 0.5) * (g - 1) / SIZE
    i0 = np.minimum(pos.astype(np.int64), g - 2)
    w = (pos - i0).astype(np.float32)
    rows = grid[:, i0] * (1 - w)[None, :, None] + grid[:, i0 + 1] * w[None, :, None]
    return rows[:, :, i0] * (1 - w)[None, None, :] + rows[:, :, i0 + 1] * w[None, None, :]


def _blur(ink: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Separable gaussian blur of (n, 32, 32) with a per-image kernel, edges mirrored.

    A fixed-order sum of shifted copies: element-wise, so each image's result is independent of the batch.
    """
    r = _BLUR_RADIUS
    w = weights.astype(np.float32)[:, :, None, None]
    padded = np.pad(ink, ((0, 0), (r, r), (0, 0)), mode="reflect")
    out = padded[:, 0:SIZE] * w[:, 0]
    for k in range(1, 2 * r + 1):
        out += padded[:, k : k + SIZE] * w[:, k]
    padded = np.pad(out, ((0, 0), (0, 0), (r, r)), mode="reflect")
    out = padded[:, :, 0:SIZE] * w[:, 0]
    for k in range(1, 2 * r + 1):
        out += padded[:, :, k : k + SIZE] * w[:, k]
    return out


def _low_resolution(image: np.ndarray, res: np.ndarray) -> np.ndarray:
    """(m, 3, 1024) images sampled at res x res pixels and bilinearly upsampled back to 32x32."""
    m = len(image)
    f32 = np.float32
    r = res.astype(f32)[:, None]
    j = np.arange(SIZE, dtype=f32)[None, :]
    # Down: coarse pixel j's centre in fine pixels (columns past r are unused padding).
    down = (j + f32(0.5)) * (f32(SIZE) / r) - f32(0.5)
    xd, yd = np.tile(down, (1, SIZE)), np.repeat(down, SIZE, axis=1)
    planes = image.reshape(m * 3, SIZE * SIZE)
    coarse = _gather(planes, SIZE, np.repeat(xd, 3, axis=0), np.repeat(yd, 3, axis=0))
    # Up: fine pixel i's centre in coarse pixels, clipped to the r valid ones.
    up = np.minimum(np.maximum((j + f32(0.5)) * (r / f32(SIZE)) - f32(0.5), f32(0)), r - f32(1.001))
    xu, yu = np.tile(up, (1, SIZE)), np.repeat(up, SIZE, axis=1)
    return _gather(coarse, SIZE, np.repeat(xu, 3, axis=0), np.repeat(yu, 3, axis=0)).reshape(m, 3, -1)


def _jpeg(pixels: np.ndarray, quality: np.ndarray) -> None:
    """Round-trip the chosen (n, 32, 32, 3) uint8 images through Pillow's JPEG, in place."""
    from PIL import Image

    for k in np.nonzero(quality)[0]:
        buffer = io.BytesIO()
        Image.fromarray(pixels[k]).save(buffer, format="JPEG", quality=int(quality[k]))
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            pixels[k] = np.asarray(decoded.convert("RGB"))


def _render_rows(p: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Render the chosen rows of a chunk whose parameters are `p`: uint8 (len(rows), 32, 32, 3)."""
    f32 = np.float32
    n = len(rows)

    # Colour work runs on (n, channels, pixels): broadcasting a per-image value over 1024 contiguous
    # pixels is several times faster than over NHWC's innermost axis of 3.
    def col(key: str) -> np.ndarray:
        """A per-example parameter shaped (n, channels, 1) to broadcast over pixels."""
        return p[key][rows].astype(f32).reshape(n, -1, 1)

    canvas, centre = _compose_canvas(p, rows)
    canvas = _morph(canvas, p["morph"][rows])
    ink = _sample(p, rows, canvas, centre)
    del canvas
    # Only the digit is blurred: the background is smooth already and its one sharp feature, the plate
    # edge, is drawn with a matching soft ramp. Blurring one channel instead of three saves most of the time.
    ink = _blur(ink, p["blur"][rows]).reshape(n, 1, SIZE * SIZE)

    coords = np.arange(SIZE, dtype=f32) + f32(0.5 - SIZE / 2)
    xs, ys = np.tile(coords, SIZE), np.repeat(coords, SIZE)  # each pixel's position, flattened row-major
    grad, normal, light = col("grad"), col("edge_normal"), col("light")
    shade = grad[:, :1] * xs + grad[:, 1:] * ys
    shade += _upsample_grid(p["texture"][rows]).reshape(n, 1, -1) * col("texture_amp")
    shade += _upsample_grid(p["fine"][rows]).reshape(n, 1, -1) * col("fine_amp")
    # Siding or brick courses: a triangle wave across the image (frac() keeps it element-wise).
    sd = col("stripe_dir")
    phase = sd[:, :1] * xs + sd[:, 1:] * ys + col("stripe_phase")
    phase -= np.floor(phase)
    shade += (np.abs(phase - f32(0.5)) * f32(4) - f32(1)) * col("stripe_amp")
    image = col("bg") + shade
    # A plate edge: one side of a line across the image takes another shade.
    distance = normal[:, :1] * xs + normal[:, 1:] * ys - col("edge_offset")
    side = np.clip(distance / col("edge_soft") + f32(0.5), 0, 1)
    image += side * col("edge_rgb")
    np.clip(image, 0, 1, out=image)

    shadowed = np.nonzero(p["shadow"][rows])[0]
    if len(shadowed):
        shift = p["shadow_shift"][rows[shadowed]]
        shadow = _shift(ink[shadowed].reshape(-1, SIZE, SIZE), shift).reshape(-1, 1, SIZE * SIZE)
        rgb = p["shadow_rgb"][rows[shadowed]].astype(f32)[:, :, None]
        image[shadowed] += (rgb - image[shadowed]) * shadow
    image += (col("fg") - image) * ink

    occluded = np.nonzero(p["occ_alpha"][rows])[0]
    if len(occluded):
        o = rows[occluded]

        def occ(key: str) -> np.ndarray:
            return p[key][o].astype(f32).reshape(len(o), -1, 1)

        bn, bc = occ("bar_normal"), occ("blob_centre")
        bar = np.clip(
            occ("bar_half") - np.abs(bn[:, :1] * xs + bn[:, 1:] * ys - occ("bar_offset")) + 0.5, 0, 1
        )
        dx, dy = xs - bc[:, :1], ys - bc[:, 1:]
        blob = np.clip((occ("blob_r2") - dx * dx - dy * dy) * occ("blob_soft") + f32(0.5), 0, 1)
        alpha = np.where(occ("occ_bar") > 0, bar, blob) * occ("occ_alpha")
        image[occluded] += (occ("occ_rgb") - image[occluded]) * alpha

    image *= f32(1) + light[:, :1] * xs + light[:, 1:] * ys
    # Glare: a bright spot with a smooth polynomial falloff, screened over the image.
    gc = col("glare_centre")
    gx, gy = xs - gc[:, :1], ys - gc[:, 1:]
    spot = np.clip(f32(1) - (gx * gx + gy * gy) * col("glare_inv_r2"), 0, 1)
    spot *= spot
    spot *= col("glare")
    image += (f32(1) - image) * spot
    image *= col("cast")
    np.clip(image, 0, 1, out=image)

    small = np.nonzero(p["lowres"][rows])[0]
    if len(small):
        image[small] = _low_resolution(image[small], p["lowres"][rows[small]])
    noise = p["pixel_noise"][rows].reshape(n, 3, SIZE * SIZE)
    noise *= col("noise")
    image += noise
    np.clip(image, 0, 1, out=image)
    image *= f32(255)
    image += f32(0.5)
    pixels = np.ascontiguousarray(image.astype(np.uint8).reshape(n, 3, SIZE, SIZE).transpose(0, 2, 3, 1))
    _jpeg(pixels, p["jpeg"][rows])
    return pixels


def _render_chunk(
    seed: int, chunk: int, lo: int, hi: int, difficulty: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Examples lo..hi (within the chunk) of chunk `chunk` of the stream `seed`."""
    p = _draw_params(_chunk_rng(seed, chunk), difficulty)
    images = np.empty((hi - lo, SIZE, SIZE, 3), dtype=np.uint8)
    # Rows are rendered a block at a time to keep the float temporaries small; each row's bytes do not
    # depend on the blocking.
    for block in range(lo, hi, _BLOCK):
        rows = np.arange(block, min(block + _BLOCK, hi))
        images[block - lo : block - lo + len(rows)] = _render_rows(p, rows)
    return images, p["label"][lo:hi].copy()


def _render_chunk_task(task: tuple[int, int, int, int, float]) -> tuple[int, np.ndarray, np.ndarray]:
    seed, chunk, lo, hi, difficulty = task
    images, labels = _render_chunk(seed, chunk, lo, hi, difficulty)
    return chunk, images, labels


def _check(n: int, seed: int, start: int = 0, difficulty: float = 1.0) -> None:
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (numpy SeedSequence entropy), got {seed}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")


# Public API.


def render_digits(
    n: int, seed: int, *, start: int = 0, difficulty: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (n, 32, 32, 3) NHWC and labels int64 (n,) in 0..9: examples start..start+n of `seed`
    at `difficulty` (1: the full nuisance setting; see `_draw_params`)."""
    _check(n, seed, start, difficulty)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    pos = start
    while pos < start + n:
        chunk, lo = divmod(pos, CHUNK)
        hi = min(CHUNK, lo + start + n - pos)
        out = slice(pos - start, pos - start + hi - lo)
        images[out], labels[out] = _render_chunk(seed, chunk, lo, hi, difficulty)
        pos += hi - lo
    return images, labels


def render_split(
    n: int,
    seed: int,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    difficulty: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Examples 0..n of `seed`, byte-identical for any `workers`; `progress(k)` after each chunk of k."""
    _check(n, seed, difficulty=difficulty)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    tasks = [(seed, c, 0, min(CHUNK, n - c * CHUNK), difficulty) for c in range(math.ceil(n / CHUNK))]

    def store(chunk: int, chunk_images: np.ndarray, chunk_labels: np.ndarray) -> None:
        images[chunk * CHUNK : chunk * CHUNK + len(chunk_labels)] = chunk_images
        labels[chunk * CHUNK : chunk * CHUNK + len(chunk_labels)] = chunk_labels
        if progress:
            progress(len(chunk_labels))

    workers = min(workers, len(tasks))
    # A daemonic process (a worker of someone else's pool) may not start children: render in-process.
    if workers <= 1 or multiprocessing.current_process().daemon:
        for task in tasks:
            store(*_render_chunk_task(task))
        return images, labels
    # Spawn, not fork: the caller may hold threads (torch, Ray, Prefect) that a fork would copy mid-lock.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for result in pool.imap_unordered(_render_chunk_task, tasks):
            store(*result)
    return images, labels
