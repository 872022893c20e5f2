"""What a new user reads and gets is never silently wrong (issue 27), through the command line on
a real folder of images: 3 Fashion-MNIST classes (shirt, bag, boot) as 32x32 RGB PNGs, 240
training and 60 validation images, the size of folder that gave a teacher at chance.

Every command or code line the CLI prints for the user (in backticks: stdistill.utils.hints) is run
here exactly as printed, and checked for what it promises."""
import json
import os
import re
import runpy
import shlex
import subprocess
import sys

import pytest
import shell

from stdistill.apps import cli
from stdistill.utils.accuracy import at_chance, chance_note, format_top1, wilson_interval
from stdistill.config import HELP_GROUPS, TrainConfig, config_help, load_config
from stdistill.data.loaders import fit_batch_size
from stdistill.apps.quickstart import results_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HINT = re.compile(r'`([^`\n]+)`')


@pytest.fixture(scope='module')
def clothes(tmp_path_factory):
    """A checkout-like working folder holding the recipes and data/clothes (240 + 60 real images)."""
    work = tmp_path_factory.mktemp('newuser')
    for name in ('recipes', 'examples'):
        os.symlink(os.path.join(ROOT, name), work / name)
    write = runpy.run_path(os.path.join(ROOT, 'examples', 'make_fashion_folder.py'))['write_folder']
    write(str(work / 'data' / 'clothes'))
    return work


