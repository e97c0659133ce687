"""Offline `synthetic-svhn`: house-number crops in the style of SVHN's 32x32 cropped digits.

Each image shows the labelled digit centred, with the house number's neighbouring digits (when present)
cut off at the left and right edges, drawn in a DejaVu face bundled with matplotlib, rotated, sheared,
lit unevenly, blurred and noisy. Examples are rendered in fixed chunks of `CHUNK`; each chunk draws all
of its random numbers from its own generator seeded by `SeedSequence(seed, spawn_key=(chunk,))`, so
example `i` of a stream depends only on `(seed, i)`: not on how many examples are asked for, from
where, or by how many processes.

Pixel work is vectorised over a chunk and uses only element-wise arithmetic (no BLAS, no reductions
over pixels), because a batched matrix product or a pairwise sum may round differently with the batch's
shape, which would make a slice of a render differ from a render of that slice. The bytes also depend
on the FreeType that Pillow ships (glyph rasterisation); bump `GENERATOR_VERSION` for any change here.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable
from functools import cache

import numpy as np

GENERATOR_VERSION = "synthetic-svhn/1"  # recorded with the data; bump whenever the bytes change

CHUNK = 1024  # examples per random stream; changing it changes the bytes
SIZE = 32  # output side
_BLOCK = 256  # rows rendered at once: bounds the memory of the float temporaries, not part of the format
_CANVAS = 64  # side of the glyph canvas the output is sampled from (room for rotation and neighbours)
_BLUR_RADIUS = 4  # taps each side of the gaussian blur; covers 3 sigma of the largest blur
_TEXTURE_GRID = 5  # background texture: a 5x5 grid of random colours, bilinearly upsampled

# Faces a house number might plausibly use; the Display faces hold no digits. Order is part of the format.
FACES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
)
# Bold faces are common on number plates, so they are drawn twice as often.
_FACE_WEIGHTS = np.array([2 if "Bold" in f else 1 for f in FACES], dtype=np.float64)

# Label frequencies of the real SVHN train split (digits 0..9): house numbers hold many 1s and 2s.
_SVHN_TRAIN_COUNTS = np.array(
    [4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659], dtype=np.float64
)

_MIN_HEIGHT, _MAX_HEIGHT = 16, 29  # ink height of the digit in output pixels: 50%..90% of 32
_MIN_CONTRAST = 0.25  # luminance difference of digit and background, before lighting and noise


# Glyphs.


def font_dir() -> str:
    """The folder of matplotlib's bundled TrueType fonts."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@cache
def _font_size_per_pixel(face: int) -> float:
    """Font size (px per em) that gives one pixel of digit ink height in this face."""
    from PIL import ImageFont

    path = os.path.join(font_dir(), FACES[face])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"synthetic-svhn needs the font {path} (bundled with matplotlib)")
    left, top, right, bottom = ImageFont.truetype(path, 200).getbbox("0")
    return 200.0 / (bottom - top)


@cache
def _glyph(face: int, height: int, bold: bool, digit: int) -> tuple[np.ndarray, int]:
    """The ink of one digit cropped to its bounding box, and the box's top relative to the baseline.

    Rendered once per process and kept: a split uses a few thousand distinct glyphs at most.
    """
    from PIL import Image, ImageDraw, ImageFont

    size = round(height * _font_size_per_pixel(face))
    font = ImageFont.truetype(os.path.join(font_dir(), FACES[face]), size)
    stroke = 1 if bold else 0
    text = str(digit)
    # Anchor "ls": the origin is on the baseline, so every digit's top is measured from the same line.
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke, anchor="ls")
    image = Image.new("L", (right - left + 2, bottom - top + 2))
    ImageDraw.Draw(image).text(
        (1 - left, 1 - top), text, fill=255, font=font, anchor="ls", stroke_width=stroke, stroke_fill=255
    )
    ink = np.asarray(image)
    rows, cols = np.nonzero(ink.max(axis=1))[0], np.nonzero(ink.max(axis=0))[0]
    mask = np.ascontiguousarray(ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    return mask, top - 1 + int(rows[0])


def _paste(canvas: np.ndarray, mask: np.ndarray, y: int, x: int) -> None:
    """Max-combine `mask` into `canvas` at (y, x), clipped so the canvas keeps a blank 1-pixel border."""
    h, w = mask.shape
    y0, x0 = max(y, 1), max(x, 1)
    y1, x1 = min(y + h, _CANVAS - 1), min(x + w, _CANVAS - 1)
    if y0 >= y1 or x0 >= x1:
        return
    region = canvas[y0:y1, x0:x1]
    np.maximum(region, mask[y0 - y : y1 - y, x0 - x : x1 - x], out=region)


# Random parameters of a chunk.


def _chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(chunk,))))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _with_luminance(rgb: np.ndarray, lum: np.ndarray) -> np.ndarray:
    """Shift colours to the wanted luminance, keeping their hue as far as [0, 1] allows."""
    return np.clip(rgb - _luminance(rgb)[:, None] + lum[:, None], 0.0, 1.0)


