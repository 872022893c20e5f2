"""Write a few Fashion-MNIST classes as an image folder of RGB PNGs, of any size.

    python3 examples/make_fashion_folder.py data/clothes                    # shirt, bag, boot: 240 + 60 images
    python3 examples/make_fashion_folder.py data/clothes --train 4000 --val 1000 --classes shirt bag boot coat

    data/clothes/train/<class>/<index>.png         (--train images, split evenly over the classes)
    data/clothes/validation/<class>/<index>.png    (--val images, from Fashion-MNIST's test set)

Each 28x28 image is resized to --size (bilinear) and stored as RGB: a real small folder, like
the ones users bring, to try `recipes/folder/` on a few hundred to tens of thousands of images.
Needs Fashion-MNIST's IDX files (Debian's dataset-fashion-mnist, or --data-dir).
"""
import argparse
import os

import numpy as np
from PIL import Image

from stdistill.data.fashion_mnist import FashionMNIST

# short folder names of Fashion-MNIST's ten classes, in its label order
NAMES = ('tshirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'boot')


def write_folder(output: str, classes=('shirt', 'bag', 'boot'), train: int = 240, val: int = 60, size: int = 32,
                 data_dir=None) -> None:
    """Write `train` training and `val` validation images of `classes` (names of NAMES) under output."""
    for split, count, source in (('train', train, 'train'), ('validation', val, 'test')):
        data = FashionMNIST(data_dir, source)
        for c, name in enumerate(classes):
            share = count // len(classes) + (c < count % len(classes))
            folder = os.path.join(output, split, name)
            os.makedirs(folder, exist_ok=True)
            for index in np.flatnonzero(data.targets == NAMES.index(name))[:share]:
                Image.fromarray(data.images[index]).convert('RGB').resize((size, size), Image.BILINEAR).save(
                    os.path.join(folder, f'{index:05d}.png'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('output', help='a new folder for the image folder')
    parser.add_argument('--classes', nargs='+', default=['shirt', 'bag', 'boot'], choices=NAMES)
    parser.add_argument('--train', type=int, default=240, help='training images in all')
    parser.add_argument('--val', type=int, default=60, help='validation images in all')
    parser.add_argument('--size', type=int, default=32, help='side of the written images, in pixels')
    parser.add_argument('--data-dir', default=None, help='folder with the Fashion-MNIST IDX files')
    args = parser.parse_args()
    if os.path.exists(args.output):
        raise SystemExit(f'{args.output} exists: give a new folder')
    write_folder(args.output, args.classes, args.train, args.val, args.size, args.data_dir)
    print(f'{args.train} + {args.val} images of {len(args.classes)} classes in {args.output} (train/ and validation/)')


if __name__ == '__main__':
    main()
