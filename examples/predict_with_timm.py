"""Top-5 classes of images with timm alone: no stdistill import, as a deployed model runs.

    python3 examples/predict_with_timm.py exported/digits_timm a.png b.png

The folder is what `stdistill export` writes for a student of one of timm's architectures
with the class head, or for a run folded into its plain backbone (`stdistill fold`):
`config.json` + `model.safetensors`. What timm alone cannot load (a token-head export, std_* or
deit_*, or a small student stdistill registers: they need `import stdistill` first) is said in
one line, exit status 2. timm rebuilds the model from `config.json`, and its data config (input
size, interpolation, crop, mean/std) gives the preprocessing the run evaluated with.
"""
import argparse
import json
import os

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('folder', help='a folder written by `stdistill export --head cls`')
    parser.add_argument('images', nargs='+')
    args = parser.parse_args()
    problem = what_timm_cannot_load(args.folder)
    if problem:  # one line and exit 2, as stdistill's own commands answer bad input
        parser.exit(2, f'predict_with_timm.py: error: {problem}\n')
    model = timm.create_model(f'local-dir:{args.folder}', pretrained=True).eval()
    config = resolve_data_config(model=model)
    transform = create_transform(**config)
    names = model.pretrained_cfg['label_names']
    mode = 'L' if config['input_size'][0] == 1 else 'RGB'
    with torch.no_grad():
        for path in args.images:
            try:
                with Image.open(path) as img:
                    x = transform(img.convert(mode)).unsqueeze(0)
            except OSError as e:
                parser.exit(2, f'predict_with_timm.py: error: cannot read image {path}: {e}\n')
            probabilities = model(x).softmax(dim=1)[0]
            top = probabilities.topk(min(5, len(names)))
            print(f'{path}: ' + ', '.join(f'{names[i]} {p:.3f}' for p, i in zip(top.values.tolist(),
                                                                             top.indices.tolist())))


def what_timm_cannot_load(folder: str):
    """Why timm alone cannot load `folder`, in one line; None when it can."""
    if not os.path.isdir(folder):
        return f'{folder} is not a folder'
    if not os.path.isfile(os.path.join(folder, 'config.json')):
        return f'{folder} holds no config.json: give a folder written by `stdistill export --head cls`'
    with open(os.path.join(folder, 'config.json')) as f:
        arch = json.load(f).get('architecture', '')
    if not timm.models.is_model(arch):  # std_*, deit_*, or a small student (mixer_t4_32) stdistill registers
        return (f'{folder} holds a {arch}, which timm knows only once stdistill is imported (a model it '
                f'registers): `import stdistill` before timm.create_model, or export a student of one of timm\'s '
                f'architectures with --head cls (or its fold)')
    return None


if __name__ == '__main__':
    main()
