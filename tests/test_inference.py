"""Image files as devices make them, each made here: phone photos with an EXIF
orientation, 16-bit and floating-point images, transparency, 28 x 28 images, blank ones,
and files that are not images or not files at all."""

import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from rnnjax import inference


def digit_one(h=60, w=40, ink=0.0, paper=1.0):
  """A dark vertical bar (a '1') on light paper, `[h, w]` in [0, 1]."""
  g = np.full((h, w), paper)
  g[10:50, 18:22] = ink
  return g


def png_header_only(path, w, h):
  """A tiny PNG that declares `w` x `h` pixels (no real pixel data)."""
  def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0,
                                                                      0, 0))
                   + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.fixture
def reference(tmp_path):
  """The MNIST-like array of the plain 8-bit grayscale '1'."""
  path = tmp_path / "plain.png"
  Image.fromarray((digit_one() * 255).astype(np.uint8)).save(path)
  out = inference.load_image(path)
  ys, xs = np.nonzero(out > 127)
  assert ys.max() - ys.min() + 1 == 20  # a tall bar, scaled to MNIST's 20-pixel box
  return out


def test_exif_orientation_of_a_phone_photo_is_applied(tmp_path, reference):
  # The camera stored the pixels turned a quarter (the '1' lies on its side) and says so
  # in EXIF: orientation 6, "rotate 90 degrees clockwise to display".
  stored = np.rot90(digit_one(), k=1)  # counter-clockwise: what the sensor wrote
  im = Image.fromarray((stored * 255).astype(np.uint8)).convert("RGB")
  exif = Image.Exif()
  exif[0x0112] = 6
  path = tmp_path / "photo.jpg"
  im.save(path, quality=95, exif=exif)
  out = inference.load_image(path)
  ys, xs = np.nonzero(out > 127)
  assert ys.max() - ys.min() + 1 == 20 and xs.max() - xs.min() + 1 <= 4  # upright again
  assert np.abs(out.astype(int) - reference).mean() < 6  # JPEG's ringing aside, the same


def test_16_bit_image_keeps_its_range(tmp_path, reference):
  path = tmp_path / "sixteen.png"
  Image.fromarray((digit_one() * 65535).astype(np.uint16)).save(path)  # mode I;16
  np.testing.assert_array_equal(inference.load_image(path), reference)


def test_16_bit_image_with_a_faint_digit(tmp_path):
  # All values above 255: an 8-bit conversion clips every pixel to white ("blank").
  path = tmp_path / "faint16.png"
  Image.fromarray((1000 + digit_one() * 30000).astype(np.uint16)).save(path)
  out = inference.load_image(path)
  ys, _ = np.nonzero(out > 127)
  assert ys.max() - ys.min() + 1 == 20


def test_float_image_in_0_1_is_not_read_as_black(tmp_path, reference):
  path = tmp_path / "float.tiff"
  Image.fromarray(digit_one().astype(np.float32), mode="F").save(path)
  np.testing.assert_array_equal(inference.load_image(path), reference)


@pytest.mark.parametrize("ink", [(0, 0, 0), (255, 255, 255)])
def test_transparent_canvas_is_composited_on_the_background_the_digit_implies(tmp_path, ink,
                                                                              reference):
  # A digit drawn on a transparent canvas: the ink is opaque, the rest fully transparent
  # (and of the same colour as the ink, as many programs store it).
  rgba = np.zeros((60, 40, 4), np.uint8)
  rgba[..., :3] = ink
  rgba[..., 3] = ((1 - digit_one()) * 255).astype(np.uint8)  # opaque where the bar is
  path = tmp_path / "transparent.png"
  Image.fromarray(rgba, "RGBA").save(path)
  np.testing.assert_array_equal(inference.load_image(path), reference)


def test_opaque_rgba_is_read_as_its_colours(tmp_path, reference):
  rgba = np.zeros((60, 40, 4), np.uint8)
  rgba[..., :3] = (digit_one() * 255).astype(np.uint8)[..., None]
  rgba[..., 3] = 255
  path = tmp_path / "opaque.png"
  Image.fromarray(rgba, "RGBA").save(path)
  np.testing.assert_array_equal(inference.load_image(path), reference)


def test_28x28_on_a_grey_background_is_normalised():
  # A 28 x 28 crop of a photo: light grey paper, dark digit. Not MNIST-shaped yet.
  g = np.full((28, 28), 0.6)
  g[4:24, 13:15] = 0.1
  out = inference.to_mnist(g)
  assert out[0].max() == 0 and out[:, 0].max() == 0  # the paper became black
  ys, _ = np.nonzero(out > 127)
  assert ys.max() - ys.min() + 1 == 20


@pytest.mark.parametrize("shape", [(28, 28), (200, 300)])
def test_one_blank_test_for_every_size(shape):
  with pytest.raises(ValueError, match="blank"):
    inference.to_mnist(np.zeros(shape))  # black: a 28 x 28 one was taken as a digit
  speck = np.zeros(shape)
  speck[5, 7] = 1.0  # one pixel of noise: a big blob after the crop and resize
  with pytest.raises(ValueError, match="specks"):
    inference.to_mnist(speck)
  rng = np.random.default_rng(0)
  specks = np.zeros(shape)
  specks[rng.integers(0, shape[0], 4), rng.integers(0, shape[1], 4)] = 1.0
  with pytest.raises(ValueError, match="specks"):
    inference.to_mnist(specks)


def test_a_faint_but_clear_digit_is_not_blank():
  g = np.full((300, 200), 0.5)
  g[40:260, 95:105] = 0.58  # 8% contrast, a clear stroke
  out = inference.to_mnist(g)
  ys, _ = np.nonzero(out > 127)
  assert ys.max() - ys.min() + 1 == 20


def test_a_declared_size_over_the_cap_is_refused_before_decoding(tmp_path):
  big = tmp_path / "bomb.png"
  png_header_only(big, 50000, 50000)
  assert big.stat().st_size < 100
  with pytest.raises(inference.InferenceError, match="bomb.png: declares more than the 50 "
                     "megapixels"):
    inference.load_image(big)
  wide = tmp_path / "wide.png"
  png_header_only(wide, 12000, 12000)
  with warnings.catch_warnings():  # Pillow's own warning at 144 megapixels is not shown
    warnings.simplefilter("error")
    with pytest.raises(inference.InferenceError, match=r"declares 12,000 x 12,000 pixels "
                       "\\(144 megapixels\\), more than the 50"):
      inference.load_image(wide)


def test_only_regular_files_are_read(tmp_path):
  fifo = tmp_path / "fifo.png"
  os.mkfifo(fifo)  # opening it would block until a writer came
  with pytest.raises(inference.InferenceError, match="fifo.png: not a regular file"):
    inference.load_image(fifo)
  with pytest.raises(inference.InferenceError, match="not a regular file"):
    inference.load_image("/dev/zero")


def test_a_file_name_that_is_not_utf8_is_shown(tmp_path):
  name = os.fsdecode(b"caf\xe9.png")
  path = tmp_path / name
  path.write_bytes(b"not an image")
  with pytest.raises(inference.InferenceError) as e:
    inference.load_image(path)
  message = str(e.value)
  assert "caf\ufffd.png: not a readable image" in message
  message.encode("utf-8")  # printable anywhere: no lone surrogates left
