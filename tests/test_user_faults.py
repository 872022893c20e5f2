"""Faults timm and DeiT users have reported, tried through the command line: one class map per run,
the dataset layout, PIL image modes, batch-size assumptions, overrides on --resume, numbers in
YAML, EMA weights, and DDP step agreement. Each test checks the value a correct run gives."""
import json
import os
import time

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

from stdistill.apps.cli import main
from stdistill.config import load_config
from stdistill.data.fashion_mnist import FashionMNIST
from stdistill.training.builders import build_student
from test_train import TINY, read_jsonl

# A tiny plain student on 28x28 grayscale folders: no augmentation, so that an image's input is
# exactly (pixel / 255 - 0.5) / 0.5 and a test can score the model by hand.
PLAIN = ['dataset=folder', 'in_chans=1', 'mean=[0.5]', 'std=[0.5]', 'img_size=28', 'crop_pct=1.0', 'aa=null',
         'scale=[1.0,1.0]', 'ratio=[1.0,1.0]', 'hflip=0', 'reprob=0', 'mixup=0', 'cutmix=0', 'smoothing=0',
         'repeated_aug=false', 'model=mixer_t4_28', 'model_kwargs={embed_dim: 16, num_blocks: 2}', 'drop_path=0',
         'method=none', 'epochs=1', 'warmup_epochs=0', 'lr=0.003', 'batch_size=8', 'workers=0', 'progress=false',
         'val_split=val', 'amp=false']


@pytest.fixture(scope='module')
def fashion():
    return FashionMNIST(split='test')


def write_split(root, split, classes, fashion, per_class=12, start=0, sub=None, bits=8):
    """Real Fashion-MNIST images as PNG files: root/split/<name>/[sub/]i.png, one label per name."""
    for name, label in classes.items():
        folder = root / split / name / (sub or '')
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(fashion.targets == label)[start:start + per_class]:
            pixels = fashion.images[i]
            if bits == 16:  # the same picture at 16 bits: v * 257 maps 0..255 onto 0..65535
                Image.fromarray(pixels.astype(np.uint16) * 257).save(folder / f'{i}.png')
            else:
                Image.fromarray(pixels).save(folder / f'{i}.png')
    return root


def run(*argv):
    return main(list(map(str, argv)))


def one_error_line(capsys, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('stdistill: error: '), err
    for word in words:
        assert word in err[0], err[0]
    return err[0]


def hand_top1(run_folder, val_root, class_names):
    """Top-1 of run/best on every image under val_root/<class>/, labelled by `class_names` (the
    training map), computed without stdistill's data pipeline."""
    cfg = load_config(str(run_folder / 'config.yaml'))
    model = build_student(cfg, len(class_names), pretrained=False)
    model.load_state_dict(load_file(str(run_folder / 'best' / 'model.safetensors')))
    model.eval()
    hits = total = 0
    for name in os.listdir(val_root):
        for file in os.listdir(val_root / name):
            pixels = np.asarray(Image.open(val_root / name / file), dtype=np.float32) / 255
            x = torch.from_numpy((pixels - 0.5) / 0.5)[None, None]
            with torch.no_grad():
                hits += int(model(x).argmax(1).item() == class_names.index(name))
            total += 1
    return 100.0 * hits / total


# 1. one class map per run

def test_validation_split_is_labelled_with_the_training_map(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'c0': 0, 'c1': 1, 'c2': 7}, fashion)
    write_split(data, 'val', {'c0': 0, 'c2': 7}, fashion, start=100)
    out = tmp_path / 'run'
    assert run('train', *PLAIN, f'data_dir={data}', f'output={out}') == 0
    assert (out / 'class_map.txt').read_text() == 'c0\nc1\nc2\n'
    expected = hand_top1(out, data / 'val', ['c0', 'c1', 'c2'])
    logged = read_jsonl(out / 'log.jsonl')[-1]['val_top1']
    assert logged == pytest.approx(expected, abs=1e-9)
    # eval of a validation folder holding c2 alone still calls it class 2 (the recorded map)
    only = write_split(tmp_path / 'only', 'val', {'c2': 7}, fashion, start=100)
    capsys.readouterr()
    assert run('eval', out, f'data_dir={only}') == 0
    printed = capsys.readouterr().out
    assert f'top-1 {hand_top1(out, only / "val", ["c0", "c1", "c2"]):.2f}' in printed, printed