def _draw_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every per-example random choice of one chunk, drawn in a fixed order with fixed sizes.

    Everything non-linear (trigonometry, exponentials, matrix products) is computed here for the whole
    chunk, so an example's parameters are the same whichever rows of the chunk are rendered.
    """
    n = CHUNK
    p: dict[str, np.ndarray] = {}
    p["label"] = rng.choice(10, size=n, p=_SVHN_TRAIN_COUNTS / _SVHN_TRAIN_COUNTS.sum()).astype(np.int64)
    p["left"] = np.where(rng.random(n) < 0.6, rng.integers(0, 10, n), -1)  # -1: no neighbour
    p["right"] = np.where(rng.random(n) < 0.6, rng.integers(0, 10, n), -1)
    p["face"] = rng.choice(len(FACES), size=n, p=_FACE_WEIGHTS / _FACE_WEIGHTS.sum())
    p["height"] = rng.integers(_MIN_HEIGHT, _MAX_HEIGHT + 1, n)
    p["bold"] = (rng.random(n) < 0.25) & (p["height"] >= 20)  # a 1-pixel stroke: thicker than any face
    # Gap between digits, relative to their height: plates are set tight or loose.
    gap = rng.uniform(0.04, 0.4, (n, 2)) * p["height"][:, None]
    p["gap"] = np.round(gap).astype(np.int64)

    # Geometry: output = R(angle) . shear . diag(sx, sy) . (source - centre) + centre + jitter.
    angle = np.deg2rad(np.clip(rng.normal(0.0, 5.0, n), -12.0, 12.0))
    shear = rng.uniform(-0.15, 0.15, n)
    scale = rng.uniform(0.93, 1.07, n)
    aspect = rng.uniform(0.8, 1.15, n)  # width relative to height: condensed to wide faces
    jitter = rng.uniform(-1.5, 1.5, (n, 2))
    sx, sy = scale * aspect, scale
    c, s = np.cos(angle), np.sin(angle)
    # Forward matrix [[a, b], [d, e]] = R @ [[1, shear], [0, 1]] @ diag(sx, sy); sampling needs its inverse.
    a, b, d, e = c * sx, (c * shear - s) * sy, s * sx, (s * shear + c) * sy
    det = a * e - b * d
    p["inverse"] = np.stack([e / det, -b / det, -d / det, a / det], axis=1)
    p["jitter"] = jitter

    # Colours: a background and a digit colour whose luminances differ by at least 0.25; light digits
    # on dark plates about as often as dark digits on light walls.
    bg_rgb, fg_rgb = rng.random((n, 3)), rng.random((n, 3))
    saturation = rng.uniform(0.0, 1.0, (n, 2)) ** 2.5  # many real crops are nearly grey
    grey_bg, grey_fg = _luminance(bg_rgb)[:, None], _luminance(fg_rgb)[:, None]
    bg_rgb = grey_bg + (bg_rgb - grey_bg) * saturation[:, :1]
    fg_rgb = grey_fg + (fg_rgb - grey_fg) * saturation[:, 1:]
    contrast = rng.uniform(_MIN_CONTRAST, 0.8, n)
    low = rng.uniform(0.03, 1.0 - contrast)
    light_digit = rng.random(n) < 0.45
    bg_lum = np.where(light_digit, low, low + contrast)
    fg_lum = np.where(light_digit, low + contrast, low)
    p["bg"] = bg = _with_luminance(bg_rgb, bg_lum)
    fg = _with_luminance(fg_rgb, fg_lum)
    # Clipping to [0, 1] can lose some of the contrast; win it back by moving the digit toward white
    # (light digits) or black, just far enough.
    target = np.where(light_digit, 1.0, 0.0)
    wanted = _luminance(bg) + np.where(light_digit, 1.0, -1.0) * _MIN_CONTRAST
    have = _luminance(fg)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip(np.nan_to_num((wanted - have) / (target - have)), 0.0, 1.0)
    p["fg"] = fg + (target[:, None] - fg) * t[:, None]

    # Shadow or embossing: a copy of the digit one pixel off, in a colour between digit and background.
    p["shadow"] = rng.random(n) < 0.15
    p["shadow_shift"] = rng.integers(-1, 2, (n, 2))
    mix = rng.uniform(0.2, 0.6, n)[:, None]
    toward = np.where(rng.random(n)[:, None] < 0.5, 0.0, 1.0)
    p["shadow_rgb"] = p["bg"] * (1 - mix) + toward * mix

    # Background: linear gradient, low-frequency texture, and sometimes a plate edge across it.
    grad_angle = rng.uniform(0, 2 * np.pi, n)
    grad = rng.uniform(0.0, 0.25, n) / SIZE
    p["grad"] = np.stack([np.cos(grad_angle) * grad, np.sin(grad_angle) * grad], axis=1)
    p["texture_amp"] = rng.uniform(0.0, 0.08, n) * (rng.random(n) < 0.7)
    edge_angle = rng.uniform(0, 2 * np.pi, n)
    p["edge_normal"] = np.stack([np.cos(edge_angle), np.sin(edge_angle)], axis=1)
    p["edge_offset"] = rng.uniform(9.0, 20.0, n)  # from the centre: plate edges lie near the border
    p["edge_rgb"] = rng.uniform(-0.4, 0.4, (n, 3)) * (rng.random(n) < 0.3)[:, None]
    # Lighting: a multiplicative gradient over digit and background alike.
    light_angle = rng.uniform(0, 2 * np.pi, n)
    light = rng.uniform(0.0, 0.35, n) / SIZE
    p["light"] = np.stack([np.cos(light_angle) * light, np.sin(light_angle) * light], axis=1)

    sigma = rng.uniform(0.25, 1.3, n)
    p["edge_soft"] = 1.0 + 2.0 * sigma  # the plate edge's ramp width, as blurred as the digit
    taps = np.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    p["blur"] = weights / weights.sum(axis=1, keepdims=True)
    p["noise"] = rng.uniform(0.5, 6.0, n) / 255.0

    p["texture"] = rng.standard_normal((n, _TEXTURE_GRID, _TEXTURE_GRID), dtype=np.float32)
    p["pixel_noise"] = rng.standard_normal((n, 3, SIZE, SIZE), dtype=np.float32)
    return p


# Rendering.


def _compose_canvas(p: dict[str, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paste each example's digits into a canvas; returns canvases and the labelled digit's ink centre."""
    canvas = np.zeros((len(rows), _CANVAS, _CANVAS), dtype=np.uint8)
    centre = np.empty((len(rows), 2), dtype=np.float64)  # (x, y) in canvas pixels
    for k, i in enumerate(rows):
        face, height, bold = int(p["face"][i]), int(p["height"][i]), bool(p["bold"][i])
        mask, top = _glyph(face, height, bold, int(p["label"][i]))
        h, w = mask.shape
        x0, y0 = (_CANVAS - w) // 2, (_CANVAS - h) // 2
        baseline = y0 - top
        _paste(canvas[k], mask, y0, x0)
        centre[k] = (x0 + w / 2, y0 + h / 2)
        if p["left"][i] >= 0:
            m, t = _glyph(face, height, bold, int(p["left"][i]))
            _paste(canvas[k], m, baseline + t, x0 - int(p["gap"][i, 0]) - m.shape[1])
        if p["right"][i] >= 0:
            m, t = _glyph(face, height, bold, int(p["right"][i]))
            _paste(canvas[k], m, baseline + t, x0 + w + int(p["gap"][i, 1]))
    return canvas, centre


