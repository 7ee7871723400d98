"""read_image / image_size: every mode decodes to the right RGB values; bad files say what to do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.data.dataset import DatasetError
from workbench.data.images import image_size, read_image


def _save(tmp_path, name, array):
    """Write an array as an image; PIL picks the mode (H x W x 2 uint8 -> LA, uint16 -> I;16)."""
    path = tmp_path / name
    Image.fromarray(array).save(path)
    return path


def _rgb_noise(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_is_exact_chw_float_in_unit_range(tmp_path):
    array = _rgb_noise()
    image = read_image(_save(tmp_path, "rgb.png", array))
    assert image.dtype == torch.float32 and image.shape == (3, 24, 32)
    assert torch.equal(image, torch.from_numpy(array).permute(2, 0, 1).float() / 255)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    image = read_image(_save(tmp_path, "gray.png", gray))
    expected = torch.tensor([[0, 0.2], [0.8, 1.0]])
    assert image.shape == (3, 2, 2)
    for channel in image:
        assert torch.allclose(channel, expected, atol=1e-6)


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 51]]], dtype=np.uint8)
    image = read_image(_save(tmp_path, "rgba.png", rgba))
    a = 51 / 255
    expected = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1 - a, 1 - a, a + (1 - a)]])
    assert torch.allclose(image[:, 0, :].T, expected, atol=1e-6)


def test_gray_alpha_is_composited_over_white(tmp_path):
    la = np.array([[[0, 255], [0, 0], [100, 128]]], dtype=np.uint8)
    image = read_image(_save(tmp_path, "la.png", la))
    a = 128 / 255
    expected = torch.tensor([0.0, 1.0, 100 / 255 * a + (1 - a)])
    for channel in image:
        assert torch.allclose(channel[0], expected, atol=1e-6)


def test_palette_image_uses_its_palette_and_transparent_index_is_white(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    img.save(tmp_path / "p.png")
    assert torch.allclose(
        read_image(tmp_path / "p.png")[:, 0, :].T * 255,
        torch.tensor([[255.0, 0, 0], [0, 255, 0], [10, 20, 30]]),
        atol=1e-4,
    )
    img.save(tmp_path / "p_transparent.png", transparency=1)
    pixel = read_image(tmp_path / "p_transparent.png")[:, 0, 1]
    assert torch.allclose(pixel, torch.ones(3))


def test_16_bit_png_uses_the_full_16_bit_range(tmp_path):
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    path = _save(tmp_path, "g16.png", values)
    assert Image.open(path).mode == "I;16"
    image = read_image(path)
    expected = torch.tensor([0, 256, 32768, 65535]) / 65535
    for channel in image:
        assert torch.allclose(channel[0], expected, atol=1e-6)


def test_bilevel_and_cmyk_images_become_rgb(tmp_path):
    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    bits.save(tmp_path / "bits.png")
    assert torch.equal(read_image(tmp_path / "bits.png")[:, 0, :], torch.tensor([[0.0, 1.0]] * 3))
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(tmp_path / "cmyk.tif")
    assert torch.allclose(read_image(tmp_path / "cmyk.tif")[:, 0, 0], torch.tensor([1.0, 0, 0]))


def test_exif_orientation_is_applied_unless_asked_not_to(tmp_path):
    img = Image.fromarray(_rgb_noise(h=10, w=20))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").shape == (3, 20, 10)  # as displayed
    assert image_size(tmp_path / "rotated.jpg") == (20, 10)  # the same frame, header only
    assert read_image(tmp_path / "rotated.jpg", apply_exif=False).shape == (3, 10, 20)
    assert image_size(tmp_path / "rotated.jpg", apply_exif=False) == (10, 20)


def test_float_images_in_the_unit_range_are_kept_others_refused_with_their_range(tmp_path):
    ramp = np.array([[0.0, 0.25, 1.0]], dtype=np.float32)
    Image.fromarray(ramp, mode="F").save(tmp_path / "unit.tif")
    assert torch.allclose(
        read_image(tmp_path / "unit.tif")[:, 0, :], torch.tensor([[0, 0.25, 1]] * 3)
    )
    Image.fromarray(ramp * 1000, mode="F").save(tmp_path / "raw.tif")
    with pytest.raises(
        DatasetError,
        match=r"raw\.tif holds float pixels in \[0, 1000\].*must lie "
        r"in \[0, 1\].*8- or 16-bit",
    ):
        read_image(tmp_path / "raw.tif")
    Image.fromarray(np.array([[np.nan, 0.5]], dtype=np.float32), mode="F").save(tmp_path / "n.tif")
    with pytest.raises(DatasetError, match=r"\[0\.5, 0\.5\] and NaN/inf"):
        read_image(tmp_path / "n.tif")


def test_image_size_is_height_width_and_reads_only_the_header(tmp_path):
    path = _save(tmp_path, "wide.jpg", _rgb_noise(h=48, w=64))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    assert image_size(path) == (48, 64)
    assert image_size(truncated) == (48, 64)  # the header survives; decoding would fail


def test_unicode_file_name(tmp_path):
    path = _save(tmp_path, "血球_é ü.png", _rgb_noise(h=5, w=6))
    assert read_image(path).shape == (3, 5, 6)


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DatasetError, match=r"nothere\.jpg does not exist; check the dataset"):
        read_image(tmp_path / "nothere.jpg")
    with pytest.raises(DatasetError, match=r"nothere\.jpg does not exist"):
        image_size(tmp_path / "nothere.jpg")


def test_directory_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="is a directory"):
        read_image(tmp_path)


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_truncated_file_names_the_path_and_the_fix(tmp_path, suffix):
    path = _save(tmp_path, f"full.{suffix}", _rgb_noise(h=64, w=64))
    data = path.read_bytes()
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=rf"cut\.{suffix}.*truncated or corrupt: re-download"):
        read_image(cut)


def test_corrupt_png_data_is_a_dataset_error(tmp_path):
    path = _save(tmp_path, "ok.png", _rgb_noise(h=64, w=64))
    data = bytearray(path.read_bytes())
    data[200:260] = bytes(60)  # zero a run inside the compressed image data
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"bad\.png.*truncated or corrupt"):
        read_image(bad)


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "page.jpg"
    path.write_text("<html>404 not found</html>")
    with pytest.raises(DatasetError, match=r"page\.jpg is not an image file.*replace it"):
        read_image(path)
    with pytest.raises(DatasetError, match=r"page\.jpg is not an image file"):
        image_size(path)


def test_over_large_image_is_refused_with_pixel_count_and_limit(tmp_path):
    path = _save(tmp_path, "big.png", _rgb_noise(h=20, w=30))
    with pytest.raises(DatasetError, match=r"big\.png has 600 pixels \(30x20\).*limit of 599"):
        read_image(path, max_pixels=599)
    assert read_image(path, max_pixels=600).shape == (3, 20, 30)


def test_pil_decompression_bomb_becomes_a_dataset_error(tmp_path, monkeypatch):
    path = _save(tmp_path, "bomb.png", _rgb_noise(h=20, w=30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL refuses above twice this
    with pytest.raises(DatasetError, match=r"bomb\.png is too large.*600 pixels.*Downscale"):
        read_image(path)
