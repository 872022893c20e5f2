"""Turn an opened image into the model's input mode ('L' or 'RGB') without losing its range.

PIL's `img.convert('L')` / `convert('RGB')` CLIPS 16-bit grayscale (modes 'I;16*', and 'I')
at 255 instead of scaling 0..65535 to 0..255, so most pixels of a 16-bit dataset saturate.
`to_model_mode` scales each image by its format's nominal range (never by the image's own
min/max, which would normalise every image differently), lets PIL convert the 8-bit modes,
and refuses, with a one-line message naming the file, what has no known range (32-bit 'I', 'F').
"""
import numpy as np
from PIL import Image

from ..utils.errors import UserError


# Unsigned 16-bit grayscale: scaled here. Signed variants (old Pillow's 'I;16S') are refused.
_UINT16 = frozenset({'I;16', 'I;16B', 'I;16L', 'I;16N'})
# 8 bits per channel: PIL's own convert maps these correctly.
_EIGHT_BIT = frozenset({'1', 'L', 'LA', 'La', 'P', 'PA', 'RGB', 'RGBA', 'RGBa', 'RGBX',
                        'CMYK', 'YCbCr', 'LAB', 'HSV'})
# Mode 'I' (32-bit signed int) is accepted only from formats where it provably holds 0..65535:
# a PNG sample has at most 16 unsigned bits (Pillow < 10.3 opened 16-bit gray PNGs as 'I'), and
# Pillow >= 9.2 opens a PGM with maxval > 255 as 'I' rescaled to 0..65535. From TIFF, 'I' is
# signed 16-bit or 32-bit data, and elsewhere (FITS, IM, McIdas, in-memory) its range is unknown.
_I_IS_UINT16 = frozenset({'PNG', 'PPM'})
_DESCRIBE = {'I': '32-bit integer', 'F': '32-bit float'}


def to_model_mode(img: Image.Image, mode: str, name: str) -> Image.Image:
    """img as `mode` ('L' for 1-channel models, 'RGB' for 3-channel), 8 bits per channel.

    16-bit grayscale ('I;16', 'I;16B', 'I;16L', 'I;16N'; 'I' from PNG or PGM) becomes
    round(value / full * 255), full = 65535 (4095 for a 12-bit TIFF, from its BitsPerSample).
    Other modes go through PIL's convert: palette images with transparency, 'PA' and the
    premultiplied 'La' via RGBA/LA first; alpha is dropped (not composited), as timm and
    torchvision do. 'L' or 'RGB' already equal to `mode` is returned as is (`img` itself).
    Note that Pillow itself opens 16-bit RGB(A) and gray+alpha files as 8-bit 'RGB'/'RGBA'.

    Raises UserError, one line naming `name` and img.mode, for an image whose value range is
    unknown ('F', 'I' from TIFF or other formats, signed 16-bit) or a mode not listed here;
    and for `mode` other than 'L' or 'RGB'.
    """
    if mode not in ('L', 'RGB'):
        raise UserError(f"target mode must be 'L' or 'RGB', got {mode!r}")
    if img.mode in _UINT16 or (img.mode == 'I' and img.format in _I_IS_UINT16):
        gray = Image.fromarray(_scale_to_uint8(np.asarray(img), _full_scale(img)))
        return gray if mode == 'L' else gray.convert('RGB')
    if img.mode not in _EIGHT_BIT:
        kind = _DESCRIBE.get(img.mode, 'unsupported')
        source = f', {img.format}' if img.format else ''
        raise UserError(f'image {name} has mode {img.mode} ({kind}{source}): its value range is unknown; '
                        f'convert the images to 8 or 16-bit unsigned (e.g. PNG)')
    if img.mode == 'PA' or (img.mode == 'P' and 'transparency' in img.info):
        img = img.convert('RGBA')  # PIL warns to go via RGBA: the palette alone loses transparency
    elif img.mode == 'La':
        img = img.convert('LA')  # un-premultiply: PIL has no La -> L/RGB conversion
    elif img.mode == 'LAB' and mode == 'L':
        img = img.convert('RGB')  # PIL has no LAB -> L conversion
    return img if img.mode == mode else img.convert(mode)


def _full_scale(img: Image.Image) -> int:
    """The largest nominal value of a 16-bit-container image: 65535, or 2**bits - 1 where a
    TIFF's BitsPerSample (tag 258) says fewer bits (Pillow opens 12-bit TIFFs as 'I;16' 0..4095)."""
    bits = img.tag_v2.get(258) if img.format == 'TIFF' else None
    return 2 ** bits[0] - 1 if bits else 65535


def _scale_to_uint8(values: np.ndarray, full: int) -> np.ndarray:
    """round(values * 255 / full) as uint8, in exact integer arithmetic: floor((510 v + full) / 2 full).
    With `full` odd, v * 255 / full is never exactly k + 1/2, so how ties round does not matter."""
    # a damaged file may hold values above its stated depth: saturate them rather than wrap
    v = np.minimum(values.astype(np.uint32), full)  # 0..full <= 65535: 510 v + full fits in 32 bits
    return ((510 * v + full) // (2 * full)).astype(np.uint8)
