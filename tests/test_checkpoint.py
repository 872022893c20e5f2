"""Checkpoint integrity (checksums, fallback to the previous checkpoint), untrusted files, and
non-finite losses: a run never trains on, loads, or reports something it should not."""
import json
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

import stdistill.method.losses
from stdistill.training.checkpoint import (_seal, file_sha256, load_checkpoint, newest_valid_checkpoint, save_checkpoint,
                                  verify_checkpoint)
from stdistill.apps.cli import main
from stdistill.method.teachers import create_teacher
from stdistill.training.builders import build_student
from stdistill.training.train import train
from test_teachers import _Payload
from test_train import TINY, read_jsonl, tiny_config


def small_checkpoint(folder, epoch=3, previous=None):
    model = torch.nn.Linear(4, 3)
    save_checkpoint(str(folder), model, {'epoch': epoch, 'moments': torch.arange(6.0), 'note': 'x'}, previous)
    return model


def test_round_trip_and_checksums(tmp_path):
    model = small_checkpoint(tmp_path / 'ck')
    doc = verify_checkpoint(str(tmp_path / 'ck'))
    assert doc['epoch'] == 3 and len(doc['sha256']) == 64
    assert doc['files']['model.safetensors']['sha256'] == file_sha256(str(tmp_path / 'ck' / 'model.safetensors'))
    fresh = torch.nn.Linear(4, 3)
    state = load_checkpoint(str(tmp_path / 'ck'), fresh)
    assert torch.equal(state['moments'], torch.arange(6.0)) and state['note'] == 'x'
    assert torch.equal(fresh.weight, model.weight)


def _truncate(folder):
    path = folder / 'model.safetensors'
    path.write_bytes(path.read_bytes()[:-7])


def _flip_a_byte(folder):
    path = folder / 'state.safetensors'
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_json(folder):
    path = folder / 'state.json'
    path.write_text(path.read_text().replace('"epoch": 3', '"epoch": 4'))


def _strip_checksums(folder):
    path = folder / 'state.json'
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(doc['state']))  # what an older writer, or another program, left


def _delete_state(folder):
    os.remove(folder / 'state.safetensors')


@pytest.mark.parametrize('damage, message', [
    (_truncate, 'model.safetensors has .* bytes, .* were written'),
    (_flip_a_byte, 'state.safetensors does not match its checksum'),
    (_edit_json, 'state.json does not match its checksum'),
    (_strip_checksums, 'state.json is not a stdistill-checkpoint/1 document'),
    (_delete_state, 'state.safetensors is missing'),
])
def test_damaged_checkpoint_is_refused_with_one_line(tmp_path, damage, message):
    small_checkpoint(tmp_path / 'ck')
    damage(tmp_path / 'ck')
    with pytest.raises(ValueError, match=message) as info:
        load_checkpoint(str(tmp_path / 'ck'), torch.nn.Linear(4, 3))
    assert len(str(info.value).splitlines()) == 1


def test_newest_valid_checkpoint_falls_back_to_previous(tmp_path):
    run = tmp_path / 'run'
    small_checkpoint(run / 'last', epoch=0, previous=str(run / 'previous'))
    small_checkpoint(run / 'last', epoch=1, previous=str(run / 'previous'))
    assert verify_checkpoint(str(run / 'previous'))['epoch'] == 0
    assert newest_valid_checkpoint(str(run)) == (str(run / 'last'), [])
    _truncate(run / 'last')
    folder, rejected = newest_valid_checkpoint(str(run))
    assert folder == str(run / 'previous') and len(rejected) == 1 and 'last' in rejected[0]
    _truncate(run / 'previous')
    with pytest.raises(ValueError, match='nothing to resume .*last.*truncated.*previous.*truncated'):
        newest_valid_checkpoint(str(run))


def test_crash_between_the_renames_leaves_previous(tmp_path):
    """A save that died after moving last/ to previous/ but before renaming the new one in."""
    run = tmp_path / 'run'
    small_checkpoint(run / 'last', epoch=0, previous=str(run / 'previous'))
    os.replace(run / 'last', run / 'previous')
    assert newest_valid_checkpoint(str(run))[0] == str(run / 'previous')


def test_resume_skips_a_damaged_last_and_still_ends_identical(tmp_path, capsys):
    """last/ truncated: resume warns, goes back to previous/, redoes the epoch, and the run ends
    with the same weights as one that was never interrupted."""
    straight, broken = tmp_path / 'straight', tmp_path / 'broken'
    train(tiny_config(straight, 'epochs=3'))
    assert main(['train', *TINY, 'epochs=3', f'output={broken}', '--stop-after', '2']) == 0
    _truncate(broken / 'last')
    os.makedirs(broken / '.last.abc123')  # the temporary folder of a killed write
    capsys.readouterr()
    assert main(['train', '--resume', str(broken)]) == 0
    err = capsys.readouterr().err
    assert 'warning: passing over corrupt checkpoint' in err and 'model.safetensors' in err
    assert not os.path.exists(broken / '.last.abc123')
    a, b = (load_file(str(p / 'last' / 'model.safetensors')) for p in (straight, broken))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r['epoch'] for r in read_jsonl(broken / 'log.jsonl')] == [0, 1, 2]