def _sample(canvas: np.ndarray, centre: np.ndarray, inverse: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Bilinearly resample each canvas through its affine map onto the 32x32 output: ink in [0, 1]."""
    n = len(canvas)
    f32 = np.float32
    # Output pixel centres, flattened row-major, relative to where the labelled digit's centre lands.
    coords = np.arange(SIZE, dtype=f32) + f32(0.5 - SIZE / 2)
    u = np.tile(coords, SIZE)[None, :] - jitter[:, :1].astype(f32)
    v = np.repeat(coords, SIZE)[None, :] - jitter[:, 1:].astype(f32)
    inv = inverse.astype(f32)
    # Source coordinates in canvas pixels, shifted by -0.5 so integer values hit pixel centres.
    x = inv[:, 0:1] * u + inv[:, 1:2] * v + (centre[:, :1] - 0.5).astype(f32)
    y = inv[:, 2:3] * u + inv[:, 3:4] * v + (centre[:, 1:] - 0.5).astype(f32)
    # Clipping into the canvas reads its blank border, so anything outside it is background.
    np.clip(x, 0, _CANVAS - 1.001, out=x)
    np.clip(y, 0, _CANVAS - 1.001, out=y)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    index = y0.astype(np.int32) * _CANVAS + x0.astype(np.int32)
    index += (np.arange(n, dtype=np.int32) * (_CANVAS * _CANVAS))[:, None]
    flat = canvas.reshape(-1)
    v00 = flat.take(index).astype(f32)
    v01 = flat.take(index + 1).astype(f32)
    index += _CANVAS
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
    v00 *= f32(1 / 255)
    return v00.reshape(n, SIZE, SIZE)


def _shift(ink: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Each image's ink moved by its own (dx, dy) of -1, 0 or 1 pixels, blank where it came from outside."""
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    idx = np.arange(SIZE)
    b = np.arange(len(ink))[:, None, None]
    ys = (idx[None, :] + 1 - shift[:, 1, None])[:, :, None]
    xs = (idx[None, :] + 1 - shift[:, 0, None])[:, None, :]
    return padded[b, ys, xs]


def _upsample_texture(grid: np.ndarray) -> np.ndarray:
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
    ink = _sample(canvas, centre, p["inverse"][rows], p["jitter"][rows])
    del canvas
    # Only the digit is blurred: the background is smooth already and its one sharp feature, the plate
    # edge, is drawn with a matching soft ramp. Blurring one channel instead of three saves most of the time.
    ink = _blur(ink, p["blur"][rows]).reshape(n, 1, SIZE * SIZE)

    coords = np.arange(SIZE, dtype=f32) + f32(0.5 - SIZE / 2)
    xs, ys = np.tile(coords, SIZE), np.repeat(coords, SIZE)  # each pixel's position, flattened row-major
    grad, normal, light = col("grad"), col("edge_normal"), col("light")
    shade = grad[:, :1] * xs + grad[:, 1:] * ys
    shade += _upsample_texture(p["texture"][rows]).reshape(n, 1, -1) * col("texture_amp")
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
    image *= f32(1) + light[:, :1] * xs + light[:, 1:] * ys
    noise = p["pixel_noise"][rows].reshape(n, 3, SIZE * SIZE)
    noise *= col("noise")
    image += noise
    np.clip(image, 0, 1, out=image)
    image *= f32(255)
    image += f32(0.5)
    pixels = image.astype(np.uint8).reshape(n, 3, SIZE, SIZE)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))


