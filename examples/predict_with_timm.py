"""Top-5 classes of images with timm alone: no stdistill import, as a deployed model runs.

    python3 examples/predict_with_timm.py exported/digits_timm a.png b.png

The folder is what `stdistill export` writes for a student of one of timm's architectures
with the class head (`config.json` + `model.safetensors`). timm rebuilds the model from
`config.json`, and its data config (input size, interpolation, crop, mean/std) gives the
preprocessing the run evaluated with.
"""
import argparse

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('folder', help='a folder written by `stdistill export --head cls`')
    parser.add_argument('images', nargs='+')
    args = parser.parse_args()
    model = timm.create_model(f'local-dir:{args.folder}', pretrained=True).eval()
    config = resolve_data_config(model=model)
    transform = create_transform(**config)
    names = model.pretrained_cfg['label_names']
    mode = 'L' if config['input_size'][0] == 1 else 'RGB'
    with torch.no_grad():
        for path in args.images:
            with Image.open(path) as img:
                x = transform(img.convert(mode)).unsqueeze(0)
            probabilities = model(x).softmax(dim=1)[0]
            top = probabilities.topk(min(5, len(names)))
            print(f'{path}: ' + ', '.join(f'{names[i]} {p:.3f}' for p, i in zip(top.values.tolist(),
                                                                             top.indices.tolist())))


if __name__ == '__main__':
    main()
