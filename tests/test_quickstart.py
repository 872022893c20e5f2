"""The quickstart's plumbing at a tiny size (the real run is `stdistill quickstart`, in CI)."""
import json
import os

import pytest

from stdistill.config import load_config
from stdistill.apps.quickstart import plot_title, quickstart_configs, run_quickstart


def test_quickstart_writes_table_plot_and_results(tmp_path, capsys):
    out = tmp_path / 'qs'
    results = run_quickstart(str(out), workers=0, train_samples=256, val_samples=200, epochs=1, progress=False)
    with open(out / 'results.json') as f:
        assert json.load(f) == results
    rows = results['rows']
    assert [r['name'] for r in rows] == ['teacher', 'plain', 'std']
    for row in rows:
        assert row['params_m'] > 0 and 0 <= row['top1'] <= 100 and row['test_images'] == 200
    assert rows[2]['params_m'] > rows[1]['params_m']  # the token pair and its head
    assert os.path.getsize(out / 'comparison.png') > 0
    # the STD student read the teacher the quickstart had just trained
    with open(out / 'std' / 'config.yaml') as f:
        assert str(out / 'teacher' / 'best' / 'model.safetensors') in f.read()
    printed = capsys.readouterr().out
    assert 'STD vs plain student' in printed and 'mixer_t4_28' in printed
    # counts and titles are those of what was scored: 200 of the 10,000 test images (--small's said 10000)
    assert "validation (Fashion-MNIST's test set): 200 images in 10 classes" in printed and '(a subset of its 10000)' in printed
    assert plot_title(rows) == 'Fashion-MNIST, 200 of its 10,000 test images'
    assert 'class head alone' in printed
    for row in rows:  # the table's top-1 is that of best/, the checkpoint eval and export take
        best = json.loads((out / row['name'] / 'summary.json').read_text())['best']
        assert row['top1'] == round(best['top1'], 2) and row['best_epoch'] == best['epoch'] + 1
    # run again: the finished stages are kept (nothing retrains) and the table is the same
    summaries = {n: (out / n / 'summary.json').stat().st_mtime_ns for n in ('teacher', 'plain', 'std')}
    again = run_quickstart(str(out), workers=0, train_samples=256, val_samples=200, epochs=1, progress=False)
    assert again['rows'] == rows and 'finished earlier: kept' in capsys.readouterr().out
    assert {n: (out / n / 'summary.json').stat().st_mtime_ns for n in summaries} == summaries
    # a stage a kill interrupted (no summary yet, a checkpoint there) resumes; the teacher is kept
    os.remove(out / 'std' / 'summary.json')
    resumed = run_quickstart(str(out), workers=0, train_samples=256, val_samples=200, epochs=1, progress=False)
    assert ', resumed ==' in capsys.readouterr().out and resumed['rows'][2]['top1'] == rows[2]['top1']
    # another preset is another run: every stage starts again
    run_quickstart(str(out), workers=0, train_samples=128, val_samples=200, epochs=1, progress=False)
    assert 'finished earlier' not in capsys.readouterr().out
    assert load_config(str(out / 'plain' / 'config.yaml')).train_samples == 128


def test_small_preset_is_smaller_than_the_default(tmp_path):
    small, default = (quickstart_configs(str(tmp_path), small=flag) for flag in (True, False))
    for name in small:
        assert small[name].train_samples * small[name].epochs < default[name].train_samples * default[name].epochs
    with pytest.raises(ValueError, match='--small or --long'):
        quickstart_configs(str(tmp_path), long=True, small=True)


def test_quickstart_never_replaces_runs_it_did_not_write(tmp_path, capsys):
    from stdistill.apps.cli import main
    (tmp_path / 'mine' / 'teacher').mkdir(parents=True)
    (tmp_path / 'mine' / 'teacher' / 'config.yaml').write_text('epochs: 3\n')
    assert main(['quickstart', '--small', '--output', str(tmp_path / 'mine')]) == 2
    assert 'not written by stdistill quickstart' in capsys.readouterr().err
    assert (tmp_path / 'mine' / 'teacher' / 'config.yaml').read_text() == 'epochs: 3\n'
    (tmp_path / 'file').write_text('x')
    assert main(['quickstart', '--output', str(tmp_path / 'file')]) == 2
    assert '--output must be a folder' in capsys.readouterr().err
