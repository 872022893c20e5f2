"""The benchmark scripts run end to end (tiny settings) and print what their readers parse."""
import importlib.util
import json
import os
import re

import pytest

from stdistill.config import load_config

pytestmark = pytest.mark.slow  # the benchmarks at their smoke size

ROOT = os.path.join(os.path.dirname(__file__), '..')


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'benchmarks', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_time_prints_ratios(capsys):
    step_time = _load('step_time')
    assert step_time.main(['--models', 'mixer_s16', '--batch-size', '2', '--warmup', '0', '--steps', '1',
                           '--teacher-steps', '1', '--breakdown']) == 0
    out = capsys.readouterr().out.strip().splitlines()
    for row in step_time.BREAKDOWN:
        assert any(line.startswith(f'Mixer-S16: {row} / plain step time') for line in out), row
    for row in ('std+teachers', 'timm deit+teacher'):  # beside timm's own distillation, in one run
        assert any(line.startswith(f'Mixer-S16: {row} / timm kd+teacher step time') for line in out), row
    last = re.fullmatch(r'std_overhead=([\d.]+) peak_fraction_plain=([\d.]+) peak_fraction_std=([\d.]+)', out[-1])
    assert last, out[-1]
    assert all(float(v) > 0 for v in last.groups())
    # the FLOP count is the real one: STD adds 12-13% to Mixer-S16's step (docs/method.md section 6)
    mac = re.search(r'mac_overhead=([\d.]+)', '\n'.join(out))
    assert 1.11 < float(mac.group(1)) < 1.14


def test_reproduction_runs_rows_and_reuses_finished_runs(tmp_path, capsys):
    reproduce = _load('reproduce_fashion_mnist')
    args = ['--budget', 'smoke', '--seeds', '0', '1', '--rows', 'none', 'labels_std', 'std_both',
            '--output', str(tmp_path), '--workers', '0']
    assert reproduce.main(args) == 0
    out = capsys.readouterr().out
    folder = tmp_path / 'smoke'
    results = json.loads((folder / 'results.json').read_text())
    assert {(r['row'], r['seed']) for r in results['runs']} == {(row, seed) for row in ('none', 'labels_std', 'std_both')
                                                                for seed in (0, 1)}
    rows = {r['row']: r for r in results['table']}
    assert set(rows) == {'none', 'labels_std', 'labels_std_cls', 'labels_std_dist', 'std_both', 'std_both_cls',
                         'std_both_dist'}
    assert all(r['n'] == 2 for r in rows.values())
    # the share of STD's gain kept by the pair trained on the labels, from the table's means
    share = results['labels_share']
    assert share['share'] == pytest.approx((rows['labels_std']['mean'] - rows['none']['mean'])
                                           / (rows['std_both']['mean'] - rows['none']['mean']))
    table = (folder / 'table.md').read_text()
    assert 'STD both tokens from the labels, inference: class head alone' in table
    assert 'remains without the teacher' in table and 'Test top-1 on 500 test images' in table
    assert (tmp_path / 'bars.png').stat().st_size > 0
    assert 'the smoke budget in all:' in out
    # the teachers ran once per seed, into a store the distilled rows trained from; the labels need none
    stores = sorted(p.parent for p in folder.glob('stores/*/seed*/store.json'))
    assert [p.name for p in stores] == ['seed0', 'seed1']
    for seed, store in zip((0, 1), stores):
        saved = load_config(str(folder / 'rows' / 'std_both' / f'seed{seed}' / 'config.yaml'))
        assert saved.teacher_outputs == str(store)
        assert load_config(str(folder / 'rows' / 'labels_std' / f'seed{seed}' / 'config.yaml')).teacher_outputs is None
    # a second call trains nothing: every run is found finished with the same config
    summary = folder / 'rows' / 'none' / 'seed0' / 'summary.json'
    before = summary.stat().st_mtime_ns
    assert reproduce.main(args) == 0
    assert summary.stat().st_mtime_ns == before
    assert json.loads((folder / 'results.json').read_text())['table'] == results['table']
    # --report trains nothing: the finished runs only, a seed never run is left out
    assert reproduce.main([*args[:3], '1', '2', *args[5:], '--report']) == 0
    report = json.loads((folder / 'results.json').read_text())
    assert {(r['row'], r['seed']) for r in report['runs']} == {(row, 1) for row in ('none', 'labels_std', 'std_both')}
    assert not (folder / 'rows' / 'none' / 'seed2').exists()
    assert summary.stat().st_mtime_ns == before