class Shell:
    """Runs stdistill commands in a working folder, keeping every hint they print."""

    def __init__(self, cwd):
        self.cwd, self.hints = cwd, {}

    def run(self, command: str, expect: int = 0):
        result = shell.run(command, self.cwd)  # stdistill commands in this process, as bash passes their words
        assert result.returncode == expect, f'{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}'
        for hint in HINT.findall(result.stdout + result.stderr):
            self.hints.setdefault(hint, command)
        return result

    def python(self, code: str, args=()) -> str:
        result = subprocess.run([sys.executable, '-c', code, *args], cwd=self.cwd, env=shell.ENV, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, f'{code}\n{result.stderr[-3000:]}'
        return result.stdout


FOLDER = 'data_dir=data/clothes hflip=0 workers=0 progress=false'
IMAGES = ['data/clothes/validation/shirt', 'data/clothes/validation/bag', 'data/clothes/validation/boot']


def _images(cwd):
    return [os.path.join(folder, sorted(os.listdir(cwd / folder))[0]) for folder in IMAGES]


def _top5(text: str):
    """`stdistill predict`'s lines as [(image, [class, ...])]."""
    return [(line.split(': ')[0], [c.rsplit(' ', 1)[0] for c in line.split(': ')[1].split(', ')])
            for line in text.strip().splitlines()]


PREDICT_TIMM = """
import sys, torch, timm
from PIL import Image
{hint}
cfg = timm.data.resolve_data_config({{}}, model=model)
tf = timm.data.create_transform(**cfg)
names = model.pretrained_cfg['label_names']
for path in sys.argv[1:]:
    with torch.no_grad():
        p = model(tf(Image.open(path).convert('RGB')).unsqueeze(0)).softmax(-1)[0]
    print(path + ': ' + ', '.join(f'{{names[i]}} {{p[i]:.3f}}' for i in p.topk(min(5, p.numel())).indices.tolist()))
"""


@pytest.mark.slow
def test_a_new_users_folder_and_every_hint_the_cli_prints(clothes):
    sh = Shell(clothes)
    # 1. a teacher at chance (the README's old walk: batch 64 on 240 images, 9 updates): flagged, not a result
    out = sh.run(f'stdistill train --config recipes/folder/teacher.yaml {FOLDER} epochs=3 min_updates_per_epoch=0 '
                 f'output=runs/chance')
    assert 'AT CHANCE' in out.stderr and 'It made 9 updates (3 an epoch at batch_size 64)' in out.stderr
    # what it needs is more updates an epoch: the run again, beside it, at the batch min_updates_per_epoch fits
    again = next(h for h in sh.hints if h.startswith('stdistill train --config runs/chance/config.yaml'))
    assert again.endswith('output=runs/chance-again'), again
    assert 'AT CHANCE' in sh.run('stdistill eval runs/chance').stderr
    out = sh.run('stdistill export runs/chance exported/chance')
    assert 'AT CHANCE' in out.stderr
    # ... and distilling from it is flagged where the teacher is built
    out = sh.run(f'stdistill train --config recipes/folder/std.yaml {FOLDER} epochs=1 output=runs/from_chance '
                 f'teachers.0.checkpoint=runs/chance/best/model.safetensors')
    assert 'teachers.0 (runs/chance/best/model.safetensors): AT CHANCE' in out.stderr, out.stderr
    assert again in out.stderr  # the same command as the teacher's own run printed
    # the hint it prints trains the teacher past chance
    assert 'batch_size 64 -> 12' in sh.run(again).stdout
    summary = json.loads((clothes / 'runs' / 'chance-again' / 'summary.json').read_text())
    assert not at_chance(summary['best']['top1'], summary['best']['images'], summary['best']['chance_top1'])
    assert 'AT CHANCE' not in sh.run('stdistill eval runs/chance-again').stderr

    # 2. the folder recipes as written: min_updates_per_epoch lowers batch_size 64 -> 12 on 240 images
    out = sh.run(f'stdistill train --config recipes/folder/plain.yaml {FOLDER} epochs=2 output=runs/plain '
                 f'model_ema=true model_ema_decay=0.9')
    assert 'batch_size 64 -> 12: 240 training images a process give 3 update(s) an epoch' in out.stdout
    assert '`stdistill eval --which best --ema runs/plain` scores them' in sh.run('stdistill eval runs/plain').stdout
    assert json.loads((clothes / 'runs' / 'plain' / 'summary.json').read_text())['batch_size'] == 12
    # the printed top-1 carries its interval on a split of 60 images
    assert re.search(r'best top-1 [\d.]+ \(95% CI [\d.]+-[\d.]+ on 60 images\)', out.stdout), out.stdout
    # a second run into the same folder is refused with the command that continues it
    out = sh.run(f'stdistill train --config recipes/folder/plain.yaml {FOLDER} epochs=2 output=runs/plain', expect=2)
    assert '`stdistill train --resume runs/plain`' in out.stderr
    sh.run('stdistill train --resume runs/plain')  # as printed: the finished run stays finished
    assert '`stdistill train --help` lists them' in sh.run('stdistill train epoch=3', expect=2).stderr

    # 3. a token student whose class head trails its avg head: the export says what it ships
    out = sh.run(f'stdistill train --config recipes/folder/std.yaml {FOLDER} epochs=3 min_updates_per_epoch=0 '
                 f'output=runs/std teachers.0.checkpoint=runs/chance-again/best/model.safetensors')
    out = sh.run('stdistill export runs/std exported/std_cls --head cls')
    shipped = re.search(r'it predicts with the cls head: validation top-1 ([\d.]+) .*the run reported ([\d.]+), from '
                        r'its avg head', out.stdout)
    assert shipped, out.stdout
    state = json.loads((clothes / 'runs' / 'std' / 'summary.json').read_text())['best']
    assert float(shipped.group(2)) == pytest.approx(state['top1'], abs=0.005)
    # the class head's top-1 printed is that of the exported model: stdistill eval of the run's cls head agrees
    out_eval = sh.run('stdistill eval runs/std inference_head=cls')
    assert re.search(rf'top-1 {shipped.group(1)}', out_eval.stdout), out_eval.stdout
    far = float(shipped.group(2)) - float(shipped.group(1)) > max(
        2.0, float(shipped.group(2)) - wilson_interval(float(shipped.group(2)), 60)[0])
    assert far == ('scores' in out.stderr and 'points below' in out.stderr), (out.stdout, out.stderr)
    sh.run('stdistill export runs/std exported/std')  # the token export: its own load line
    # a teacher pass says how to train from its store; Fashion-MNIST files looked for in the wrong place say
    # where they are, and how to install them
    out = sh.run(f'stdistill teacher-pass --config recipes/folder/std.yaml {FOLDER} epochs=1 '
                 f'teachers.0.checkpoint=runs/chance-again/best/model.safetensors --output stores/std')
    assert 'teacher_outputs=stores/std`' in out.stdout
    out = sh.run('stdistill train --config recipes/fashion_mnist/plain.yaml data_dir=data/clothes output=runs/fm',
                 expect=2)
    assert 'set data_dir to the folder holding' in out.stderr and '`apt-get install dataset-fashion-mnist`' in out.stderr

    # 4. the README's own-data walk, its training commands as written but on this folder of 240 images
    with open(os.path.join(ROOT, 'README.md')) as f:
        walk = f.read().split('\n## Your own data\n', 1)[1].split('```bash\n', 1)[1].split('```', 1)[0]
    trains = [line for line in walk.splitlines() if line.startswith('stdistill train') and 'img_size=64' not in line]
    assert len(trains) == 3
    for line in trains:
        sh.run(line.replace('data/digits', 'data/clothes').replace('runs/digits', 'runs/walk') + ' workers=0 '
               'progress=false')
    for name in ('teacher', 'plain', 'std'):
        best = json.loads((clothes / 'runs' / 'walk' / name / 'summary.json').read_text())['best']
        assert not at_chance(best['top1'], best['images'], best['chance_top1']), (name, best)

    # 5. every hint printed above, run exactly as printed
    images = _images(clothes)
    done = {again, 'stdistill train --resume runs/plain'}
    for hint in sorted(sh.hints):
        if hint in done:
            continue
        if hint.startswith('stdistill export'):  # the token export of the head the run reported
            sh.run(hint)
            folder = shlex.split(hint)[-1]  # options first, then RUN OUT
            ours = sh.run(f'stdistill predict {folder} {" ".join(images)}').stdout
            assert 'config.json' in os.listdir(clothes / folder)  # every head: a timm folder
            assert _top5(ours)[0][0] == images[0]
        elif hint.startswith('stdistill train') and 'teacher_outputs=' in hint:  # trains from the store
            assert 'teacher outputs from the store' in sh.run(hint).stdout
        elif hint == 'stdistill train --help':
            assert 'min_updates_per_epoch' in sh.run(hint).stdout
        elif hint.startswith(('stdistill ', 'apt-get install')):  # apt-get: installed already, as CI runs it (root)
            sh.run(hint)
        elif 'timm.create_model' in hint:  # the timm-format export, loaded as printed, predicts as stdistill does
            folder = re.search(r"local-dir:([^']+)'", hint).group(1)
            theirs = _top5(sh.python(PREDICT_TIMM.format(hint=hint), images))
            ours = _top5(sh.run(f'stdistill predict {folder} {" ".join(images)}').stdout)
            assert theirs == ours, (hint, theirs, ours)
        else:
            raise AssertionError(f'a hint this test does not know how to run: {hint!r}')
        done.add(hint)
    assert any('timm.create_model' in h and 'pretrained=True' in h for h in done)  # the export's timm line
    # the token export's line: timm loads an STD student once stdistill has registered its names
    assert any(h.startswith('import stdistill, timm; model = timm.create_model') for h in done)


def test_missing_teacher_checkpoint_says_so_and_how_to_make_it(clothes, tmp_path, capsys):
    run = ['train', '--config', os.path.join(ROOT, 'recipes', 'folder', 'std.yaml'), 'workers=0',
           f'data_dir={clothes / "data" / "clothes"}', f'output={tmp_path / "std"}']
    missing = tmp_path / 'teacher' / 'best' / 'model.safetensors'
    assert cli.main([*run, f'teachers.0.checkpoint={missing}']) == 2
    err = capsys.readouterr().err
    assert f'teachers.0.checkpoint: the teacher checkpoint {missing} does not exist: train the teacher first with ' \
           f'output={tmp_path / "teacher"}' in err and 'input contract' not in err
    # siblings: a run folder (or checkpoint folder) given for the file, a run without a checkpoint yet
    (tmp_path / 'teacher').mkdir()
    assert cli.main([*run, f'teachers.0.checkpoint={tmp_path / "teacher"}']) == 2
    assert 'is a folder: give the weights file' in capsys.readouterr().err
    (tmp_path / 'teacher' / 'config.yaml').write_text('model: resnet18\n')
    assert cli.main([*run, f'teachers.0.checkpoint={missing}']) == 2
    assert 'has not finished an epoch: let it finish its first, or train it again' in capsys.readouterr().err
    # a teacher run whose best/ is gone: the key set to the checkpoint it holds
    import shutil
    teacher = tmp_path / 'stopped'
    assert cli.main(['train', '--config', os.path.join(ROOT, 'recipes', 'folder', 'plain.yaml'), 'workers=0',
                     'progress=false', f'data_dir={clothes / "data" / "clothes"}', 'epochs=2', '--stop-after', '1',
                     f'output={teacher}']) == 0
    shutil.rmtree(teacher / 'best')
    capsys.readouterr()
    assert cli.main([*run, f'teachers.0.checkpoint={teacher / "best" / "model.safetensors"}']) == 2
    assert (f'holds last/model.safetensors but no best/model.safetensors: set teachers.0.checkpoint='
            f'{teacher / "last" / "model.safetensors"}') in capsys.readouterr().err


@pytest.mark.parametrize('native', [False, True, None])
def test_amp_on_a_cpu_without_bf16_is_said_at_setup(tmp_path, monkeypatch, capsys, native):
    import stdistill.training.builders
    monkeypatch.setattr(stdistill.training.builders, 'cpu_bf16_native', lambda: native)
    tiny = ['dataset=fashion-mnist', 'img_size=28', 'in_chans=1', 'batch_size=16', 'workers=0', 'train_samples=32',
            'val_samples=16', 'aa=null', 'mixup=0', 'cutmix=0', 'repeated_aug=false', 'model=mixer_t4_28',
            'model_kwargs={embed_dim: 16, num_blocks: 1}', 'method=none', 'epochs=1', 'warmup_epochs=0',
            'progress=false']
    for amp in ('true', 'false'):
        assert cli.main(['train', *tiny, f'amp={amp}', f'output={tmp_path / amp}']) == 0
        err = capsys.readouterr().err
        said = 'bf16 is emulated there, about 13x slower than fp32: set amp=false' in err
        assert said == (amp == 'true' and native is False), err


def test_counts_are_those_evaluated(tmp_path, capsys):
    """Subsets: the setup lines count the images used, of how many (quickstart --small's 10000 was 2000)."""
    from stdistill.utils.distributed import DistInfo
    from stdistill.data.loaders import build_data
    cfg = load_config(None, ['dataset=fashion-mnist', 'img_size=28', 'in_chans=1', 'train_samples=300',
                             'val_samples=200', 'workers=0', 'batch_size=32'])
    data = build_data(cfg, DistInfo(), (0.5,), (0.5,))
    assert data.report[0].startswith('train: 300 images in 10 classes') and 'subset of its 60000' in data.report[0]
    assert data.report[1].startswith("validation (Fashion-MNIST's test set): 200 images in 10 classes") and 'subset of its 10000' in data.report[1]
    assert len(data.val_loader.dataset) == 200


def test_quickstart_table_shows_the_class_head_and_chance():
    rows = [dict(name='teacher', model='resnet18', params_m=11.2, top1=33.3, test_images=600, at_chance='AT CHANCE'),
            dict(name='plain', model='mixer_t4_28', params_m=0.1, top1=70.0, test_images=600, at_chance=None),
            dict(name='std', model='mixer_t4_28', params_m=0.2, top1=75.0, top1_cls_head=66.0, test_images=600,
                 at_chance=None)]
    text = '\n'.join(results_table(rows))
    assert 'class head alone' in text and '66.00' in text and text.count('AT CHANCE') == 1
    assert '95% CI' in text  # 600 test images: the noise is said


def test_chance_and_intervals():
    assert format_top1(95.0, 60) == '95.00 (95% CI 86.3-98.3 on 60 images)'
    assert format_top1(95.0, 1000) == '95.00'
    low, high = wilson_interval(0.0, 10)
    assert low == 0.0 and 0 < high < 40
    assert at_chance(33.33, 60, 100 / 3) and at_chance(45.0, 60, 100 / 3) and not at_chance(60.0, 60, 100 / 3)
    # the most frequent class: 90% of a split is chance there, whatever the class count
    assert chance_note({'val_top1': 90.0, 'val_images': 500, 'val_chance_top1': 90.0})
    assert chance_note({'val_top1': 99.0, 'val_images': 500, 'val_chance_top1': 90.0}) is None
    assert chance_note({'val_top1': 10.0, 'val_images': 500}) is None  # a row from before the chance level


def test_fit_batch_size():
    cfg = TrainConfig(batch_size=64, min_updates_per_epoch=20, mixup=0, cutmix=0)
    assert fit_batch_size(cfg, 240, False) == 12
    assert fit_batch_size(cfg, 50000, False) == 64
    assert fit_batch_size(cfg, 250, True) == 12  # 12.5 -> 12, even for mixup's pairs
    assert fit_batch_size(cfg, 230, True) == 10  # 11 -> 10
    assert fit_batch_size(cfg, 20, False) == 2  # BatchNorm and MINE need 2
    assert fit_batch_size(TrainConfig(batch_size=64, min_updates_per_epoch=0), 100, False) == 64


def test_train_help_groups_every_key_by_topic():
    text = config_help()
    for title in HELP_GROUPS.values():
        assert f'\n{title}:\n' in f'\n{text}'
    keys = [line.split()[0] for line in text.splitlines() if line.startswith('  ')]
    assert keys == [f.name for f in __import__('dataclasses').fields(TrainConfig)]


def test_a_split_too_small_to_tell_is_not_called_at_chance():
    """On 1 or 2 images even 100% is not clearly above chance: the note says the split is too small."""
    from stdistill.utils.accuracy import is_at_chance
    for images, chance in ((1, 100.0), (2, 50.0)):  # 3 images at 100% are clearly above 1/3
        note = chance_note({'val_top1': 100.0, 'val_images': images, 'val_chance_top1': chance})
        assert note and 'too few to tell' in note and not is_at_chance(note)
    assert is_at_chance(chance_note({'val_top1': 35.0, 'val_images': 60, 'val_chance_top1': 100 / 3}))


def test_train_longer_finishes_a_run_stopped_early():
    from stdistill.utils.hints import train_longer
    stopped = {'num_updates': 20, 'epochs_done': 1, 'epochs': 15}
    assert train_longer('runs/x', stopped).endswith('finish it, `stdistill train --resume runs/x`')
    # a few updates an epoch: again, at the batch size that gives FEW_UPDATES (min_updates_per_epoch)
    few = {'num_updates': 9, 'epochs_done': 3, 'epochs': 3, 'batch_size': 64}
    assert train_longer('runs/x', few).endswith(
        '`stdistill train --config runs/x/config.yaml min_updates_per_epoch=20 epochs=5 output=runs/x-again`')
    assert '--config=-x/config.yaml' in train_longer('-x', few) and 'output=-x-again' in train_longer('-x', few)
    # enough updates an epoch, or a batch as low as it goes (2): longer, to ENOUGH_UPDATES
    done = {'num_updates': 60, 'epochs_done': 3, 'epochs': 3, 'batch_size': 64}
    assert train_longer('runs/x', done).endswith('train it longer, `stdistill train --resume runs/x epochs=6`')
    # a run folder named like an option, or the current folder: still a command that runs
    assert '`stdistill train --resume=-x epochs=6`' in train_longer('-x', done)
    assert '`stdistill train --resume . epochs=6`' in train_longer('', done)
    assert train_longer('runs/x', dict(few, batch_size=2)).endswith('`stdistill train --resume runs/x epochs=34`')


def test_resume_refuses_data_that_changes_the_lowered_batch_size(clothes, tmp_path, capsys):
    import shutil
    data = tmp_path / 'data'
    shutil.copytree(clothes / 'data' / 'clothes', data)
    run = ['train', '--config', os.path.join(ROOT, 'recipes', 'folder', 'plain.yaml'), f'data_dir={data}',
           'workers=0', 'progress=false', 'epochs=2', f'output={tmp_path / "run"}']
    assert cli.main([*run, '--stop-after', '1']) == 0
    assert 'batch_size 64 -> 12' in capsys.readouterr().out
    for i in range(24):  # 264 images: batch_size 13
        shutil.copy(next((data / 'train' / 'bag').iterdir()), data / 'train' / 'bag' / f'copy{i}.png')
    assert cli.main(['train', '--resume', str(tmp_path / 'run')]) == 2
    err = capsys.readouterr().err
    assert 'the run trained with batch_size 12 and its training data now gives 13' in err


def test_a_run_resumed_from_an_older_checkpoint_reports_without_the_chance_level(monkeypatch, capsys):
    """A best/ recorded before the chance level has no image count: the last line prints its top-1 plainly."""
    import stdistill.training.train
    old_best = {'top1': 81.5, 'top5': 99.0, 'epoch': 1, 'weights': 'student'}
    monkeypatch.setattr(stdistill.training.train, 'train', lambda cfg, resume, stop_after: {
        'final': {'val_top1': 81.5}, 'best': old_best, 'epochs_done': 2, 'epochs': 2, 'num_updates': 40})
    assert cli.main(['train', 'output=runs/old', 'dataset=fashion-mnist']) == 0
    out = capsys.readouterr()
    assert 'best top-1 81.50 (epoch 2), run folder runs/old' in out.out and 'warning' not in out.err