def test_validation_class_the_training_split_lacks_is_refused(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'c0': 0, 'c1': 1}, fashion)
    write_split(data, 'val', {'c0': 0, 'c1': 1, 'c9': 9}, fashion, start=100)
    assert run('train', *PLAIN, f'data_dir={data}', f'output={tmp_path / "run"}') == 2
    one_error_line(capsys, "'c9'", 'val')
    assert not (tmp_path / 'run').exists()


def test_natural_order_and_a_class_map_file_fixing_another(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'1': 0, '2': 1, '10': 7}, fashion, per_class=4)
    write_split(data, 'val', {'1': 0, '2': 1, '10': 7}, fashion, per_class=2, start=100)
    out = tmp_path / 'natural'
    assert run('train', *PLAIN, f'data_dir={data}', f'output={out}') == 0
    assert (out / 'class_map.txt').read_text() == '1\n2\n10\n'  # timm's natural order
    lexicographic = tmp_path / 'torchvision_order.txt'
    lexicographic.write_text('1\n10\n2\n')  # what torchvision's ImageFolder gives
    out = tmp_path / 'fixed'
    assert run('train', *PLAIN, f'data_dir={data}', f'class_map={lexicographic}', f'output={out}') == 0
    assert (out / 'class_map.txt').read_text() == '1\n10\n2\n'
    assert load_config(str(out / 'config.yaml')).class_map == str(lexicographic)
    # a map that leaves out a training class is refused, naming it
    partial = tmp_path / 'partial.txt'
    partial.write_text('1\n2\n')
    capsys.readouterr()
    assert run('train', *PLAIN, f'data_dir={data}', f'class_map={partial}', f'output={tmp_path / "p"}') == 2
    one_error_line(capsys, "'10'", 'class_map')


def test_teacher_trained_on_another_class_order_is_refused(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=8)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=4, start=100)
    teacher = tmp_path / 'teacher'
    assert run('train', *PLAIN, f'data_dir={data}', f'output={teacher}') == 0
    capsys.readouterr()  # a run this small is at chance, and says so: the refusal below is the point
    swapped = tmp_path / 'swapped.txt'
    swapped.write_text('b\na\n')
    student = [*PLAIN, 'method=kd', 'model=mixer_t4_28',
               f'teachers=[{{model: mixer_t4_28, checkpoint: {teacher / "best" / "model.safetensors"}, '
               f'kwargs: {{embed_dim: 16, num_blocks: 2}}}}]']
    assert run('train', *student, f'data_dir={data}', f'class_map={swapped}', f'output={tmp_path / "s"}') == 2
    one_error_line(capsys, 'teachers.0', 'trained on the same classes in another order', 'class_map')
    assert run('train', *student, f'data_dir={data}', f'output={tmp_path / "ok"}') == 0


# 2. dataset layout

