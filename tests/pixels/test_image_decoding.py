"""Images are decoded as a viewer shows them: every PIL mode against a reference conversion written here.

What a viewer shows, and so what the references compute: 16-bit grey scaled by 255/65535 (not
clipped: PIL's own ``convert("RGB")`` clips, which turned a 16-bit image white); floats in 0..1
scaled by 255; transparency composited on white (a viewer on a white page); CMYK by the naive
``(255 - C)(255 - K) / 255``; palettes looked up; the EXIF orientation applied.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vtsched.core.io import load_image, to_rgb

RNG = np.random.default_rng(23)
H, W = 12, 20  # not square, so a rotation that is not applied shows


def _grey_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.rint(grey).astype(np.uint8)[:, :, None], 3, axis=2)


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[:, :, None] / 255.0
    return rgb.astype(np.float64) * a + 255.0 * (1.0 - a)


def _check(image: Image.Image, reference: np.ndarray, tmp_path, fmt: str | None = "png", atol: int = 1) -> None:
    """``load_image`` of the image saved as ``fmt`` (and ``to_rgb`` of it in memory) equals the reference;
    ``fmt=None``: in memory only (a mode no file format stores)."""
    decoded = [to_rgb(image)]
    if fmt is not None:
        path = tmp_path / f"image.{fmt}"
        image.save(path)
        decoded.append(load_image(path))
    for got in decoded:
        assert got.mode == "RGB" and got.size == (reference.shape[1], reference.shape[0])
        diff = np.abs(np.asarray(got).astype(np.int64) - np.rint(reference).astype(np.int64))
        assert diff.max() <= atol, diff.max()


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = RNG.integers(0, 65536, size=(H, W), dtype=np.uint16)
    values[0, :3] = (0, 32768, 65535)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    _check(image, _grey_rgb(values.astype(np.float64) / 257.0), tmp_path, atol=0)
    assert np.asarray(load_image(tmp_path / "image.png")).mean() < 250  # the bug: everything 255


def test_32_bit_integer_grey_is_read_as_16_bit(tmp_path):
    values = RNG.integers(0, 65536, size=(H, W)).astype(np.int32)
    image = Image.fromarray(values, "I")
    _check(image, _grey_rgb(values / 257.0), tmp_path, fmt="tiff", atol=0)


def test_float_grey_in_unit_range_is_scaled(tmp_path):
    values = RNG.random((H, W)).astype(np.float32)
    image = Image.fromarray(values, "F")
    _check(image, _grey_rgb(values.astype(np.float64) * 255.0), tmp_path, fmt="tiff")


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode, tmp_path):
    channels = 4 if mode == "RGBA" else 2
    values = RNG.integers(0, 256, size=(H, W, channels), dtype=np.uint8)
    values[0, 0, -1], values[0, 1, -1] = 0, 255  # fully transparent, fully opaque
    image = Image.fromarray(values, mode)
    colour = values[:, :, :3] if mode == "RGBA" else np.repeat(values[:, :, :1], 3, axis=2)
    reference = _on_white(colour, values[:, :, -1])
    _check(image, reference, tmp_path)
    assert tuple(np.asarray(load_image(tmp_path / "image.png"))[0, 0]) == (255, 255, 255)


def test_palette_is_looked_up_and_its_transparent_colour_is_white(tmp_path):
    palette = RNG.integers(0, 256, size=(256, 3), dtype=np.uint8)
    index = RNG.integers(0, 8, size=(H, W), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(palette.flatten().tolist())
    _check(image, palette[index].astype(np.float64), tmp_path, atol=0)
    image.info["transparency"] = 3
    reference = palette[index].astype(np.float64)
    reference[index == 3] = 255.0
    _check(image, reference, tmp_path, atol=0)


def test_palette_with_alpha_is_composited_on_white(tmp_path):
    rgba = RNG.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    image = Image.fromarray(rgba, "RGBA").convert("PA")
    assert image.mode == "PA"
    seen = np.asarray(image.convert("RGBA"))  # the palette's colours, and the alpha as stored
    _check(image, _on_white(seen[:, :, :3], seen[:, :, 3]), tmp_path, fmt=None)  # PNG cannot store PA


def test_cmyk_jpeg_is_converted(tmp_path):
    cmyk = RNG.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    image = Image.fromarray(cmyk, "CMYK")
    k = cmyk[:, :, 3:].astype(np.float64)
    reference = (255.0 - cmyk[:, :, :3]) * (255.0 - k) / 255.0
    _check(image, reference, tmp_path, fmt="tiff")


@pytest.mark.parametrize("orientation,turns", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(orientation, turns, tmp_path):
    """Orientation 3: turn 180 degrees; 6: 90 clockwise; 8: 90 counter-clockwise (np.rot90 turns anticlockwise)."""
    values = RNG.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    image = Image.fromarray(values, "RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.png"
    image.save(path, exif=exif)
    got = np.asarray(load_image(path))
    np.testing.assert_array_equal(got, np.rot90(values, k=turns))


def test_plain_modes_are_unchanged(tmp_path):
    values = RNG.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    _check(Image.fromarray(values, "RGB"), values.astype(np.float64), tmp_path, atol=0)
    grey = values[:, :, 0]
    _check(Image.fromarray(grey, "L"), _grey_rgb(grey.astype(np.float64)), tmp_path, atol=0)



def test_the_python_api_converts_a_16_bit_image_as_load_image_does():
    """``Scheduler.prepare`` given a PIL image of another mode sees what ``load_image`` would give."""
    import torch

    from vtsched.core import Scheduler

    values = RNG.integers(0, 65536, size=(28, 28), dtype=np.uint16)
    image = Image.fromarray(values)
    scheduler = Scheduler.random("tiny")
    features = [scheduler.prepare([i], ["what?"]).samples[0].visual_features
                for i in (image, to_rgb(image), image.convert("RGB"))]
    assert torch.equal(features[0], features[1]) and not torch.equal(features[0], features[2])