def test_reproduction_resumes_an_interrupted_run(tmp_path, capsys):
    """A run stopped after an epoch (the long budget's case) continues from it, not from scratch."""
    reproduce = _load('reproduce_fashion_mnist')
    from stdistill.quickstart import RECIPES
    from stdistill.train import train
    from stdistill.config import config_from_dict
    values = dict(RECIPES['plain'], train_samples=64, val_samples=64, batch_size=16, epochs=2, workers=0, progress=False,
                  model_kwargs={'embed_dim': 16, 'num_blocks': 2}, output=str(tmp_path / 'run'))
    train(config_from_dict(values), stop_after=1)
    first = (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()
    assert len(first) == 1
    summary = reproduce.run(values)
    assert summary['epochs_done'] == 2
    assert 'resuming' in capsys.readouterr().out
    assert (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()[0] == first[0]


def test_reproduction_rejects_unknown_rows(tmp_path, capsys):
    reproduce = _load('reproduce_fashion_mnist')
    with pytest.raises(SystemExit):
        reproduce.main(['--rows', 'nope', '--output', str(tmp_path)])


def test_fault_injection_kills_resumes_and_compares(tmp_path, capsys):
    """Three SIGKILLs (a step, an evaluation, a checkpoint write) of a 4-epoch run: each is
    resumed, and the run ends bitwise identical to the uninterrupted one."""
    fault_inject = _load('fault_inject')
    assert fault_inject.main(['--kills', '3', '--epochs', '4', '--seed', '1', '--output', str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == 'resumed=3/3 identical=3/3'
    kills = [line.split() for line in out if re.match(r'\s+\d+\s+(step|eval|checkpoint)\s', line)]
    assert [k[1] for k in kills] == ['step', 'eval', 'checkpoint']
    assert 'identical to the reference; 0 temporary folders left' in out[-2]


def test_fault_injection_detects_a_run_that_does_not_resume_exactly(tmp_path):
    """The comparison can fail: digests of different checkpoints differ."""
    fault_inject = _load('fault_inject')
    from stdistill.checkpoint import save_checkpoint
    import torch
    model = torch.nn.Linear(3, 2)
    save_checkpoint(str(tmp_path / 'a'), model, {'epoch': 0, 'm': torch.zeros(2)})
    save_checkpoint(str(tmp_path / 'b'), model, {'epoch': 0, 'm': torch.zeros(2)})
    save_checkpoint(str(tmp_path / 'c'), model, {'epoch': 0, 'm': torch.tensor([0.0, 1e-8])})
    digest = fault_inject.checkpoint_digest
    assert digest(str(tmp_path / 'a')) == digest(str(tmp_path / 'b')) != digest(str(tmp_path / 'c'))


def test_reproduction_never_deletes_what_is_not_a_run(tmp_path, capsys):
    """A folder where a run would go that holds anything else is refused, and kept; so is a file
    as --output; and the smoke teachers live apart from the study's."""
    reproduce = _load('reproduce_fashion_mnist')
    teacher = tmp_path / 'smoke' / 'teachers' / 'resnet10t'
    teacher.mkdir(parents=True)
    (teacher / 'config.yaml').write_text('model: resnet10t\n')
    (teacher / 'data.bin').write_text('precious')
    args = ['--budget', 'smoke', '--seeds', '0', '--rows', 'none', '--workers', '0']
    with pytest.raises(ValueError, match='holds data.bin, which is not part of a stdistill run'):
        reproduce.main([*args, '--output', str(tmp_path)])
    assert (teacher / 'data.bin').read_text() == 'precious'
    (tmp_path / 'afile').write_text('x')
    with pytest.raises(ValueError, match='is a file, not a folder'):
        reproduce.main([*args, '--output', str(tmp_path / 'afile' / 'study')])
    for bad in (['--long-epochs', '3'], ['--budget', 'long', '--long-epochs', '0'], ['--seeds', '0', '0']):
        with pytest.raises(SystemExit):
            reproduce.main(['--output', str(tmp_path / 'x'), *bad])
    assert not (tmp_path / 'x').exists()