def test_class_is_the_first_folder_under_the_split(tmp_path, fashion, capsys):
    data = tmp_path / 'data'
    for year, start in (('2019', 0), ('2020', 20)):
        write_split(data, 'train', {'cat': 0, 'dog': 1}, fashion, per_class=5, start=start, sub=year)
    write_split(data, 'val', {'cat': 0, 'dog': 1}, fashion, per_class=3, start=100, sub='2021')
    (data / 'train' / 'cat' / '.ipynb_checkpoints').mkdir()
    Image.fromarray(fashion.images[0]).save(data / 'train' / 'cat' / '.ipynb_checkpoints' / 'x.png')
    (data / 'train' / 'dog' / 'notes.txt').write_text('not an image')
    out = tmp_path / 'run'
    capsys.readouterr()
    assert run('train', *PLAIN, f'data_dir={data}', f'output={out}') == 0
    printed = capsys.readouterr().out
    assert 'train: 20 images in 2 classes (cat 10, dog 10)' in printed, printed
    assert 'val: 6 images in 2 classes (cat 3, dog 3)' in printed, printed
    assert ('train: left out 1 file(s) that are not images by extension (.txt 1) and 1 hidden file(s) or folder(s)'
            in printed), printed
    assert (out / 'class_map.txt').read_text() == 'cat\ndog\n'
    assert json.loads((out / 'summary.json').read_text())['data'][0] == 'train: 20 images in 2 classes (cat 10, dog 10)'


@pytest.mark.parametrize('layout', ['loose images', 'no val split'])
def test_layouts_that_would_mislabel_are_refused(tmp_path, fashion, capsys, layout):
    data = write_split(tmp_path / 'data', 'train', {'cat': 0, 'dog': 1}, fashion, per_class=4)
    if layout == 'loose images':
        write_split(data, 'val', {'cat': 0}, fashion, per_class=2)
        Image.fromarray(fashion.images[0]).save(data / 'train' / 'stray.png')
        words = ['stray.png', 'outside a class folder']
    else:  # timm would evaluate on data_dir itself: the training images
        words = ['no val/ folder (nor valid, validation, eval, evaluation)', 'found: train']
    assert run('train', *PLAIN, f'data_dir={data}', f'output={tmp_path / "run"}') == 2
    one_error_line(capsys, *words)
    assert not (tmp_path / 'run').exists()


# 3. image modes

def test_16_bit_images_train_exactly_as_their_8_bit_originals(tmp_path, fashion):
    summaries = []
    for bits in (8, 16):
        data = write_split(tmp_path / f'd{bits}', 'train', {'a': 0, 'b': 1}, fashion, per_class=8, bits=bits)
        write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=4, start=100, bits=bits)
        if bits == 16:
            assert Image.open(next((data / 'train' / 'a').iterdir())).mode.startswith('I')
        assert run('train', *PLAIN, f'data_dir={data}', f'output={tmp_path / f"r{bits}"}') == 0
        summaries.append(json.loads((tmp_path / f'r{bits}' / 'summary.json').read_text()))
    assert summaries[0]['weights_sha256_per_rank'] == summaries[1]['weights_sha256_per_rank']
    assert summaries[0]['final']['val_top1'] == summaries[1]['final']['val_top1']


def test_float_image_is_refused_naming_file_and_mode(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=8)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=4, start=100)
    Image.fromarray(np.full((28, 28), 0.5, np.float32), mode='F').save(data / 'train' / 'a' / 'float.tif')
    assert run('train', *PLAIN, f'data_dir={data}', 'bad_images=stop', f'output={tmp_path / "run"}') == 2
    one_error_line(capsys, 'float.tif', 'mode F')


# 4. batch sizes

@pytest.mark.parametrize('extra, words', [
    (['batch_size=1', 'mixup=0.8'], ['batch_size 1 is odd', 'mixup', 'batch_size=2']),
    (['batch_size=3', 'cutmix=1.0'], ['batch_size 3 is odd', 'batch_size=4']),
    (['batch_size=1', 'method=std', 'teachers=[{model: resnet10t, pretrained: false}]', 'mine=true'],
     ['batch_size 1', 'MINE', 'mine=false']),
])
def test_batch_sizes_the_method_cannot_use_are_refused(tmp_path, fashion, capsys, extra, words):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    assert run('train', *PLAIN, f'data_dir={data}', *extra, f'output={tmp_path / "run"}') == 2
    one_error_line(capsys, *words)
    assert not (tmp_path / 'run').exists()