def _evil_teacher(tmp_path, evil, run):
    create_teacher('resnet10t', checkpoint=str(evil))


def _evil_student(tmp_path, evil, run):
    assert main(['eval', str(evil), '--config', str(run / 'config.yaml')]) == 2


def _evil_resume_state(tmp_path, evil, run):
    """A forger who also rewrites the checksums: the pickle passes them, and is still refused."""
    target = run / 'last'
    shutil.copy(evil, target / 'state.safetensors')
    doc = json.loads((target / 'state.json').read_text())
    path = str(target / 'state.safetensors')
    doc['files']['state.safetensors'] = {'bytes': os.path.getsize(path), 'sha256': file_sha256(path)}
    doc['sha256'] = _seal(doc)
    (target / 'state.json').write_text(json.dumps(doc))
    assert main(['train', '--resume', str(run)]) == 2


@pytest.mark.parametrize('load', [_evil_teacher, _evil_student, _evil_resume_state], ids=['teacher', 'student', 'resume'])
def test_malicious_pickle_is_refused(tmp_path, load, capsys):
    run = tmp_path / 'run'
    train(tiny_config(run, 'epochs=1', 'model_ema=false'))
    marker = tmp_path / 'code-ran'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'head.weight': _Payload(str(marker))}}, str(evil))
    capsys.readouterr()
    if load is _evil_teacher:
        with pytest.raises(ValueError, match='cannot load checkpoint'):
            load(tmp_path, evil, run)
    else:
        load(tmp_path, evil, run)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith('stdistill: error: '), err
    assert not marker.exists()


def _nan_on_calls(monkeypatch, calls):
    """Make the distillation loss NaN on the given calls (0-based; one call per step and teacher)."""
    original = stdistill.method.losses.DistillationLoss.per_sample
    count = {'n': 0}

    def per_sample(self, student_logits, teacher_logits):
        out = original(self, student_logits, teacher_logits)
        count['n'] += 1
        return out * float('nan') if count['n'] - 1 in calls else out

    monkeypatch.setattr(stdistill.method.losses.DistillationLoss, 'per_sample', per_sample)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'run'
    _nan_on_calls(monkeypatch, {5})  # 4 steps per epoch: the second step of the second epoch (update 6)
    capsys.readouterr()
    assert main(['train', *TINY, 'epochs=3', f'output={out}']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert 'non-finite loss at epoch 2, step 2 (update 6): loss_dist = nan, loss_dist_0 = nan' in err[0]
    assert 'loss_cls' not in err[0]  # the label loss stayed finite: only the guilty terms are named
    assert f'the checkpoint of epoch 1 is kept in {out}/last' in err[0]
    state = load_checkpoint(str(out / 'last'), build_student(
        tiny_config(out), 10, pretrained=False))
    assert state['epoch'] == 0 and state['num_updates'] == 4
    assert [r['epoch'] for r in read_jsonl(out / 'log.jsonl')] == [0]
    assert [n for n in os.listdir(out) if n.startswith('.')] == []


def test_nonfinite_loss_in_the_first_epoch_says_there_is_no_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / 'run'
    _nan_on_calls(monkeypatch, {1})
    capsys.readouterr()
    assert main(['train', *TINY, 'progress=true', f'output={out}']) == 2
    err = capsys.readouterr().err
    # the progress bar is erased (a carriage return) before the error: a terminal's last line is the error, whole
    assert re.split('[\r\n]', err.rstrip('\n'))[-1].startswith('stdistill: error: non-finite loss at epoch 1, step 2'), err
    assert 'no epoch finished, so the run has no checkpoint' in err and 'is kept' not in err
    assert not any((out / d).exists() for d in ('last', 'best', 'previous'))


def test_skip_nonfinite_counts_the_skipped_steps(tmp_path, monkeypatch):
    out = tmp_path / 'run'
    _nan_on_calls(monkeypatch, {1, 6})
    summary = train(tiny_config(out, 'skip_nonfinite=true'))
    assert summary['epochs_done'] == 2 and summary['skipped_steps'] == 2
    assert [r['skipped_steps'] for r in read_jsonl(out / 'log.jsonl')] == [1, 1]
    state = json.loads((out / 'last' / 'state.json').read_text())
    assert state['epoch'] == 1
    # skipped steps made no update: 8 batches, 6 updates
    assert load_checkpoint(str(out / 'last'), build_student(
        tiny_config(out), 10, pretrained=False))['num_updates'] == 6
