"""to_model_mode: each image is built with known pixels, saved in a format that keeps its mode
and reopened, so the test sees the mode Pillow really opens; the exact output values are checked."""
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from stdistill.data.images import to_model_mode

# 16-bit ramp -> round(v / 65535 * 255): 128 and 129 sit either side of the rounding midpoint 128.5.
RAMP16 = [0, 128, 129, 257, 1000, 32896, 65535]
RAMP8 = [0, 0, 1, 1, 4, 128, 255]  # 1000 -> 4, where PIL's own convert('L') clips it to 255


def reopen(img: Image.Image, path) -> Image.Image:
    img.save(path)
    return load(path)


def load(path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
    return img


def convert(img: Image.Image, mode: str, name: str = 'x.png') -> list:
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # e.g. PIL's palette-transparency warning must not fire
        out = to_model_mode(img, mode, name)
    assert out.mode == mode
    return np.asarray(out).tolist()


def as_rgb(gray: list) -> list:
    return [[[v, v, v] for v in row] for row in gray]


def write_tiff(path, size, bits: tuple, photometric, data: bytes, extra_samples=None) -> None:
    """An uncompressed one-strip little-endian TIFF, for layouts Pillow cannot write
    (12-bit samples, premultiplied alpha). At most 2 samples per pixel."""
    tags = {256: size[0], 257: size[1], 258: bits, 259: 1, 262: photometric, 273: 0, 277: len(bits),
            279: len(data)}
    if extra_samples is not None:
        tags[338] = extra_samples
    tags[273] = 8 + 2 + 12 * len(tags) + 4  # pixel data right after the one IFD

    def entry(tag, value):
        if tag in (273, 279):
            return struct.pack('<HHII', tag, 4, 1, value)  # LONG
        values = value if isinstance(value, tuple) else (value,)
        return struct.pack('<HHI', tag, 3, len(values)) + struct.pack(f'<{len(values)}H', *values).ljust(4, b'\0')

    ifd = b''.join(entry(tag, value) for tag, value in sorted(tags.items()))
    path.write_bytes(b'II*\0' + struct.pack('<IH', 8, len(tags)) + ifd + b'\0\0\0\0' + data)


def write_png16(path, width, color_type, samples) -> None:
    """A one-row 16-bit PNG (color_type 2: RGB, 4: gray+alpha, 6: RGBA), which Pillow cannot write."""
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    header = struct.pack('>IIBBBBB', width, 1, 16, color_type, 0, 0, 0)
    row = b'\0' + np.array(samples, '>u2').tobytes()  # filter type 0, big-endian samples
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(row))
                     + chunk(b'IEND', b''))


def ramp16(mode: str = 'I;16') -> Image.Image:
    return Image.frombytes(mode, (len(RAMP16), 1), np.array(RAMP16, '>u2' if mode == 'I;16B' else '<u2').tobytes())


# ---- 16-bit grayscale: scaled by the nominal range, never clipped -------------------------------

@pytest.mark.parametrize('source, filename, opened_as', [
    ('I;16', 'a.png', 'I;16'),    # 16-bit gray PNG
    ('I;16', 'a.tif', 'I;16'),    # little-endian 16-bit TIFF
    ('I;16B', 'a.tif', 'I;16B'),  # big-endian 16-bit TIFF
    ('I;16L', 'a.tif', 'I;16'),
    ('I;16', 'a.pgm', 'I'),       # PGM with maxval 65535: Pillow opens it as 32-bit 'I'
])
def test_16bit_gray_files_are_scaled(tmp_path, source, filename, opened_as):
    img = reopen(ramp16(source), tmp_path / filename)
    assert img.mode == opened_as
    assert convert(img, 'L') == [RAMP8]
    assert convert(img, 'RGB') == as_rgb([RAMP8])


def test_16bit_png_opened_as_I_like_older_pillow(tmp_path, monkeypatch):
    """Pillow < 10.3 opened 16-bit gray PNGs as 'I': patch the plugin's table the same way."""
    path = tmp_path / 'old.png'
    ramp16().save(path)
    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), ('I', 'I;16B'))
    img = load(path)
    assert (img.mode, img.format) == ('I', 'PNG')
    assert convert(img, 'L') == [RAMP8]