def test_shrunk_odd_batches_and_the_last_batch_are_counted(tmp_path, fashion):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=10)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    out = tmp_path / 'six'  # 20 images in batches of 6: 3 steps, 2 images left over each epoch
    assert run('train', *PLAIN, f'data_dir={data}', 'mixup=0.8', 'batch_size=6', f'output={out}') == 0
    row = read_jsonl(out / 'log.jsonl')[0]
    assert (row['updates'], row['dropped_last_images'], row['unpaired_images'], row['skipped_images']) == (3, 2, 0, 0)
    # one image replaced by a broken file: 20 files, 5 batches of 4, one of which has 3 readable
    # images, and mixup cannot pair one of them
    os.remove(next((data / 'train' / 'b').iterdir()))
    (data / 'train' / 'a' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'x' * 40)
    out = tmp_path / 'four'
    assert run('train', *PLAIN, f'data_dir={data}', 'mixup=0.8', 'batch_size=4', 'bad_images=skip',
               f'output={out}') == 0
    row = read_jsonl(out / 'log.jsonl')[0]
    assert (row['updates'], row['dropped_last_images'], row['unpaired_images'], row['skipped_images']) == (5, 0, 1, 1)
    assert row['skipped_batches'] == 0


def test_a_run_that_makes_no_update_fails_and_saves_nothing(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'a': 0}, fashion, per_class=1)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    (data / 'train' / 'b').mkdir()
    for name, count in (('a', 3), ('b', 4)):  # one readable training image: no batch holds the 2 MINE needs
        for k in range(count):
            (data / 'train' / name / f'broken{k}.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'x' * 40)
    out = tmp_path / 'run'
    capsys.readouterr()
    code = run('train', *PLAIN, f'data_dir={data}', 'method=std', 'teachers=[{model: resnet10t, pretrained: false}]',
               'mine=true', 'batch_size=2', 'skip_nonfinite=true', 'bad_images=skip', f'output={out}')
    captured = capsys.readouterr()
    assert code == 2 and 'done:' not in captured.out
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith('stdistill: error: epoch 1 made no update') and '4 batch(es)' in last, last
    assert not any((out / name).exists() for name in ('last', 'best', 'summary.json'))


# 5. overrides on --resume

def test_resume_with_a_longer_schedule_and_a_new_lr_applies_both(tmp_path, fashion, capsys):
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=8)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    out = tmp_path / 'run'
    assert run('train', *PLAIN, f'data_dir={data}', 'epochs=2', 'warmup_epochs=0', 'min_lr=1e-5',
               f'output={out}') == 0
    capsys.readouterr()
    assert run('train', '--resume', out, 'epochs=4', 'lr=0.01') == 0
    printed = capsys.readouterr().out
    assert 'resuming at epoch 3 with epochs 2 -> 4, lr 0.003 -> 0.01' in printed, printed
    rows = read_jsonl(out / 'log.jsonl')
    assert [r['epoch'] for r in rows] == [0, 1, 2, 3]
    assert rows[2]['config_changes'] == {'epochs': [2, 4], 'lr': [0.003, 0.01]}
    # the lr each epoch ends at is that of a 4-epoch cosine from 0.01 at the same update
    probe = create_optimizer_v2(torch.nn.Linear(1, 1), opt='adamw', lr=0.01)
    sched, _ = create_scheduler_v2(probe, sched='cosine', num_epochs=4, warmup_epochs=0, min_lr=1e-5,
                                   step_on_epochs=False, updates_per_epoch=2)
    for row, updates in ((rows[2], 6), (rows[3], 8)):
        sched.step_update(num_updates=updates)
        assert row['lr'] == pytest.approx(probe.param_groups[0]['lr'], rel=1e-12)
    cfg = load_config(str(out / 'config.yaml'))
    assert cfg.epochs == 4 and cfg.lr == 0.01
    summary = json.loads((out / 'summary.json').read_text())
    assert {'epoch': 2, 'key': 'lr', 'from': 0.003, 'to': 0.01} in summary['config_changes']


