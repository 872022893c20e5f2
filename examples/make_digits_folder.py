"""Write scikit-learn's bundled digits (1,797 images of 8x8 pixels, 10 classes) as an image folder:

    python3 examples/make_digits_folder.py data/digits      # needs scikit-learn

    data/digits/train/<digit>/<index>.png        (4 of every 5 images)
    data/digits/validation/<digit>/<index>.png   (every 5th image)

Each image is upscaled to 32x32 (nearest, so no new grey levels) and stored as 8-bit grayscale
(the digits' 0..16 scaled to 0..255): a real small dataset to try `recipes/folder/` on.
"""
import argparse
import os

import numpy as np
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('output', help='a new folder for the image folder')
    parser.add_argument('--size', type=int, default=32, help='side of the written images, in pixels')
    args = parser.parse_args()
    from sklearn.datasets import load_digits
    digits = load_digits()
    if os.path.exists(args.output):
        raise SystemExit(f'{args.output} exists: give a new folder')
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        split = 'validation' if index % 5 == 0 else 'train'
        folder = os.path.join(args.output, split, str(label))
        os.makedirs(folder, exist_ok=True)
        pixels = np.round(image * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((args.size, args.size), Image.NEAREST).save(
            os.path.join(folder, f'{index:04d}.png'))
    print(f'{len(digits.images)} images in {args.output} (train/ and validation/, one folder per digit)')


if __name__ == '__main__':
    main()
