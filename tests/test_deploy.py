"""What a user deploys (issue 37): every head of a token student (cls, dist, avg, auto) exported and
loaded by timm exactly as `stdistill export` prints it, predicting the top-5 `stdistill predict`
does on real images; the head table; inference_head auto and its holdout; cls_distill; the fold."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from PIL import Image

from stdistill.apps.cli import main
from stdistill.apps.export import load_run_student
from test_export import _images, folder, fashion  # noqa: F401 (fixtures: real Fashion-MNIST images in a folder)
from test_user_faults import PLAIN, one_error_line

STD = ['method=std', 'teachers=[{model: resnet10t, pretrained: false}]', 'mine=false', 'epochs=2']
HEADS = ('cls', 'dist', 'avg')


def _train(folder, out, *extra):
    assert main(['train', *PLAIN, *STD, *extra, f'data_dir={folder}', f'output={out}']) == 0
    return out


@pytest.fixture(scope='module')
def auto_run(tmp_path_factory, folder):
    """An STD student whose head is chosen on 9 of its 48 training images (inference_head auto)."""
    return _train(folder, tmp_path_factory.mktemp('auto') / 'run', 'inference_head=auto', 'holdout=9')


def _best_metrics(run):
    from stdistill.apps.export import recorded_metrics
    return recorded_metrics(str(run / 'best'))


def _printed(out: str, before: str) -> str:
    """The command or code line the CLI printed after `before`, between backquotes."""
    return re.search(re.escape(before) + r' `([^`]+)`', out).group(1)


PREDICT = """
from timm.data import create_transform, resolve_data_config
from PIL import Image
import json, sys
transform = create_transform(**resolve_data_config(model=model))
mode = 'L' if model.pretrained_cfg['input_size'][0] == 1 else 'RGB'
names = model.pretrained_cfg['label_names']
top = []
with torch.no_grad():
    for path in sys.argv[1:]:
        p = model(transform(Image.open(path).convert(mode)).unsqueeze(0)).softmax(1)[0]
        top.append([names[i] for i in p.topk(min(5, len(names))).indices.tolist()])
