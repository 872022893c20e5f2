"""Image folders: where a split is, which images it holds, and one class map per run.

    data_dir/train/<class>/**/<image>      data_dir/validation/<class>/**/<image>

The class of an image is the first folder under its split, as in torchvision's ImageFolder;
images in deeper folders belong to that class (timm labels by the leaf folder instead, so
`train/cat/2019/*.png` would become a class named `2019`). Hidden files and folders
(`.ipynb_checkpoints`) are left out, and so are files that are not images by their extension
(counted, so that a folder of `.tif` files cannot vanish in silence).

A run has one class map, the training split's: classes in timm's natural order (`1, 2, 10`;
torchvision sorts as text: `1, 10, 2`), or the order of a `class_map` file (timm's format:
one class name a line, the line number its index). The validation split is opened with that
map, and a validation class the map lacks is refused. A split that is missing is refused too:
timm would fall back to `data_dir` itself, and evaluate on the training images.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

from timm.data.readers.reader import Reader
from timm.utils.misc import natural_key

from ..utils.disk import write_atomic
from ..utils.errors import UserError

__all__ = ['IMAGE_EXTENSIONS', 'FolderReader', 'find_split', 'read_class_map', 'write_class_map', 'scan_split',
           'describe_counts']

# What Pillow opens that image datasets are stored as (timm's list has only png/jpg/jpeg)
IMAGE_EXTENSIONS = frozenset(('.png', '.jpg', '.jpeg', '.jpe', '.jfif', '.bmp', '.dib', '.gif', '.tif', '.tiff',
                              '.webp', '.pgm', '.ppm', '.pbm', '.pnm', '.tga', '.qoi'))
# timm's split synonyms (timm.data.dataset_factory)
_SYNONYMS = (('train', 'training'), ('val', 'valid', 'validation', 'eval', 'evaluation'))


def find_split(data_dir: str, split: str) -> str:
    """The folder of `split` under data_dir (`validation` also finds `val`, etc.).

    Raises UserError naming the folders there when there is none: falling back to data_dir
    itself (as timm does) would train and evaluate on the same images.
    """
    candidates = [split] + [s for s in next((s for s in _SYNONYMS if split in s), ()) if s != split]
    for name in candidates:
        path = os.path.join(data_dir, name)
        if os.path.isdir(path):
            return path
    found = sorted(e.name for e in os.scandir(data_dir) if e.is_dir() and not e.name.startswith('.'))
    also = f' (nor {", ".join(candidates[1:])})' if len(candidates) > 1 else ''
    raise UserError(f'{data_dir} has no {split}/ folder{also}; found: {", ".join(found) or "no folders"}: put each '
                    f'split in its own folder, data_dir/{split}/<class>/<image>, or set train_split / val_split')


def scan_split(folder: str) -> Tuple[List[Tuple[str, str]], Counter]:
    """(path, class name) of every image under `folder`, sorted by path, and a Counter of what
    was left out: files that are not images by their extension (by extension), and hidden
    files and folders (under 'hidden').

    Raises UserError when images lie directly in `folder` (outside any class folder).
    """
    samples, others = [], Counter()
    loose = [e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith('.')
             and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    if loose:
        raise UserError(f'{len(loose)} image(s) lie directly in {folder} (e.g. {loose[0]}), outside a class folder: '
                        f'put each class in its own folder, {folder}/<class>/<image>')
    seen: Dict[str, str] = {}  # real path -> the path it was first reached by (symbolic links)
    for entry in os.scandir(folder):
        if entry.name.startswith('.'):
            others['hidden'] += 1
        if not entry.is_dir() or entry.name.startswith('.'):
            continue
        try:
            entry.name.encode('utf-8')
        except UnicodeEncodeError:  # bytes of another encoding: class_map.txt and checkpoints keep UTF-8
            raise UserError(f'class folder {entry.path.encode("utf-8", "backslashreplace").decode()} has a name that is '
                            f'not UTF-8: rename it') from None
        if entry.name != entry.name.strip() or '\n' in entry.name or '\r' in entry.name:
            raise UserError(f'class folder {entry.path!r} has a name with spaces at its ends or a line break: '
                            f'rename it (class_map.txt holds one name a line)')
        for root, dirs, files in os.walk(entry.path, followlinks=True):
            _visit(os.path.realpath(root), root, seen)
            others['hidden'] += sum(d.startswith('.') for d in dirs)
            dirs[:] = [d for d in dirs if not d.startswith('.')]
            for name in files:
                if name.startswith('.'):
                    others['hidden'] += 1
                    continue
                ext = os.path.splitext(name)[1].lower()
                if ext in IMAGE_EXTENSIONS:
                    path = os.path.join(root, name)
                    _visit(os.path.realpath(path), path, seen)
                    samples.append((path, entry.name))
                else:
                    others[ext or '(no extension)'] += 1
    samples.sort(key=lambda s: natural_key(s[0]))
    return samples, +others  # without zero counts


def _visit(real: str, path: str, seen: Dict[str, str]) -> None:
    """Refuse a folder or image reached a second time (through a symbolic link): it would be
    read again, and labelled with the class of the folder the link lies in."""
    if real in seen:
        raise UserError(f'{path} is {seen[real]} again, reached through a symbolic link: remove the link (an image '
                        f'must lie in its class folder once)')
    seen[real] = path


def read_class_map(path: str) -> List[str]:
    """Class names in index order from a timm class_map text file (one name a line, taken as it
    is: timm strips spaces, which would make a folder named ' a' another class).

    Raises UserError for a missing file, another format, an empty file, blank lines or
    repeated names.
    """
    if not os.path.isfile(path):
        raise UserError(f'class_map file not found: {path}')
    if not path.lower().endswith('.txt'):  # timm's other format is a pickle, which could run code
        raise UserError(f'class_map {path}: give a .txt file, one class name a line')
    try:
        with open(path, encoding='utf-8-sig') as f:  # -sig: a byte-order mark is not part of the first name
            names = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f'cannot read class_map {path}: {e}') from None
    while names and not names[-1]:
        names.pop()
    if not names:
        raise UserError(f'class_map {path} names no class')
    blank = [i for i, n in enumerate(names) if not n.strip()]
    if blank:
        raise UserError(f'class_map {path} has a blank line ({blank[0] + 1}): one class name a line')
    padded = [i for i, n in enumerate(names) if n != n.strip()]
    if padded:  # no class folder has such a name (scan_split refuses them)
        raise UserError(f'class_map {path} line {padded[0] + 1} ({names[padded[0]]!r}) has spaces at its ends: '
                        f'remove them')
    repeated = [n for n, c in Counter(names).items() if c > 1]
    if repeated:
        raise UserError(f'class_map {path} names {repeated[0]!r} more than once')
    return names


def write_class_map(names: Sequence[str], path: str) -> None:
    """`names` as a timm class_map text file, written whole or not at all."""
    write_atomic(path, lambda f: f.write(''.join(f'{n}\n' for n in names)))


class FolderReader(Reader):
    """A timm Reader over the images of one split, labelled with the run's class map."""

    def __init__(self, folder: str, classes: Optional[Sequence[str]] = None, split: str = '') -> None:
        """classes: the run's class names in index order; None: this split's classes in natural
        order (the training split). Raises UserError for a split with no images, or holding a
        class that `classes` lacks."""
        super().__init__()
        self.root = folder
        samples, self.left_out = scan_split(folder)
        if not samples:
            extra = f' ({describe_left_out(self.left_out)})' if self.left_out else ''
            raise UserError(f'{folder} holds no images{extra}: data_dir/<split>/<class>/<image>')
        found = sorted({c for _, c in samples}, key=natural_key)
        self.classes = list(classes) if classes is not None else found
        self.class_to_idx: Dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in found if c not in self.class_to_idx]
        if unknown:
            more = f' (and {len(unknown) - 1} more unknown)' if len(unknown) > 1 else ''
            raise UserError(f'{split or "split"} class {unknown[0]!r} ({os.path.join(folder, unknown[0])}) is not '
                            f'among the run\'s {len(self.classes)} classes{more}: remove it, or name it in class_map')
        self.samples = [(path, self.class_to_idx[c]) for path, c in samples]
        self.counts = Counter(c for _, c in samples)

    def __getitem__(self, index: int) -> Tuple[str, int]:
        return self.samples[index]

    def __len__(self) -> int:
        return len(self.samples)

    def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        path = self.samples[index][0]
        if basename:
            return os.path.basename(path)
        return os.path.abspath(path) if absolute else os.path.relpath(path, self.root)


def describe_left_out(others: Counter) -> str:
    """What scan_split left out, in words."""
    parts = []
    files = Counter({k: v for k, v in others.items() if k != 'hidden'})
    if files:
        listed = ', '.join(f'{ext} {n}' for ext, n in files.most_common(5))
        parts.append(f'{sum(files.values())} file(s) that are not images by extension ({listed})')
    if others.get('hidden'):
        parts.append(f'{others["hidden"]} hidden file(s) or folder(s)')
    return 'left out ' + ' and '.join(parts)


def describe_counts(split: str, classes: Sequence[str], counts: Counter, listed: int = 20) -> str:
    """One line: the split's images per class (every class up to `listed`, else the range)."""
    total = sum(counts.values())
    if len(classes) <= listed:
        detail = ', '.join(f'{c} {counts.get(c, 0)}' for c in classes)
    else:
        per = [counts.get(c, 0) for c in classes]
        detail = f'{min(per)} to {max(per)} per class'
    return f'{split}: {total} images in {len(classes)} classes ({detail})'