@pytest.mark.parametrize('override, words', [
    ('opt=sgd', ['cannot change opt', 'adamw']),
    ('mine_hidden=64', ['cannot change mine_hidden']),
    ('model_ema=true', ['cannot change model_ema']),
    ('img_size=32', ['cannot change img_size']),
    ('epochs=0', ['epochs must be >= 1']),
])
def test_resume_refuses_what_it_cannot_apply_and_keeps_the_run(tmp_path, fashion, capsys, override, words):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    out = tmp_path / 'run'
    assert run('train', *PLAIN, f'data_dir={data}', 'method=std', 'teachers=[{model: resnet10t, pretrained: false}]',
               'mine_hidden=32', 'epochs=2', '--stop-after', '1', f'output={out}') == 0
    before = (out / 'config.yaml').read_text()
    capsys.readouterr()
    assert run('train', '--resume', out, override) == 2
    one_error_line(capsys, *words)
    assert (out / 'config.yaml').read_text() == before
    assert run('train', '--resume', out) == 0  # the run is still whole


def test_resume_refuses_fewer_epochs_than_done(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    out = tmp_path / 'run'
    assert run('train', *PLAIN, f'data_dir={data}', 'epochs=2', f'output={out}') == 0
    capsys.readouterr()  # its at-chance warning
    assert run('train', '--resume', out, 'epochs=1') == 2
    one_error_line(capsys, 'epochs=1', 'has done 2 epochs')


def test_a_synonym_split_folder_is_named_in_the_report(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    write_split(data, 'valid', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    capsys.readouterr()
    assert run('train', *PLAIN, f'data_dir={data}', 'val_split=validation', f'output={tmp_path / "run"}') == 0
    assert f'validation ({data / "valid"}): 4 images in 2 classes (a 2, b 2)' in capsys.readouterr().out


def test_resume_on_data_with_other_classes_is_refused(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    other = write_split(tmp_path / 'other', 'train', {'a': 0, 'c': 1}, fashion, per_class=4)
    write_split(other, 'val', {'a': 0, 'c': 1}, fashion, per_class=2, start=100)
    out = tmp_path / 'run'
    assert run('train', *PLAIN, f'data_dir={data}', 'epochs=2', '--stop-after', '1', f'output={out}') == 0
    capsys.readouterr()  # its at-chance warning
    assert run('train', '--resume', out, f'data_dir={other}') == 2
    one_error_line(capsys, 'was trained on 2', 'class_map.txt')


# 6. numbers in YAML

def test_every_numeric_form_is_read_as_its_number(tmp_path):
    recipe = tmp_path / 'r.yaml'
    recipe.write_text('lr: 5e-4\nmin_lr: 1E-6\nsmoothing: .5\ntrain_samples: 1_000\nepochs: 1e1\n'
                      'model_kwargs: {drop_rate: 5e-2}\nteachers: [{model: resnet10t, mean: [5e-1], std: [2.5E-1]}]\n')
    cfg = load_config(str(recipe), ['warmup_lr=2e-6', 'val_samples=2_000', 'mine_weight=.25'])
    assert (cfg.lr, cfg.min_lr, cfg.smoothing, cfg.train_samples, cfg.epochs) == (5e-4, 1e-6, 0.5, 1000, 10)
    assert (cfg.warmup_lr, cfg.val_samples, cfg.mine_weight) == (2e-6, 2000, 0.25)
    assert cfg.model_kwargs == {'drop_rate': 0.05} and isinstance(cfg.model_kwargs['drop_rate'], float)
    assert cfg.teachers[0]['mean'] == [0.5] and cfg.teachers[0]['std'] == [0.25]


@pytest.mark.parametrize('key', ['model_kwargs', 'teachers.0.kwargs'])
def test_a_mapping_key_without_its_space_is_refused(key):
    override = 'model_kwargs={embed_dim:16}' if key == 'model_kwargs' else \
        'teachers=[{model: resnet10t, kwargs: {drop_rate:0.1}}]'
    with pytest.raises(ValueError, match='needs a space after the colon'):
        load_config(None, [override])


def test_lr_in_exponent_form_trains_from_the_command_line(tmp_path, fashion):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    recipe = tmp_path / 'r.yaml'
    recipe.write_text('lr: 5e-4\nwarmup_lr: 1E-6\n')
    assert run('train', '--config', recipe, *[a for a in PLAIN if not a.startswith('lr=')], f'data_dir={data}',
               'min_lr=1e-5', f'output={tmp_path / "run"}') == 0
    cfg = load_config(str(tmp_path / 'run' / 'config.yaml'))
    assert (cfg.lr, cfg.warmup_lr, cfg.min_lr) == (5e-4, 1e-6, 1e-5)


# 7. EMA weights

def test_ema_weights_are_saved_scored_and_named_best(tmp_path, capsys):
    out = tmp_path / 'run'
    assert run('train', *TINY, 'epochs=2', f'output={out}') == 0  # TINY keeps an EMA
    for folder in ('best', 'last'):
        assert (out / folder / 'model_ema.safetensors').is_file()
    summary = json.loads((out / 'summary.json').read_text())
    best = summary['best']
    rows = read_jsonl(out / 'log.jsonl')
    row = rows[best['epoch']]
    assert best['weights'] == ('ema' if row['ema_top1'] > row['val_top1'] else 'student')
    assert best['top1'] == max(row['ema_top1'], row['val_top1']) == max(max(r['ema_top1'], r['val_top1']) for r in rows)
    capsys.readouterr()
    assert run('eval', out, '--ema') == 0
    assert f'(EMA weights): top-1 {row["ema_top1"]:.2f}' in capsys.readouterr().out
    assert run('eval', out) == 0
    assert f': top-1 {row["val_top1"]:.2f}' in capsys.readouterr().out


def test_eval_ema_of_a_run_without_ema_is_refused(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    assert run('train', *PLAIN, f'data_dir={data}', f'output={tmp_path / "run"}') == 0
    capsys.readouterr()  # its at-chance warning
    assert run('eval', tmp_path / 'run', '--ema') == 2
    one_error_line(capsys, 'no EMA weights', 'without --ema')


@pytest.mark.parametrize('use_ema', [False, True])
def test_teacher_checkpoint_with_both_weights_loads_the_one_named(tmp_path, use_ema):
    from stdistill.method.teachers import create_teacher
    raw, ema = (timm.create_model('resnet10t', num_classes=10) for _ in range(2))
    path = tmp_path / 'timm_train_checkpoint.pth.tar'
    torch.save({'epoch': 3, 'state_dict': raw.state_dict(), 'state_dict_ema': ema.state_dict()}, path)
    teacher = create_teacher('resnet10t', 10, checkpoint=str(path), use_ema=use_ema)
    expected = (ema if use_ema else raw).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in teacher.model.state_dict().items())


def test_teacher_use_ema_without_ema_weights_is_refused(tmp_path, capsys):
    path = tmp_path / 'raw_only.pth'
    torch.save({'state_dict': timm.create_model('resnet10t', num_classes=10, in_chans=1).state_dict()}, path)
    assert run('train', *TINY, f'teachers=[{{model: resnet10t, checkpoint: {path}, use_ema: true}}]',
               f'output={tmp_path / "run"}') == 2
    one_error_line(capsys, 'teachers.0', 'no EMA weights', 'use_ema: false')


# 8. TensorBoard after a kill

def test_tensorboard_shows_each_step_once_after_a_redone_epoch(tmp_path, fashion):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=8)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    out = tmp_path / 'run'
    assert run('train', *PLAIN, f'data_dir={data}', 'epochs=2', 'log_interval=1', '--stop-after', '1',
               f'output={out}') == 0
    # a kill half way through epoch 1: its first steps reached TensorBoard, its checkpoint did not.
    # (TensorBoard orders event files by their name: the time in seconds, then a per-process
    # counter; in one test process the seconds must differ, as they do between real processes.)
    time.sleep(1.1)
    writer = SummaryWriter(str(out / 'tb'))
    for step in (3, 4):
        writer.add_scalar('loss/loss', 123.0, step)
    writer.close()
    time.sleep(1.1)
    assert run('train', '--resume', out) == 0
    events = EventAccumulator(str(out / 'tb'))
    events.Reload()
    steps = [e.step for e in events.Scalars('loss/loss')]
    assert steps == [1, 2, 3, 4] and 123.0 not in [e.value for e in events.Scalars('loss/loss')]


# found by trying to break the above

def test_a_resume_that_fails_before_saving_keeps_its_change_for_the_next(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=8)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    broken = tmp_path / 'broken'
    import shutil
    shutil.copytree(data, broken)
    Image.fromarray(np.zeros((28, 28), np.float32), mode='F').save(broken / 'train' / 'a' / 'float.tif')
    out = tmp_path / 'run'
    assert run('train', *PLAIN, f'data_dir={data}', 'epochs=3', '--stop-after', '1', f'output={out}') == 0
    assert run('train', '--resume', out, 'lr=5e-4', f'data_dir={broken}', 'bad_images=stop') == 2
    assert load_config(str(out / 'config.yaml')).lr == 5e-4  # config.yaml said so, but no epoch ran with it
    capsys.readouterr()
    assert run('train', '--resume', out, f'data_dir={data}') == 0
    assert 'lr 0.003 -> 0.0005' in capsys.readouterr().out
    assert read_jsonl(out / 'log.jsonl')[1]['config_changes']['lr'] == [0.003, 0.0005]


@pytest.mark.parametrize('case', ['symlink loop', 'symlink to another class', 'name with a trailing space'])
def test_folders_that_would_mislabel_through_links_or_names_are_refused(tmp_path, fashion, capsys, case):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    if case == 'symlink loop':
        os.symlink('..', data / 'train' / 'a' / 'up')
        words = ['symbolic link']
    elif case == 'symlink to another class':
        os.symlink(data / 'train' / 'b', data / 'train' / 'a' / 'more')
        words = ['symbolic link', 'remove the link']
    else:
        os.rename(data / 'train' / 'b', data / 'train' / 'b ')
        words = ["train/b '", 'spaces at its ends']
    assert run('train', *PLAIN, f'data_dir={data}', f'output={tmp_path / "run"}') == 2
    one_error_line(capsys, *words)


def test_validation_split_without_a_readable_image_is_one_line(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    for name in ('a', 'b'):
        (data / 'val' / name).mkdir(parents=True)
        (data / 'val' / name / 'x.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'x' * 40)
    assert run('train', *PLAIN, f'data_dir={data}', f'output={tmp_path / "run"}') == 2
    err = capsys.readouterr().err.strip().splitlines()  # a warning for each unreadable image, then the error
    assert err[-1].startswith('stdistill: error: the evaluation split has no readable image (2 unreadable)'), err
    assert all(line.startswith('stdistill: warning: skipping') for line in err[:-1]) and 'Traceback' not in err
    assert not (tmp_path / 'run' / 'last').exists()


def test_run_trained_with_a_class_map_resumes_after_the_file_moved(tmp_path, fashion):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    order = tmp_path / 'order.txt'
    order.write_text('b\na\n')
    out = tmp_path / 'run'
    assert run('train', *PLAIN, f'data_dir={data}', f'class_map={order}', 'epochs=2', '--stop-after', '1',
               f'output={out}') == 0
    os.remove(order)
    assert run('train', '--resume', out, f'class_map={out / "class_map.txt"}') == 0
    assert (out / 'class_map.txt').read_text() == 'b\na\n'


def test_resume_names_the_teacher_key_it_refuses(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    out = tmp_path / 'run'
    # method std: the token position is a key of its own there (kd refuses it before any resume)
    assert run('train', *PLAIN, f'data_dir={data}', 'method=std', 'teachers=[{model: resnet10t, pretrained: false}]',
               'mine_hidden=16', 'epochs=2', '--stop-after', '1', f'output={out}') == 0
    capsys.readouterr()  # its at-chance warning
    assert run('train', '--resume', out, 'teachers.0.token_position=-2') == 2
    one_error_line(capsys, 'cannot change teachers.0.token_position (-1 -> -2)')


def test_eval_of_a_weights_file_in_a_run_and_use_ema_only_beside_model_safetensors(tmp_path, capsys):
    out = tmp_path / 'run'
    assert run('train', *TINY, 'epochs=1', f'output={out}') == 0
    row = read_jsonl(out / 'log.jsonl')[0]
    capsys.readouterr()
    assert run('eval', out / 'best' / 'model.safetensors', '--ema') == 0
    assert f'top-1 {row["ema_top1"]:.2f}' in capsys.readouterr().out
    import shutil
    shutil.copy(out / 'best' / 'model.safetensors', out / 'best' / 'renamed.safetensors')
    teacher = f'teachers=[{{model: mixer_t4_28, checkpoint: {out / "best" / "renamed.safetensors"}, use_ema: true, ' \
              f'kwargs: {{embed_dim: 16, num_blocks: 2}}}}]'
    assert run('train', *TINY, 'method=kd', teacher, f'output={tmp_path / "s"}') == 2
    one_error_line(capsys, 'teachers.0', 'holds one set of weights')


@pytest.mark.parametrize('key', ['opt=adamz', 'sched=cosinus'])
def test_unknown_optimizer_or_scheduler_names_the_key(tmp_path, capsys, key):
    assert run('train', *TINY, key, f'output={tmp_path / "run"}') == 2
    one_error_line(capsys, f'config key {key.split("=")[0]}')


# issue 13: what a new user with their own small images meets

def test_small_images_on_a_patch_16_model_warn_and_extra_workers_are_cut(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    capsys.readouterr()
    assert run('train', *PLAIN, 'model=gmlp_ti16_224', 'model_kwargs={}', 'img_size=32', 'workers=512',
               f'data_dir={data}', f'output={tmp_path / "run"}') == 0
    captured = capsys.readouterr()
    assert 'gmlp_ti16_224 at img_size 32 sees a 2x2 grid of patches' in captured.err
    assert f'workers 512 -> {len(os.sched_getaffinity(0))}' in captured.out
    assert load_config(str(tmp_path / 'run' / 'config.yaml')).workers == 512  # what was asked, as given


def test_imagenet_settings_on_a_small_folder_are_warned(tmp_path, fashion, capsys):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=10)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    capsys.readouterr()  # 20 images in batches of 12: 8 left out each epoch; 1 update against an EMA of 25000
    assert run('train', *PLAIN, 'batch_size=12', 'model_ema=true', f'data_dir={data}', f'output={tmp_path / "r"}') == 0
    err = capsys.readouterr().err
    assert 'batch_size 12 leaves 8 of 20 training images out of each epoch' in err, err
    assert 'with model_ema_decay 0.99996, after this run\'s 1 updates the EMA is still 100% the initial' in err, err


def test_checkpoints_and_exports_are_as_readable_as_any_new_file(tmp_path, fashion):
    data = write_split(tmp_path / 'data', 'train', {'a': 0, 'b': 1}, fashion, per_class=4)
    write_split(data, 'val', {'a': 0, 'b': 1}, fashion, per_class=2, start=100)
    out, exported = tmp_path / 'run', tmp_path / 'exported'
    exported.mkdir()  # an empty folder may be the export's
    old = os.umask(0o022)
    try:
        assert run('train', *PLAIN, f'data_dir={data}', f'output={out}') == 0
        assert run('export', out, exported) == 0
    finally:
        os.umask(old)
    for path in (out / 'best', out / 'best' / 'model.safetensors', exported, exported / 'model.safetensors'):
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path
