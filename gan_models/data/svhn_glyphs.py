"""Digit glyph sources for `synthetic-svhn`: font faces the environment ships, and stroked skeletons.

A glyph is a uint8 ink mask cropped to its bounding box plus the box's top relative to the baseline,
in output pixels. Font glyphs are cached per process (a split uses a few thousand distinct ones);
stroke glyphs take per-example random jitter, so they are drawn each time (at 2x, then averaged down
in integer arithmetic so the bytes do not depend on anything but Pillow's line rasteriser).
"""

from __future__ import annotations

import math
import os
from functools import cache

import numpy as np

PILLOW_DEFAULT = "<pillow-default>"  # Pillow's built-in outline font (Aileron), via ImageFont.load_default

# Every face bundled with matplotlib (plus Pillow's own) whose digit code points hold distinct digit
# glyphs. Left out: DejaVu*Display (no digits), STIXNonUni* and STIXSiz* (no digits), cmex10 and cmsy10
# (delimiters and symbols at the digit code points), LastResortHE (the same placeholder for every
# character). cmmi10 has old-style figures (3, 4, 5, 7, 9 descend). Order is part of the format.
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
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmti10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmmi10.ttf",
    PILLOW_DEFAULT,
)
DIGITS = "0123456789"


def font_dir() -> str:
    """The folder of matplotlib's bundled TrueType fonts."""
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@cache
def _font(face: int, size: int):  # noqa: ANN202 - PIL's FreeTypeFont, imported lazily
    from PIL import ImageFont

    name = FACES[face]
    if name == PILLOW_DEFAULT:
        font = ImageFont.load_default(size)
        if not isinstance(font, ImageFont.FreeTypeFont):
            raise RuntimeError("synthetic-svhn needs Pillow built with FreeType (its default outline font)")
        return font
    path = os.path.join(font_dir(), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"synthetic-svhn needs the font {path} (bundled with matplotlib)")
    return ImageFont.truetype(path, size)


@cache
def _font_size_per_pixel(face: int) -> float:
    """Font size (px per em) that gives one pixel of ink height over all ten digits of this face."""
    left, top, right, bottom = _font(face, 200).getbbox(DIGITS)
    return 200.0 / (bottom - top)


def _crop(ink: np.ndarray) -> tuple[np.ndarray, int, int]:
    """`ink` cropped to its nonzero box, and the box's first row and column."""
    rows, cols = np.nonzero(ink.max(axis=1))[0], np.nonzero(ink.max(axis=0))[0]
    if len(rows) == 0:  # cannot happen for the faces above; keep one pixel so shapes stay valid
        return np.zeros((1, 1), dtype=np.uint8), 0, 0
    box = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return np.ascontiguousarray(box), int(rows[0]), int(cols[0])


@cache
def font_glyph(face: int, height: int, bold: bool, digit: int) -> tuple[np.ndarray, int]:
    """One digit of a face, `height` output pixels tall over the face's digits: (ink, top from baseline)."""
    from PIL import Image, ImageDraw

    font = _font(face, max(1, round(height * _font_size_per_pixel(face))))
    stroke = 1 if bold else 0
    text = str(digit)
    # Anchor "ls": the origin is on the baseline, so every digit's top is measured from the same line.
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke, anchor="ls")
    image = Image.new("L", (right - left + 2, bottom - top + 2))
    ImageDraw.Draw(image).text(
        (1 - left, 1 - top), text, fill=255, font=font, anchor="ls", stroke_width=stroke, stroke_fill=255
    )
    mask, row, _ = _crop(np.asarray(image))
    return mask, top - 1 + row


