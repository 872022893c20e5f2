"""The benchmark scripts run end to end (tiny settings) and print what their readers parse."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest


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


STUDY = ['--smoke', '--regimes', 'deit', '--seeds', '0', '--rows', 'none', 'std_both', 'labels_std',
         'std_both_epoch1', 'std_both_random', 'std_both_shuffled', '--plans', 'main', 'ladder', '--workers', '0']


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    """The study at its smoke size: tiny teachers, three rows of one regime, one seed."""
    root = tmp_path_factory.mktemp('study')
    reproduce = _load('reproduce_fashion_mnist')
    args = [*STUDY, '--results', str(root / 'results'), '--output', str(root / 'runs')]
    assert reproduce.main([*args, '--teachers-only']) == 0
    assert reproduce.main(args) == 0
    return reproduce, root, args


def _script(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'reproduce_fashion_mnist.py'), *args],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))


def test_study_writes_records_and_reports_them_alone(study):
    """Each finished run writes its record; --report rebuilds the tables from the records alone
    (the run folders and stores gone, as on a fresh clone)."""
    reproduce, root, args = study
    records = sorted((root / 'results' / 'runs').glob('*/*/*/seed*.json'))
    assert [p.relative_to(root / 'results' / 'runs').as_posix() for p in records] == [
        'deit/12k/labels_std/seed0.json', 'deit/12k/none/seed0.json', 'deit/12k/std_both/seed0.json',
        'deit/12k/std_both_epoch1/seed0.json', 'deit/12k/std_both_random/seed0.json',
        'deit/12k/std_both_shuffled/seed0.json']
    # the ladder's rungs: the first epoch's weights, the trained network and input with random weights
    rungs = {row: json.loads((root / 'results' / 'runs' / 'deit' / '12k' / row / 'seed0.json').read_text())
             for row in ('std_both_epoch1', 'std_both_random', 'std_both_shuffled')}
    epoch1 = json.loads((root / 'results' / 'teachers' / 'cnn_epoch1.json').read_text())
    assert rungs['std_both_epoch1']['teachers'][0]['weights_sha256'] == epoch1['weights_sha256']
    random = rungs['std_both_random']['config']['teachers'][0]
    assert random['kwargs'] == {'in_chans': 1} and random['checkpoint'] is None and random['img_size'] == 28
    assert rungs['std_both_shuffled']['control'] == 'shuffled'
    std = json.loads((root / 'results' / 'runs' / 'deit' / '12k' / 'std_both' / 'seed0.json').read_text())
    teacher = json.loads((root / 'results' / 'teachers' / 'cnn.json').read_text())
    assert std['teachers'] == [{'name': 'cnn', 'top1': teacher['top1'], 'weights_sha256': teacher['weights_sha256']}]
    assert [set(e) >= {'val_top1', 'val_top1_cls', 'val_top1_dist'} for e in std['per_epoch']] == [True, True]
    assert std['final']['val_top1'] == std['per_epoch'][-1]['val_top1'] and std['smoke'] is True
    assert std['config']['aa'] == 'rand-m9-mstd0.5-inc1' and std['config']['mixup'] == 0.8
    # the store's views measured before any student trained
    measure = json.loads((root / 'results' / 'disagreement' / 'deit' / '12k' / 'cnn' / 'seed0.json').read_text())
    assert measure['views'] == 512 and 0 <= measure['disagree_pct'] <= 100 and measure['kl_label_teacher'] > 0
    shutil.rmtree(root / 'runs')
    result = _script('--report', '--smoke', '--results', str(root / 'results'))
    assert result.returncode == 0, result.stderr
    for value in (std['final']['val_top1'], std['final']['val_top1_cls'], teacher['top1'], measure['disagree_pct']):
        assert f'{value:.2f}' in result.stdout
    assert '| STD both tokens from the labels |' in result.stdout and 'The paper\'s claims' in result.stdout
    for rung in ('ResNet-18 (', 'ResNet-18 after 1 epoch (', 'ResNet-18, random weights |',
                 'ResNet-18, outputs shuffled within the batch |', 'the labels |'):
        assert f'| {rung}' in result.stdout  # every rung of the ladder, named by its teacher
    assert (root / 'results' / 'chart.png').stat().st_size > 0
    assert not (root / 'runs').exists()  # the report trains nothing


def test_study_skips_a_run_with_a_record(study, capsys):
    reproduce, root, args = study
    record = root / 'results' / 'runs' / 'deit' / '12k' / 'none' / 'seed0.json'
    before = record.stat().st_mtime_ns
    assert reproduce.main(args) == 0
    out = capsys.readouterr().out
    assert '== deit 12k' not in out and '== teacher' not in out  # nothing trained, no store made again
    assert record.stat().st_mtime_ns == before


def test_study_refuses_a_record_of_another_config(study, tmp_path):
    """A record whose config no longer matches its row is refused in one line, and run again on
    request."""
    reproduce, root, args = study
    results = tmp_path / 'results'
    shutil.copytree(root / 'results', results)
    path = results / 'runs' / 'deit' / '12k' / 'none' / 'seed0.json'
    record = json.loads(path.read_text())
    record['config']['lr'], record['config_digest'] = 0.004, '0' * 64  # made when the row said lr 0.004
    path.write_text(json.dumps(record))
    argv = [*STUDY, '--rows', 'none', '--results', str(results), '--output', str(root / 'runs')]
    result = _script(*argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'deit/12k/none/seed0.json was made with another config (lr: 0.004 -> 0.002)' in lines[0]
    assert '--rerun-changed' in lines[0]
    assert json.loads(path.read_text())['config_digest'] == '0' * 64  # refused: nothing written
    text = reproduce.report(str(results), smoke=True)  # nor averaged in by the report
    assert ('(1 run records were made with another config than their row\'s today (first: '
            'runs/deit/12k/none/seed0.json, lr: 0.004 -> 0.002) and are left out') in text
    assert '| no distillation | not run |' in text
    result = _script(*argv, '--rerun-changed')
    assert result.returncode == 0, result.stderr
    assert json.loads(path.read_text())['config']['lr'] == 0.002


def test_reproduction_resumes_an_interrupted_run(tmp_path, capsys):
    """A run stopped after an epoch (the long budget's case) continues from it, not from scratch."""
    reproduce = _load('reproduce_fashion_mnist')
    from stdistill.apps.quickstart import RECIPES
    from stdistill.training.train import train
    from stdistill.config import config_from_dict
    values = dict(RECIPES['plain'], train_samples=64, val_samples=64, batch_size=16, epochs=2, workers=0, progress=False,
                  model_kwargs={'embed_dim': 16, 'num_blocks': 2}, output=str(tmp_path / 'run'))
    train(config_from_dict(values), stop_after=1)
    first = (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()
    assert len(first) == 1
    summary = reproduce.train_run(values)
    assert summary['epochs_done'] == 2
    assert 'resuming' in capsys.readouterr().out
    assert (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()[0] == first[0]
    # a record's minutes count the epoch before the interruption too
    rows = reproduce.epochs_of(str(tmp_path / 'run'))
    assert reproduce.minutes_of(rows) == round(sum(r['epoch_s'] for r in rows) / 60, 2)
    assert len(rows) == 2 and all(r['epoch_s'] > 0 for r in rows)


def test_study_commits_only_where_git_keeps_the_records(tmp_path):
    """--commit refuses up front a results folder git would ignore or that is outside the
    repository; the study's own folder is kept (a .gitignore line 'runs/' once kept every run
    record out of the commits)."""
    reproduce = _load('reproduce_fashion_mnist')
    from stdistill.utils.errors import UserError
    reproduce.check_committable(reproduce.RESULTS)
    with pytest.raises(UserError, match=r"--commit: git ignores runs/x/runs/light/12k/none/seed0.json \(rule "
                                        r"\.gitignore:\d+:runs/\): un-ignore"):
        reproduce.check_committable(os.path.join(ROOT, 'runs', 'x'))
    with pytest.raises(UserError, match='is outside the repository'):
        reproduce.check_committable(str(tmp_path / 'results'))
    with pytest.raises(UserError, match='outside the repository'):
        reproduce.main(['--commit', '--results', str(tmp_path / 'results'), '--output', str(tmp_path / 'runs')])
    assert not (tmp_path / 'runs').exists()


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
    from stdistill.training.checkpoint import save_checkpoint
    import torch
    model = torch.nn.Linear(3, 2)
    save_checkpoint(str(tmp_path / 'a'), model, {'epoch': 0, 'm': torch.zeros(2)})
    save_checkpoint(str(tmp_path / 'b'), model, {'epoch': 0, 'm': torch.zeros(2)})
    save_checkpoint(str(tmp_path / 'c'), model, {'epoch': 0, 'm': torch.tensor([0.0, 1e-8])})
    digest = fault_inject.checkpoint_digest
    assert digest(str(tmp_path / 'a')) == digest(str(tmp_path / 'b')) != digest(str(tmp_path / 'c'))


def test_reproduction_never_deletes_what_is_not_a_run(tmp_path):
    """A folder where a run would go that holds anything else is refused, and kept; so is a file
    as --output."""
    reproduce = _load('reproduce_fashion_mnist')
    from stdistill.utils.errors import UserError
    teacher = tmp_path / 'runs' / 'teachers' / 'cnn'
    teacher.mkdir(parents=True)
    (teacher / 'config.yaml').write_text('model: resnet18\n')
    (teacher / 'data.bin').write_text('precious')
    args = [*STUDY, '--results', str(tmp_path / 'results'), '--teachers-only']
    with pytest.raises(UserError, match='holds data.bin, which is not part of a stdistill run'):
        reproduce.main([*args, '--output', str(tmp_path / 'runs')])
    assert (teacher / 'data.bin').read_text() == 'precious'
    (tmp_path / 'afile').write_text('x')
    with pytest.raises(UserError, match='is a file, not a folder'):
        reproduce.main([*args, '--output', str(tmp_path / 'afile' / 'study')])
    with pytest.raises(SystemExit):
        reproduce.main([*args, '--output', str(tmp_path / 'x'), '--seeds', '0', '0'])
    assert not (tmp_path / 'x').exists()


def test_study_rows_without_a_network_teacher_need_no_teacher(tmp_path):
    """The plain and labels rows run (and write their records) before any teacher is trained."""
    reproduce = _load('reproduce_fashion_mnist')
    assert reproduce.main(['--smoke', '--regimes', 'light', '--seeds', '0', '--rows', 'none', '--plans', 'main',
                           '--workers', '0', '--results', str(tmp_path / 'results'),
                           '--output', str(tmp_path / 'runs')]) == 0
    assert (tmp_path / 'results' / 'runs' / 'light' / '12k' / 'none' / 'seed0.json').is_file()
    assert not (tmp_path / 'results' / 'teachers').exists() and not (tmp_path / 'runs' / 'teachers').exists()


def test_study_keeps_the_teachers_first_epoch_wherever_it_is(tmp_path):
    """The epoch-1 teacher is the checkpoint after the first epoch: in last/ after the stopped
    run, in previous/ once a resumed run saved its second epoch (a session that ended then),
    never a later epoch's; gone from both and not kept: refused in one line."""
    reproduce = _load('reproduce_fashion_mnist')
    from stdistill.utils.errors import UserError
    run, kept = tmp_path / 'cnn', tmp_path / 'cnn_epoch1.safetensors'

    def checkpoint(folder, epoch):
        (run / folder).mkdir(parents=True, exist_ok=True)
        (run / folder / 'state.json').write_text(json.dumps({'epoch': epoch}))
        (run / folder / 'model.safetensors').write_text(f'weights after epoch index {epoch}')

    checkpoint('last', 0)
    reproduce.keep_first_epoch(str(run), str(kept))
    assert kept.read_text() == 'weights after epoch index 0'
    checkpoint('previous', 0)
    checkpoint('last', 1)
    kept.unlink()
    reproduce.keep_first_epoch(str(run), str(kept))
    assert kept.read_text() == 'weights after epoch index 0'
    checkpoint('previous', 1)
    checkpoint('last', 2)
    reproduce.keep_first_epoch(str(run), str(kept))  # kept already: left as it is
    assert kept.read_text() == 'weights after epoch index 0'
    kept.unlink()
    with pytest.raises(UserError, match='no checkpoint after its first epoch'):
        reproduce.keep_first_epoch(str(run), str(kept))
    assert not kept.exists()


def test_study_trains_the_teachers_only_when_asked(tmp_path):
    """Rows that distil wait for the teachers, trained by one process (--teachers-only): two
    processes side by side never train them into one folder."""
    result = _script(*STUDY, '--results', str(tmp_path / 'results'), '--output', str(tmp_path / 'runs'))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and 'train the teachers first, alone (--teachers-only)' in lines[0], lines
    assert not (tmp_path / 'runs').exists() and not (tmp_path / 'results').exists()


def test_study_report_leaves_out_runs_of_other_teachers(study, tmp_path):
    """Records distilled from teachers since retrained are not averaged with the new ones."""
    reproduce, root, args = study
    results = tmp_path / 'results'
    shutil.copytree(root / 'results', results)
    before = reproduce.report(str(results), smoke=True)
    assert '| STD both tokens |' in before and 'left out' not in before
    path = results / 'runs' / 'deit' / '12k' / 'std_both' / 'seed0.json'
    record = json.loads(path.read_text())
    record['teachers'][0]['weights_sha256'] = 'f' * 64  # distilled from weights retrained since
    path.write_text(json.dumps(record))
    after = reproduce.report(str(results), smoke=True)
    assert '(1 run records distilled from teachers other than those recorded now are left out' in after
    assert '| STD both tokens | not run |' in after  # the side-by-side table: no current record of the row


def test_study_report_writes_its_tables_into_the_results_page(study, tmp_path):
    """--report --update-results puts the tables between the page's markers and keeps the rest;
    a page without them is refused in one line, unchanged."""
    reproduce, root, args = study
    page = tmp_path / 'RESULTS.md'
    page.write_text(f'# Results\n\nprose before\n\n{reproduce.BEGIN}\nold tables\n{reproduce.END}\n\nprose after\n')
    result = _script('--report', '--smoke', '--results', str(root / 'results'), '--update-results', str(page))
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    assert text.startswith('# Results\n\nprose before\n\n') and text.endswith(f'{reproduce.END}\n\nprose after\n')
    assert reproduce.results_block(text) == reproduce.report(str(root / 'results'), smoke=True)
    assert 'old tables' not in text
    page.write_text('# Results\n')
    result = _script('--report', '--smoke', '--results', str(root / 'results'), '--update-results', str(page))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert 'needs one' in result.stderr and page.read_text() == '# Results\n'


def test_study_report_prints_the_commands_that_complete_it(study, tmp_path):
    """Runs of the selection without a record are listed, with the commands that complete them;
    run exactly as printed, they do, and the report then lists none."""
    reproduce, root, args = study
    results = tmp_path / 'results'
    shutil.copytree(root / 'results', results)
    (results / 'runs' / 'deit' / '12k' / 'none' / 'seed0.json').unlink()
    selection = [*STUDY, '--results', str(results), '--output', str(tmp_path / 'runs')]
    result = _script('--report', *selection)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith('1 planned runs have no record yet (deit 12k none seed 0). Complete them'), last
    commands = re.findall(r'`([^`]+)`', last)
    assert len(commands) == 2 and commands[0].endswith(' &') and '--commit' not in commands[0]
    done = subprocess.run(['bash', '-c', commands[0] + '\nwait'], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert (results / 'runs' / 'deit' / '12k' / 'none' / 'seed0.json').is_file()
    assert '== deit 12k std_both seed 0' not in done.stdout  # the runs with a record were skipped
    report = subprocess.run(['bash', '-c', commands[1]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr
    assert 'no record yet' not in report.stdout and '| no distillation |' in report.stdout
    # the repository's own records: the commands commit, and the report rewrites RESULTS.md
    import argparse
    study = argparse.Namespace(**reproduce.STUDY_SELECTION, output=None, data_dir=None)
    missing = [reproduce.Run('none', 'light', '12k', 0), reproduce.Run('kd', 'deit', '3k', 2)]
    assert reproduce.complete_commands(missing, study, reproduce.RESULTS, False) == [
        f'OMP_NUM_THREADS=1 python benchmarks/reproduce_fashion_mnist.py --regimes {r} --commit &'
        for r in ('light', 'deit')]


@pytest.mark.slow
def test_study_smoke_commands_of_the_docs_run_as_printed(study, tmp_path):
    """docs/reproduction.md's smoke block, in a folder of the test's own that holds the records of
    the smoke study above (its teachers and 12k rows are found, not trained again; the other sizes
    are trained), then a report that lists the rest of the selection and how to complete it."""
    _, root, _ = study
    shutil.copytree(root / 'results', tmp_path / 'results')
    with open(os.path.join(ROOT, 'docs', 'reproduction.md'), encoding='utf-8') as f:
        commands = [line for line in f.read().splitlines() if line.startswith('python benchmarks/') and '--smoke' in line]
    assert len(commands) == 3
    for command in commands:
        done = subprocess.run(['bash', '-c', command.replace('/tmp/smoke', str(tmp_path))], cwd=ROOT, timeout=600,
                              capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
        assert done.returncode == 0, (command, done.stderr)
    assert '| STD both tokens from the labels |' in done.stdout
    assert 'planned runs have no record yet' in done.stdout and '--smoke --results' in done.stdout


def _damage(results, case):
    """Break a copy of the smoke study's records the way `case` says; returns the path named."""
    record = results / 'runs' / 'deit' / '12k' / 'none' / 'seed0.json'
    doc = json.loads(record.read_text())
    if case == 'truncated record':
        record.write_text(record.read_text()[:40])
    elif case == 'top-1 not a number':
        doc['final']['val_top1'] = float('nan')
        record.write_text(json.dumps(doc))
    elif case == 'top-1 out of range':
        doc['final']['val_top1'] = doc['per_epoch'][-1]['val_top1'] = 1e9
        record.write_text(json.dumps(doc))
    elif case == 'final not the last epoch':
        doc['final']['val_top1'] = 99.0
        record.write_text(json.dumps(doc))
    elif case == 'record in another place':
        shutil.copy(record, record.with_name('seed7.json'))
        return record.with_name('seed7.json')
    elif case == 'record is a folder':
        record.unlink()
        record.mkdir()
    elif case == 'seed a string':
        doc['seed'] = '0'
        record.write_text(json.dumps(doc))
    elif case == 'teacher record missing':
        (results / 'teachers' / 'cnn.json').unlink()
        return results / 'teachers'
    elif case == 'damaged disagreement':
        record = results / 'disagreement' / 'deit' / '12k' / 'cnn' / 'seed0.json'
        record.write_text('{')
    return record


@pytest.mark.parametrize('case, message', [
    ('truncated record', 'is a damaged run record (JSONDecodeError'),
    ('top-1 not a number', 'is a damaged run record (final is missing'),
    ('top-1 out of range', 'is a damaged run record (final is missing'),
    ('final not the last epoch', "its final top-1 is not its last epoch's"),
    ('record in another place', 'it is the record of runs/deit/12k/none/seed0.json'),
    ('record is a folder', 'is a damaged run record (IsADirectoryError'),
    ('seed a string', 'is a damaged run record (seed is missing'),
    ('teacher record missing', 'run records distil from teacher cnn, which has no record in'),
    ('damaged disagreement', 'is a damaged disagreement record (JSONDecodeError'),
])
def test_study_refuses_damaged_records_in_one_line(study, tmp_path, case, message):
    """A damaged record is named, never averaged in or a traceback; the tables are not rewritten."""
    reproduce, root, args = study
    from stdistill.utils.errors import UserError
    results = tmp_path / 'results'
    shutil.copytree(root / 'results', results)
    named = _damage(results, case)
    page = tmp_path / 'RESULTS.md'
    page.write_text(f'x\n{reproduce.BEGIN}\nold\n{reproduce.END}\n')
    with pytest.raises(UserError, match=re.escape(message)) as refused:
        reproduce.main(['--report', '--smoke', '--results', str(results), '--update-results', str(page)])
    assert os.path.relpath(named, ROOT) in str(refused.value) or str(named) in str(refused.value)
    assert 'old' in page.read_text()


def test_study_refuses_bad_options_in_one_line(study, tmp_path):
    reproduce, root, args = study
    from stdistill.utils.errors import UserError
    page = tmp_path / 'page.md'
    page.write_text(f'{reproduce.END}\n{reproduce.BEGIN}\n')
    results = str(root / 'results')
    cases = [
        (['--report', '--results', str(tmp_path / 'typo')], 'holds no study records'),
        (['--report', '--results', str(page)], 'is a file, not a folder'),
        (['--rows', 'none', '--results', str(page / 'sub'), '--output', str(tmp_path / 'o')], 'is a file, not a folder'),
        (['--report', '--smoke', '--results', results, '--update-results', str(tmp_path / 'missing.md')],
         'cannot read it (FileNotFoundError'),
        (['--report', '--smoke', '--results', results, '--update-results', str(page)], 'in that order'),
        (['--smoke', '--plans', 'ladder', '--regimes', 'light', '--results', results, '--output', str(tmp_path / 'o')],
         'select no run'),
    ]
    for argv, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            reproduce.main(argv)
    assert page.read_text() == f'{reproduce.END}\n{reproduce.BEGIN}\n' and not (tmp_path / 'o').exists()
    result = _script('--report', '--results', str(tmp_path / 'typo'))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    with pytest.raises(SystemExit):
        reproduce.main(['--seeds', '4294967296', '--output', str(tmp_path / 'o')])