print(json.dumps(top))
"""


@pytest.mark.parametrize('head', ['cls', 'dist', 'avg', 'auto'])
def test_each_head_exported_loads_in_timm_as_printed_and_predicts_as_stdistill_predict(auto_run, folder, tmp_path,
                                                                                        capsys, head):
    out = tmp_path / f'export_{head}'
    capsys.readouterr()
    assert main(['export', str(auto_run), str(out), '--head', head]) == 0
    printed = capsys.readouterr().out
    load = _printed(printed, 'load it with')
    chosen = _best_metrics(auto_run)['inference_head']
    exported_head = chosen if head == 'auto' else head
    config = json.loads((out / 'config.json').read_text())
    if exported_head == 'cls':  # an STD student's class head is its plain backbone
        assert config['architecture'] == 'mixer_t4_28' and 'inference_head' not in config.get('model_args', {})
    else:
        assert config['architecture'] == 'std_mixer_t4_28'
        assert config['model_args']['inference_head'] == exported_head
    images = _images(folder)
    # the load line, run as printed in a fresh process, then timm's own preprocessing of the export
    script = f'import torch\n{load}\n{PREDICT}'
    done = subprocess.run([sys.executable, '-c', script, *images], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    timm_top5 = json.loads(done.stdout)
    assert main(['predict', str(out), *images, '--json', '--top-k', '5']) == 0
    ours = [[t['class'] for t in r['top']] for r in json.loads(capsys.readouterr().out)]
    assert timm_top5 == ours
    # and the export is the run's student predicting with that head, logit for logit
    from stdistill.apps.export import load_exported
    run, exported = load_run_student(str(auto_run), head=head), load_exported(str(out))
    batch = torch.stack([exported_transform(exported, p) for p in images])
    with torch.no_grad():
        assert torch.equal(exported.model(batch), run.model(batch))
    # the table: every head's recorded top-1, the exported one marked
    metrics = _best_metrics(auto_run)
    for h in HEADS:
        line = next(line for line in printed.splitlines() if line.startswith(f'{h} '))
        assert f'{metrics[f"val_top1_{h}"]:.2f} (' in line
        assert ('<- this one' in line) == (h == exported_head)


def exported_transform(loaded, path):
    from stdistill.training.builders import resolve_norm
    from stdistill.data.loaders import build_transforms
    return build_transforms(loaded.cfg, *resolve_norm(loaded.cfg))[1](Image.open(path).convert('L'))


def test_a_token_student_loads_from_a_file_with_its_model_args(auto_run, tmp_path):
    """timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=...)): the export's
    weights file and model_args rebuild the same model as its folder (docs/export.md)."""
    import timm
    import stdistill  # noqa: F401
    out = tmp_path / 'dist'
    assert main(['export', str(auto_run), str(out), '--head', 'dist']) == 0
    config = json.loads((out / 'config.json').read_text())
    by_file = timm.create_model(config['architecture'], pretrained=True,
                                pretrained_cfg_overlay=dict(file=str(out / 'model.safetensors')),
                                **config['model_args']).eval()
    by_folder = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(by_file(x), by_folder(x))
    # a backbone's weights alone (timm's release of the base model, say) load into the backbone
    backbone = by_folder.backbone.state_dict()
    torch.save(backbone, tmp_path / 'backbone.pth')
    args = {k: v for k, v in config['model_args'].items() if k != 'num_classes'}  # read from the file
    fresh = timm.create_model('std_mixer_t4_28', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'backbone.pth')), **args)
    assert fresh.num_classes == 3 and all(torch.equal(v, backbone[k]) for k, v in fresh.backbone.state_dict().items())
    # another class count (fine-tuning on another label set): every head starts again, the rest loads
    other = timm.create_model(f'local-dir:{out}', pretrained=True, num_classes=7)
    assert other.num_classes == 7 and other.token_pairs[0].head.out_features == 7
    assert torch.equal(other.backbone.stem.proj.weight, by_folder.backbone.stem.proj.weight)


def test_auto_chooses_on_the_holdout_records_the_choice_and_eval_uses_it(auto_run, capsys):
    metrics = _best_metrics(auto_run)
    held = {h: metrics[f'holdout_top1_{h}'] for h in HEADS}
    from stdistill.models.students import choose_head
    assert metrics['inference_head'] == choose_head(held) and metrics['holdout_images'] == 9
    assert metrics['val_top1'] == metrics[f'val_top1_{metrics["inference_head"]}']
    capsys.readouterr()
    assert main(['eval', str(auto_run)]) == 0
    assert f'top-1 {metrics["val_top1"]:.2f}' in capsys.readouterr().out
    # the holdout images are training images the run never trained on
    log = [json.loads(line) for line in open(auto_run / 'log.jsonl')]
    assert all(r['holdout_images'] == 9 for r in log)


def test_choose_head_prefers_the_cheaper_head_on_a_tie():
    from stdistill.models.students import choose_head
    assert choose_head({'cls': 70.0, 'dist': 70.0, 'avg': 70.0}) == 'cls'
    assert choose_head({'cls': 60.0, 'dist': 71.0, 'avg': 71.0}) == 'avg'
    assert choose_head({'cls': 60.0, 'dist': 72.0, 'avg': 71.0}) == 'dist'


def test_the_holdout_leaves_the_training_images_of_a_run_without_one():
    """With train_samples + holdout within the split, the training subset is the one a run without
    a holdout trains on (so the study's auto rows train exactly as their avg rows); the two are
    disjoint; a split too small for both is one line."""
    from stdistill.utils.errors import UserError
    from stdistill.data.loaders import split_holdout
    data = list(range(100))
    plain, none = split_holdout(data, 60, 0, seed=3)
    train, held = split_holdout(data, 60, 25, seed=3)
    assert none is None and train.indices == plain.indices and len(held) == 25
    assert not set(train.indices) & set(held.indices)
    everything, held = split_holdout(data, 0, 10, seed=3)  # train_samples 0: all but the holdout
    assert len(everything) == 90 and not set(everything.indices) & set(held.indices)
    with pytest.raises(UserError, match='too few for both'):
        split_holdout(data, 95, 10, seed=3)


@pytest.mark.parametrize('overrides, words', [
    (['inference_head=auto'], ['set holdout']),
    (['holdout=5'], ['holdout 5', 'inference_head=auto']),
    (['method=none', 'teachers=[]', 'inference_head=auto', 'holdout=5'], ['method none trains its class head alone']),
    (['method=kd', 'cls_distill=true'], ['kd already distils into the class head']),
    (['method=none', 'teachers=[]', 'cls_distill=true'], ['method none has none']),
    (['inference_head=auto', 'holdout=48'], ['too few for both']),
])
def test_head_choice_keys_are_refused_in_one_line(folder, tmp_path, capsys, overrides, words):
    capsys.readouterr()
    assert main(['train', *PLAIN, *STD, *overrides, f'data_dir={folder}', f'output={tmp_path / "r"}']) == 2
    one_error_line(capsys, *words)
    assert not (tmp_path / 'r').exists()


def test_cls_distill_teaches_the_class_head_from_the_teachers():
    """cls_distill adds alpha * tau^2 KL(teacher || class head), confidence weighted: the class head's
    gradient then depends on the teacher's logits; without it, it does not."""
    from stdistill.method.losses import DistillationLoss
    from stdistill.models.students import STDOutput
    torch.manual_seed(0)
    logits = torch.randn(4, 5, requires_grad=True)
    out = STDOutput(logits, [torch.randn(4, 5)], [None], [None])
    targets = torch.tensor([0, 1, 2, 3])
    grads = {}
    for cls_distill in (False, True):
        for teacher in (torch.randn(4, 5), torch.randn(4, 5) * 3):
            logits.grad = None
            loss = DistillationLoss(alpha=0.5, cls_distill=cls_distill)(out, targets, [teacher])
            loss.total.backward()
            grads.setdefault(cls_distill, []).append(logits.grad.clone())
            assert ('loss_cls_kd' in loss.terms) == cls_distill
    assert torch.equal(grads[False][0], grads[False][1]) and not torch.equal(grads[True][0], grads[True][1])


def test_a_token_student_as_a_teacher_is_built_as_recorded_with_its_head(auto_run):
    from stdistill.utils.errors import UserError
    from stdistill.method.teachers import create_teacher
    path = str(auto_run / 'best' / 'model.safetensors')
    teacher = create_teacher('std_mixer_t4_28', num_classes=3, checkpoint=path)
    run = load_run_student(str(auto_run))
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert teacher.model.inference_head == _best_metrics(auto_run)['inference_head']
        assert torch.allclose(teacher(x), run.model(x), atol=1e-5)
    with pytest.raises(UserError, match='trained with token_positions'):
        create_teacher('std_mixer_t4_28', num_classes=3, checkpoint=path, token_positions=[0])


def test_train_ends_with_the_head_table_and_its_commands_run_as_printed(folder, tmp_path, capsys):
    """The run's last lines: the table of its heads, the export of its best other head and the fold,
    each run as printed; the fold's own last lines print its export, run as printed too."""
    capsys.readouterr()
    run = _train(folder, tmp_path / 'run')
    out = capsys.readouterr().out
    assert re.search(r'^head +validation top-1', out, re.M) and re.search(r'^avg .*<- this one', out, re.M)
    export = _printed(out, 'head with')
    fold = _printed(out, 'a tokenless student taught by this one:')
    assert fold == f'stdistill fold {run}'
    assert main(shlex.split(export)[1:]) == 0
    capsys.readouterr()
    assert main([*shlex.split(fold)[1:], 'epochs=1']) == 0  # epochs shortened: the command's own run is the test
    out = capsys.readouterr().out
    assert re.search(rf'folded from {re.escape(str(run))}, best top-1', out)
    assert re.search(r'^cls .*<- this one', out, re.M)  # a plain student: one head
    export = _printed(out, 'export it with')
    assert main(shlex.split(export)[1:]) == 0
    config = json.loads((tmp_path / 'run_fold_export' / 'config.json').read_text())
    assert config['architecture'] == 'mixer_t4_28'  # the plain backbone: no token in it
    with open(tmp_path / 'run_fold' / 'config.yaml') as f:
        text = f.read()
    assert 'method: kd' in text and 'std_mixer_t4_28' in text and 'teacher_outputs:' in text


def test_fold_refuses_what_has_nothing_to_fold(folder, tmp_path, capsys):
    run = tmp_path / 'plain'
    assert main(['train', *PLAIN, f'data_dir={folder}', f'output={run}']) == 0
    capsys.readouterr()
    assert main(['fold', str(run)]) == 2
    one_error_line(capsys, 'already the plain backbone')
    assert main(['fold', str(tmp_path / 'nowhere')]) == 2
    one_error_line(capsys, 'not a run folder')
    assert main(['export', str(run), str(tmp_path / 'x'), '--head', 'auto']) == 2  # nothing to choose among
    one_error_line(capsys, 'no distillation tokens')


@pytest.mark.parametrize('overrides, words', [
    (['method=std'], ['method is what the fold is']),
    (['teachers=[{model: resnet10t, pretrained: false}]'], ['teachers is what the fold is']),
    (['inference_head=avg'], ['inference_head is what the fold is']),
    (['output=RUN/best'], ['is inside the run']),
])
def test_fold_refuses_overrides_that_would_make_it_something_else(auto_run, tmp_path, capsys, overrides, words):
    capsys.readouterr()
    assert main(['fold', str(auto_run), *[o.replace('RUN', str(auto_run)) for o in overrides]]) == 2
    one_error_line(capsys, *words)
    assert not any(n in os.listdir(auto_run / 'best') for n in ('config.yaml', 'log.jsonl', 'teacher_outputs'))


def test_an_auto_run_is_scored_with_any_head_and_auto_needs_a_choice(auto_run, folder, tmp_path, capsys):
    """eval of an auto run with another head needs no holdout=0; auto on a run that chose nothing is
    refused; too small a holdout is said at setup."""
    metrics = _best_metrics(auto_run)
    capsys.readouterr()
    assert main(['eval', str(auto_run), 'inference_head=dist']) == 0
    assert f'top-1 {metrics["val_top1_dist"]:.2f}' in capsys.readouterr().out
    avg_run = _train(folder, tmp_path / 'avg', 'epochs=1')
    capsys.readouterr()
    assert main(['eval', str(avg_run), 'inference_head=auto']) == 2
    one_error_line(capsys, 'records no head chosen by inference_head auto')
    _train(folder, tmp_path / 'few', 'epochs=1', 'inference_head=auto', 'holdout=5')
    assert 'holdout 5: inference_head auto chooses among heads whose top-1 on so few images' in capsys.readouterr().err


def test_a_deit_token_student_exports_every_head_as_a_timm_model(folder, tmp_path, capsys):
    run = tmp_path / 'deit'
    assert main(['train', *PLAIN, 'method=deit', 'teachers=[{model: resnet10t, pretrained: false}]', 'epochs=1',
                 f'data_dir={folder}', f'output={run}']) == 0
    import timm
    from stdistill.apps.export import load_exported
    batch = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for head in HEADS:
        out = tmp_path / head
        assert main(['export', str(run), str(out), '--head', head]) == 0
        config = json.loads((out / 'config.json').read_text())
        assert config['architecture'] == 'deit_mixer_t4_28' and config['model_args']['inference_head'] == head
        with torch.no_grad():
            assert torch.equal(timm.create_model(f'local-dir:{out}', pretrained=True).eval()(batch),
                               load_run_student(str(run), head=head).model(batch))
            assert torch.equal(load_exported(str(out)).model(batch), load_run_student(str(run), head=head).model(batch))


def test_the_export_pages_python_blocks_run_as_written(tmp_path):
    """docs/export.md's Python blocks, each in a fresh process, as written, in a folder holding the
    `exported/` they name: a dist export of a std_mixer_t4_32 student (RGB 32x32, real images)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, os.path.join(root, 'examples', 'make_fashion_folder.py'), str(tmp_path / 'data'),
                    '--train', '60', '--val', '30'], check=True, capture_output=True, timeout=300)
    run = tmp_path / 'run'
    assert main(['train', '--config', os.path.join(root, 'recipes', 'folder', 'std.yaml'), f'data_dir={tmp_path / "data"}',
                 'epochs=1', 'teachers=[{model: resnet10t, pretrained: false}]', 'mine=false', 'workers=0',
                 'progress=false', 'model_kwargs={embed_dim: 16, num_blocks: 2}', f'output={run}']) == 0
    with open(os.path.join(root, 'docs', 'export.md')) as f:
        blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
    assert len(blocks) == 2 and all("'exported/" in b or "'local-dir:exported/" in b for b in blocks)
    # the export's labels and preprocessing reach timm's transform, whichever way it is loaded
    check = ("\nassert model.num_classes == 3 and model.pretrained_cfg['label_names'] == ['bag', 'boot', 'shirt']"
             "\nassert 'mean=tensor([0.5000, 0.5000, 0.5000])' in str(transform) and 'Resize(size=32' in str(transform)"
             "\nimport torch\nprint(model(torch.zeros(1, 3, 32, 32)).tolist())\n")
    for head in ('dist', 'cls'):  # a token student, and the plain backbone (timm's default cfg has 10 classes)
        assert main(['export', str(run), str(tmp_path / head / 'exported'), '--head', head]) == 0
        outputs = []
        for block in blocks:
            done = subprocess.run([sys.executable, '-c', block + check], cwd=tmp_path / head, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout)
        assert outputs[0] == outputs[1]  # the folder and the file give the same model


def test_a_student_built_at_another_size_than_its_cfg_folds_and_exports_at_that_size(folder, tmp_path, capsys):
    """A Mixer-S/16 trained at 64 px (its cfg says 224): as the fold's teacher it sees 64 px inputs,
    and its token export records 64 px (the new-user trial's case; the README's Mixer-S/16 walk)."""
    run = tmp_path / 's16'
    assert main(['train', *PLAIN, *STD, 'model=mixer_s16_224', 'img_size=64', 'epochs=1',
                 "model_kwargs={mlp_ratio: [0.25, 0.25]}", f'data_dir={folder}', f'output={run}']) == 0
    assert main(['fold', str(run), 'epochs=1']) == 0
    assert main(['export', str(run), str(tmp_path / 'exp'), '--head', 'dist']) == 0
    config = json.loads((tmp_path / 'exp' / 'config.json').read_text())
    assert config['pretrained_cfg']['input_size'] == [1, 64, 64] and config['model_args']['img_size'] == 64