# Stroke skeletons: polylines in a box 1 tall and about 0.6 wide (x right, y down, baseline at y=1).
# Arcs are ("arc", cx, cy, rx, ry, from_deg, to_deg), angles clockwise from +x on screen (-90 = top).
_Part = tuple
_SKELETONS: dict[int, tuple[tuple[_Part, ...], ...]] = {
    0: ((("arc", 0.3, 0.5, 0.3, 0.5, -90, 270),),),
    1: ((("pts", (0.1, 0.22), (0.34, 0.0), (0.34, 1.0)),),),
    2: ((("arc", 0.3, 0.28, 0.28, 0.28, -170, 20), ("pts", (0.02, 1.0), (0.62, 1.0))),),
    3: (
        (("arc", 0.3, 0.25, 0.26, 0.25, -160, 90),),
        (("arc", 0.3, 0.73, 0.3, 0.27, -90, 160),),
    ),
    4: ((("pts", (0.46, 1.0), (0.46, 0.0), (0.0, 0.7), (0.62, 0.7)),),),
    5: ((("pts", (0.56, 0.0), (0.1, 0.0), (0.06, 0.44)), ("arc", 0.3, 0.68, 0.3, 0.32, -130, 140)),),
    6: (
        (("pts", (0.52, 0.02), (0.22, 0.18), (0.04, 0.6)),),
        (("arc", 0.31, 0.69, 0.28, 0.31, -180, 180),),
    ),
    7: ((("pts", (0.0, 0.0), (0.6, 0.0), (0.22, 1.0)),),),
    8: (
        (("arc", 0.3, 0.24, 0.24, 0.24, 90, 450),),
        (("arc", 0.3, 0.72, 0.3, 0.28, -90, 270),),
    ),
    9: (
        (("arc", 0.29, 0.31, 0.28, 0.31, 0, 360),),
        (("pts", (0.57, 0.36), (0.5, 0.76), (0.18, 1.0)),),
    ),
}
JITTER_POINTS = 24  # jitter values a stroke glyph takes: 20 cycled over its points, then one per stroke


@cache
def skeleton(digit: int) -> tuple[np.ndarray, ...]:
    """The digit's strokes as float64 (k, 2) point arrays in the unit box (arcs sampled every 20 deg)."""
    strokes = []
    for stroke in _SKELETONS[digit]:
        points: list[tuple[float, float]] = []
        for part in stroke:
            if part[0] == "pts":
                points += list(part[1:])
            else:
                _, cx, cy, rx, ry, a0, a1 = part
                steps = max(2, math.ceil(abs(a1 - a0) / 20))
                for k in range(steps + 1):
                    t = math.radians(a0 + (a1 - a0) * k / steps)
                    points.append((cx + rx * math.cos(t), cy + ry * math.sin(t)))
        strokes.append(np.array(points, dtype=np.float64))
    return tuple(strokes)


def stroke_glyph(
    digit: int, height: int, width: float, aspect: float, jitter: np.ndarray
) -> tuple[np.ndarray, int]:
    """A hand-drawn-like digit: the skeleton, jittered, drawn with a `width`-pixel round pen.

    `jitter` (JITTER_POINTS, 2) is in units of the glyph height: rows 0..19 wobble single points (at a
    third of their size, so lines stay smooth), rows 20.. shift whole strokes. Returns (ink, top from
    baseline).
    """
    from PIL import Image, ImageDraw

    scale = 2 * height  # drawn at 2x for anti-aliasing
    pen = max(2, round(2 * width))
    margin = pen + 2 + scale // 4
    side_w, side_h = round(scale * 0.62 * aspect) + 2 * margin, scale + 2 * margin
    side_w, side_h = side_w + side_w % 2, side_h + side_h % 2
    image = Image.new("L", (side_w, side_h))
    draw = ImageDraw.Draw(image)
    k = 0
    for s, stroke in enumerate(skeleton(digit)):
        pts = stroke + jitter[(k + np.arange(len(stroke))) % 20] * (1 / 3) + jitter[20 + s]
        k += len(stroke)
        xy = [(margin + x * scale * aspect, margin + y * scale) for x, y in pts.tolist()]
        draw.line(xy, fill=255, width=pen)
        # Round caps and joints (Pillow's joint="curve" costs five times as much as the line itself).
        r = pen / 2 - 0.5
        for x, y in xy if pen > 3 else (xy[0], xy[-1]):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    ink = np.asarray(image).astype(np.uint16)
    # 2x2 average, rounded, in integers: exact on every machine.
    small = ((ink[0::2, 0::2] + ink[1::2, 0::2] + ink[0::2, 1::2] + ink[1::2, 1::2] + 2) // 4).astype(
        np.uint8
    )
    mask, row, _ = _crop(small)
    baseline = (margin + scale) // 2
    return mask, row - baseline