def _render_chunk(seed: int, chunk: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Examples lo..hi (within the chunk) of chunk `chunk` of the stream `seed`."""
    p = _draw_params(_chunk_rng(seed, chunk))
    images = np.empty((hi - lo, SIZE, SIZE, 3), dtype=np.uint8)
    # Rows are rendered a block at a time to keep the float temporaries small; each row's bytes do not
    # depend on the blocking.
    for block in range(lo, hi, _BLOCK):
        rows = np.arange(block, min(block + _BLOCK, hi))
        images[block - lo : block - lo + len(rows)] = _render_rows(p, rows)
    return images, p["label"][lo:hi].copy()


def _render_chunk_task(task: tuple[int, int, int, int]) -> tuple[int, np.ndarray, np.ndarray]:
    seed, chunk, lo, hi = task
    images, labels = _render_chunk(seed, chunk, lo, hi)
    return chunk, images, labels


def _check(n: int, seed: int, start: int = 0) -> None:
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (numpy SeedSequence entropy), got {seed}")


# Public API.


def render_digits(n: int, seed: int, *, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (n, 32, 32, 3) NHWC and labels int64 (n,) in 0..9: examples start..start+n of `seed`."""
    _check(n, seed, start)
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    pos = start
    while pos < start + n:
        chunk, lo = divmod(pos, CHUNK)
        hi = min(CHUNK, lo + start + n - pos)
        out = slice(pos - start, pos - start + hi - lo)
        images[out], labels[out] = _render_chunk(seed, chunk, lo, hi)
        pos += hi - lo
    return images, labels


def render_split(
    n: int, seed: int, workers: int = 1, progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Examples 0..n of `seed`, byte-identical for any `workers`; `progress(k)` after each chunk of k."""
    _check(n, seed)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    images = np.empty((n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    tasks = [(seed, c, 0, min(CHUNK, n - c * CHUNK)) for c in range(math.ceil(n / CHUNK))]

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