def test_native_endian_16bit_in_memory():
    img = ramp16('I;16N' if np.little_endian else 'I;16B')  # no file format stores I;16N
    assert convert(img, 'L') == [RAMP8]


def test_12bit_tiff_is_scaled_by_4095(tmp_path):
    values = [0, 8, 9, 1000, 2048, 4095]  # 8 -> 0.498, 9 -> 0.560, 2048 -> 127.53
    packed = int(''.join(f'{v:012b}' for v in values), 2).to_bytes(len(values) * 3 // 2, 'big')
    write_tiff(tmp_path / 'a.tif', (len(values), 1), (12,), 1, packed)
    img = load(tmp_path / 'a.tif')
    assert (img.mode, img.tag_v2[258]) == ('I;16', (12,))
    assert np.asarray(img).tolist() == [values]  # Pillow keeps 0..4095 in the 16-bit container
    assert convert(img, 'L') == [[0, 0, 1, 62, 128, 255]]


def test_pgm_with_other_maxval_is_scaled(tmp_path):
    path = tmp_path / 'a.pgm'
    path.write_bytes(b'P5 4 1 4095\n' + np.array([0, 9, 1000, 4095], '>u2').tobytes())
    img = load(path)
    assert img.mode == 'I'
    assert convert(img, 'L') == [[0, 1, 62, 255]]


# ---- refused: no known value range -------------------------------------------------------------

def signed16_tiff(path):
    Image.fromarray(np.array([[-5, 1000]], np.int16).view(np.uint16)).save(path, tiffinfo={339: 2})


@pytest.mark.parametrize('write, opened_as, kind', [
    (lambda p: Image.fromarray(np.array([[0.5, 2.0]], np.float32)).save(p), 'F', '32-bit float'),
    (lambda p: Image.fromarray(np.array([[0, 70000]], np.int32)).save(p), 'I', '32-bit integer'),
    (signed16_tiff, 'I', '32-bit integer'),  # signed 16-bit TIFF opens as 'I'
], ids=['float', 'int32', 'int16-signed'])
@pytest.mark.parametrize('target', ['L', 'RGB'])
def test_images_without_known_range_are_refused(tmp_path, write, opened_as, kind, target):
    path = tmp_path / 'bad image.tif'
    write(path)
    img = load(path)
    assert img.mode == opened_as
    with pytest.raises(ValueError) as error:
        to_model_mode(img, target, str(path))
    message = str(error.value)
    assert '\n' not in message
    assert f'image {path} has mode {opened_as} ({kind}, TIFF)' in message
    assert 'convert the images to 8 or 16-bit unsigned' in message


def test_in_memory_32bit_int_is_refused():
    with pytest.raises(ValueError, match=r"^image mem has mode I \(32-bit integer\): its value range is unknown"):
        to_model_mode(Image.fromarray(np.array([[0, 1000]], np.int32)), 'L', 'mem')


def test_target_mode_must_be_L_or_RGB():
    with pytest.raises(ValueError, match="'L' or 'RGB', got 'RGBA'"):
        to_model_mode(Image.new('L', (1, 1)), 'RGBA', 'x.png')


# ---- 8-bit modes: PIL's conversion, alpha dropped ------------------------------------------------

def palette(mode: str, transparency=None) -> Image.Image:
    img = Image.new(mode, (3, 1))
    img.putpalette([0, 0, 0, 255, 0, 0, 10, 20, 30])
    img.putdata([0, 1, 2] if mode == 'P' else [(0, 255), (1, 0), (2, 128)])
    if transparency is not None:
        img.info['transparency'] = transparency
    return img


def array(mode: str, values) -> Image.Image:
    return Image.fromarray(np.array([values], np.uint8), mode)


PALETTE_RGB = [[[0, 0, 0], [255, 0, 0], [10, 20, 30]]]
PALETTE_L = [[0, 76, 18]]


@pytest.mark.parametrize('make, filename, opened_as, want_l, want_rgb', [
    (lambda: Image.frombytes('1', (2, 1), bytes([0b01000000])), 'a.png', '1',
     [[0, 255]], as_rgb([[0, 255]])),
    (lambda: array('L', [0, 7, 255]), 'a.png', 'L', [[0, 7, 255]], as_rgb([[0, 7, 255]])),
    (lambda: array('LA', [[10, 255], [200, 0]]), 'a.png', 'LA', [[10, 200]], as_rgb([[10, 200]])),
    (lambda: palette('P'), 'a.png', 'P', PALETTE_L, PALETTE_RGB),
    (lambda: palette('P', transparency=1), 'a.png', 'P', PALETTE_L, PALETTE_RGB),
    (lambda: palette('P', transparency=bytes([255, 0, 128])), 'a.png', 'P', PALETTE_L, PALETTE_RGB),
    (lambda: palette('PA'), 'a.tif', 'PA', PALETTE_L, PALETTE_RGB),
    (lambda: array('RGB', [[255, 0, 0], [10, 20, 30]]), 'a.png', 'RGB',
     [[76, 18]], [[[255, 0, 0], [10, 20, 30]]]),
    (lambda: array('RGBA', [[255, 0, 0, 0], [10, 20, 30, 128]]), 'a.png', 'RGBA',
     [[76, 18]], [[[255, 0, 0], [10, 20, 30]]]),
    (lambda: array('CMYK', [[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]), 'a.tif', 'CMYK',
     [[255, 179, 0]], [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]]),
    (lambda: array('YCbCr', [[128, 128, 128], [255, 128, 128], [76, 85, 255]]), 'a.tif', 'YCbCr',
     [[128, 255, 76]], [[[128, 128, 128], [255, 255, 255], [254, 0, 0]]]),
    (lambda: array('LAB', [[255, 0, 0], [0, 0, 0]]), 'a.tif', 'LAB',  # a, b are signed: 0 is neutral
     [[255, 0]], [[[254, 255, 254], [1, 0, 1]]]),
], ids=['1', 'L', 'LA', 'P', 'P-transparent-index', 'P-transparent-bytes', 'PA', 'RGB', 'RGBA', 'CMYK',
        'YCbCr', 'LAB'])
def test_8bit_modes(tmp_path, make, filename, opened_as, want_l, want_rgb):
    img = reopen(make(), tmp_path / filename)
    assert img.mode == opened_as
    assert convert(img, 'L') == want_l
    assert convert(img, 'RGB') == want_rgb


def test_premultiplied_gray_alpha_tiff_is_unpremultiplied(tmp_path):
    # ExtraSamples = 1 (associated alpha): Pillow opens it as 'La'; 100 at alpha 128 is 199 unpremultiplied
    write_tiff(tmp_path / 'a.tif', (2, 1), (8, 8), 1, bytes([100, 128, 50, 255]), extra_samples=1)
    img = load(tmp_path / 'a.tif')
    assert img.mode == 'La'
    assert convert(img, 'L') == [[199, 50]]
    assert convert(img, 'RGB') == as_rgb([[199, 50]])


def test_hsv_in_memory():
    img = array('HSV', [[0, 255, 255], [0, 0, 128]])  # no file format stores HSV
    assert convert(img, 'L') == [[76, 128]]
    assert convert(img, 'RGB') == [[[255, 0, 0], [128, 128, 128]]]


@pytest.mark.parametrize('mode', ['L', 'RGB'])
def test_target_mode_passes_through_unchanged(tmp_path, mode):
    img = reopen(array(mode, [1, 2, 3] if mode == 'L' else [[1, 2, 3]]), tmp_path / 'a.png')
    assert to_model_mode(img, mode, 'a.png') is img


def test_16bit_color_pngs_are_opened_as_8bit_by_pillow(tmp_path):
    """Pillow itself reduces 16-bit RGB, RGBA and gray+alpha PNGs to 8 bits (keeping the high
    byte: scaled, not clipped), so they reach to_model_mode as plain 'RGB'/'RGBA'."""
    write_png16(tmp_path / 'rgb.png', 2, 2, [0, 257, 65535, 1000, 30000, 32896])
    write_png16(tmp_path / 'la.png', 2, 4, [1000, 65535, 30000, 0])
    rgb, la = load(tmp_path / 'rgb.png'), load(tmp_path / 'la.png')
    assert (rgb.mode, la.mode) == ('RGB', 'RGBA')
    assert convert(rgb, 'RGB') == [[[0, 1, 255], [3, 117, 128]]]
    assert convert(la, 'L') == [[3, 117]]
