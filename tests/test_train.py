"""Training runs on real Fashion-MNIST images, tiny enough for a test: outputs, exact resume, eval."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from stdistill.apps.cli import main
from stdistill.config import load_config
from stdistill.training.train import train

# A 2-block, 16-wide Mixer and a random ResNet teacher: seconds per epoch, every code path on.
TINY = ['dataset=fashion-mnist', 'img_size=28', 'in_chans=1', 'batch_size=32', 'workers=0',
        'train_samples=128', 'val_samples=96', 'aa=null', 'scale=[0.7,1.0]', 'reprob=0.25', 'mixup=0.8',
        'cutmix=1.0', 'repeated_aug=false', 'crop_pct=1.0', 'model=mixer_t4_28',
        'model_kwargs={embed_dim: 16, num_blocks: 2}', 'drop_path=0.1', 'method=std',
        'teachers=[{model: resnet10t, pretrained: false}]',
        'mine_hidden=32', 'epochs=2', 'warmup_epochs=1', 'lr=0.003', 'model_ema=true', 'model_ema_decay=0.9',
        'progress=false', 'log_interval=1']


def tiny_config(output, *extra):
    return load_config(None, [*TINY, f'output={output}', *extra])


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_run_folder_holds_everything(tmp_path):
    out = tmp_path / 'run'
    summary = train(tiny_config(out))
    assert sorted(os.listdir(out)) == ['best', 'class_map.txt', 'config.yaml', 'curves.png', 'last', 'log.jsonl',
                                       'mi.png', 'previous', 'summary.json', 'tb']
    assert sorted(os.listdir(out / 'last')) == ['model.safetensors', 'model_ema.safetensors', 'state.json',
                                                'state.safetensors']
    rows = read_jsonl(out / 'log.jsonl')
    assert [r['epoch'] for r in rows] == [0, 1]
    for key in ('loss', 'loss_cls', 'loss_dist', 'loss_dist_0', 'teacher_weight_0', 'mi_estimate', 'lr',
                'val_top1', 'val_top5', 'val_top1_cls', 'val_top1_dist', 'val_top1_avg', 'ema_top1'):
        assert key in rows[0], key
    assert rows[0]['val_images'] == 96
    assert os.listdir(out / 'tb') and summary['epochs_done'] == 2
    # the saved config is complete: the class count read from the data is written into it
    assert load_config(str(out / 'config.yaml')).num_classes == 10
    # the weights are a plain student state dict: backbone.* and token_pairs.*
    weights = load_file(str(out / 'last' / 'model.safetensors'))
    assert any(k.startswith('token_pairs.0.') for k in weights) and 'backbone.head.weight' in weights


def test_resume_is_exact(tmp_path):
    straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
    train(tiny_config(straight, 'workers=1'))
    assert main(['train', *TINY, 'workers=1', f'output={stopped}', '--stop-after', '1']) == 0
    assert read_jsonl(stopped / 'log.jsonl')[-1]['epoch'] == 0
    assert main(['train', '--resume', str(stopped)]) == 0
    a, b = (load_file(str(p / 'last' / 'model.safetensors')) for p in (straight, stopped))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # optimizer moments, EMA and MINE's statistics networks too
    sa, sb = (load_file(str(p / 'last' / 'state.safetensors')) for p in (straight, stopped))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith('state.rng'))
    timing = ('epoch_s', 'train_img_per_s')
    logged = [[{k: v for k, v in row.items() if k not in timing} for row in read_jsonl(p / 'log.jsonl')]
              for p in (straight, stopped)]
    assert logged[0] == logged[1]


def test_resume_changes_something_when_it_should_not_match(tmp_path):
    """The exactness test can fail: another seed gives other weights."""
    a, b = tmp_path / 'a', tmp_path / 'b'
    train(tiny_config(a, 'epochs=1'))
    train(tiny_config(b, 'epochs=1', 'seed=1'))
    wa, wb = (load_file(str(p / 'last' / 'model.safetensors')) for p in (a, b))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_eval_reproduces_the_runs_accuracy(tmp_path, capsys):
    out = tmp_path / 'run'
    summary = train(tiny_config(out, 'epochs=1', 'model_ema=false'))
    capsys.readouterr()
    assert main(['eval', str(out), '--which', 'last']) == 0
    printed = capsys.readouterr().out
    assert f'top-1 {summary["final"]["val_top1"]:.2f}' in printed and 'on 96 images' in printed
    assert 'cls head' in printed and 'dist head' in printed


@pytest.mark.parametrize('method, extra', [('none', ['teachers=[]']), ('kd', []), ('deit', []),
                                           ('std', ['tokens=spatial', 'teacher_weighting=uniform', 'distill=soft']),
                                           ('std', ['teachers=[{model: resnet10t, pretrained: false},'
                                                    ' {model: resnet10t, pretrained: false, token_position: 0}]',
                                                    'inference_head=cls'])])
def test_every_method_trains(tmp_path, method, extra):
    summary = train(tiny_config(tmp_path / 'run', 'epochs=1', 'model_ema=false', f'method={method}', *extra))
    final = summary['final']
    assert final['loss'] > 0 and 0 <= final['val_top1'] <= 100
    if method in ('kd', 'deit', 'std'):
        assert 'loss_dist' in final
    if len(extra) > 1 and 'inference_head=cls' in extra[1:]:
        assert 'teacher_weight_1' in final and final['val_top1'] == final['val_top1_cls']


def test_existing_run_is_not_overwritten(tmp_path):
    out = tmp_path / 'run'
    train(tiny_config(out, 'epochs=1', 'model_ema=false'))
    with pytest.raises(ValueError, match='already holds a run'):
        train(tiny_config(out, 'epochs=1', 'model_ema=false'))
