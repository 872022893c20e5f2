"""A trained student out of its run: `stdistill export` (timm's folder format, ONNX) and
`stdistill predict`, on real images through the command line."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from stdistill.apps.cli import main
from stdistill.apps.export import load_exported, load_run_student
from test_user_faults import PLAIN, one_error_line, write_split


@pytest.fixture(scope='module')
def fashion():
    from stdistill.data.fashion_mnist import FashionMNIST
    return FashionMNIST(split='test')


@pytest.fixture(scope='module')
def folder(tmp_path_factory, fashion):
    data = write_split(tmp_path_factory.mktemp('data'), 'train', {'top': 0, 'trouser': 1, 'bag': 8}, fashion,
                       per_class=16)
    return write_split(data, 'val', {'top': 0, 'trouser': 1, 'bag': 8}, fashion, per_class=6, start=100)


def _images(folder):
    return sorted(str(folder / 'val' / c / f) for c in os.listdir(folder / 'val') for f in os.listdir(folder / 'val' / c))


def _train(folder, out, *extra):
    assert main(['train', *PLAIN, *extra, f'data_dir={folder}', f'output={out}']) == 0
    return out


@pytest.fixture(scope='module')
def std_run(tmp_path_factory, folder):
    """An STD student predicting with the mean of its heads (avg), with an EMA."""
    return _train(folder, tmp_path_factory.mktemp('std') / 'run', 'method=std',
                  'teachers=[{model: resnet10t, pretrained: false}]', 'mine_hidden=32', 'epochs=2',
                  'model_ema=true', 'model_ema_decay=0.9')


def test_predict_agrees_with_eval_on_every_validation_image(std_run, folder, capsys):
    capsys.readouterr()
    assert main(['eval', str(std_run)]) == 0
    top1 = float(re.search(r'top-1 ([\d.]+)', capsys.readouterr().out).group(1))
    images = _images(folder)
    assert main(['predict', str(std_run), *images, '--json', '--top-k', '3']) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r['image'] for r in results] == images
    hits = sum(r['top'][0]['class'] == os.path.basename(os.path.dirname(r['image'])) for r in results)
    assert 100.0 * hits / len(images) == pytest.approx(top1, abs=0.006)  # eval prints 2 decimals
    for r in results:
        probabilities = [t['probability'] for t in r['top']]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1, abs=1e-5)
    # batches of any size (the last one short) predict the same classes
    from stdistill.apps.predict import predict
    chunked = predict(str(std_run), images, top_k=3, batch_size=7)
    assert len(images) % 7 and [[t['class'] for t in r['top']] for r in chunked] == \
        [[t['class'] for t in r['top']] for r in results]
    for a, b in zip(chunked, results):
        assert [t['probability'] for t in a['top']] == pytest.approx([t['probability'] for t in b['top']], abs=1e-5)


def test_token_student_exports_with_its_heads_and_onnx_matches_on_real_images(std_run, folder, tmp_path, capsys):
    out = tmp_path / 'exported'
    assert main(['export', str(std_run), str(out), '--onnx']) == 0
    assert sorted(os.listdir(out)) == ['config.json', 'model.onnx', 'model.safetensors']
    assert 'ONNX matches PyTorch within' in capsys.readouterr().out
    config = json.loads((out / 'config.json').read_text())  # what timm rebuilds the token student from
    assert config['architecture'] == 'std_mixer_t4_28' and config['label_names'] == ['bag', 'top', 'trouser']
    assert config['model_args'] == {'embed_dim': 16, 'num_blocks': 2, 'img_size': 28, 'inference_head': 'avg',
                                    'num_teachers': 1, 'token_positions': [1], 'tokens': 'both', 'token_depth': 1,
                                    'in_chans': 1, 'num_classes': 3}
    run, exported = load_run_student(str(std_run)), load_exported(str(out))
    assert run.classes == exported.classes == ['bag', 'top', 'trouser']
    # real validation images through the run's own evaluation transform
    from stdistill.data.loaders import build_transforms
    from stdistill.training.builders import resolve_norm
    transform = build_transforms(run.cfg, *resolve_norm(run.cfg))[1]
    batch = torch.stack([transform(Image.open(p).convert('L')) for p in _images(folder)])
    with torch.no_grad():
        expected = run.model(batch)
        assert torch.equal(exported.model(batch), expected)
    import onnxruntime
    session = onnxruntime.InferenceSession(str(out / 'model.onnx'), providers=['CPUExecutionProvider'])
    got = session.run(['logits'], {'images': batch.numpy()})[0]
    assert np.abs(got - expected.numpy()).max() < 1e-4


def test_ema_export_holds_the_ema_weights(std_run, tmp_path):
    assert main(['export', str(std_run), str(tmp_path / 'ema'), '--ema']) == 0
    raw, ema = load_run_student(str(std_run)), load_exported(str(tmp_path / 'ema'))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(ema.model(x), load_run_student(str(std_run), ema=True).model(x))
        assert not torch.equal(ema.model(x), raw.model(x))


def test_class_head_export_is_a_timm_folder_timm_loads_without_stdistill(folder, tmp_path, capsys):
    """A timm architecture (gMLP) with method none: the folder loads with timm alone."""
    run = _train(folder, tmp_path / 'run', 'model=gmlp_ti16_224', 'model_kwargs={}', 'img_size=32',
                 'crop_pct=1.0')
    out = tmp_path / 'exported'
    capsys.readouterr()
    assert main(['export', str(run), str(out)]) == 0
    assert 'import stdistill' not in capsys.readouterr().out  # timm knows its own architecture
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'gmlp_ti16_224' and config['label_names'] == ['bag', 'top', 'trouser']
    assert config['pretrained_cfg']['mean'] == [0.5] and config['pretrained_cfg']['input_size'] == [1, 32, 32]
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_run_student(str(run)).model(x)
    torch.save(x, tmp_path / 'x.pt')
    script = (f"import sys, timm, torch; m = timm.create_model('local-dir:{out}', pretrained=True).eval(); "
              f"y = m(torch.load('{tmp_path / 'x.pt'}')); assert 'stdistill' not in sys.modules; "
              f"torch.save(y, '{tmp_path / 'y.pt'}')")
    subprocess.run([sys.executable, '-c', script], check=True, capture_output=True, timeout=300)
    assert torch.allclose(torch.load(tmp_path / 'y.pt'), expected, atol=1e-6)


@pytest.mark.parametrize('case', ['existing output', 'ema without ema', 'missing image', 'not a model folder',
                                  'not an image'])
def test_export_and_predict_refuse_bad_input_in_one_line(folder, std_run, tmp_path, capsys, case):
    plain_run = std_run  # has an EMA; the 'ema without ema' case uses a run without one
    if case == 'existing output':
        (tmp_path / 'taken').mkdir()
        (tmp_path / 'taken' / 'notes.txt').write_text('mine')
        argv, words = ['export', str(plain_run), str(tmp_path / 'taken')], ['exists and is not an empty folder']
    elif case == 'ema without ema':
        run = _train(folder, tmp_path / 'noema')
        argv, words = ['export', str(run), str(tmp_path / 'e'), '--ema'], ['no EMA weights']
    elif case == 'missing image':
        argv, words = ['predict', str(plain_run), str(tmp_path / 'none.png')], ['cannot read image', 'none.png']
    elif case == 'not a model folder':
        argv, words = ['predict', str(tmp_path), _images(folder)[0]], ['neither a run folder nor an exported one']
    else:
        (tmp_path / 'notes.png').write_text('not an image')
        argv, words = ['predict', str(plain_run), str(tmp_path / 'notes.png')], ['cannot read image', 'notes.png']
    capsys.readouterr()
    assert main(argv) == 2
    one_error_line(capsys, *words)
    assert not any(n.startswith('.export.') for n in os.listdir(tmp_path))


@pytest.mark.parametrize('case', ['inside a checkpoint', 'under a file', 'empty name', 'head without tokens',
                                  'config edited', 'state.json missing'])
def test_export_refuses_what_would_go_wrong(folder, tmp_path, capsys, case):
    import shutil
    run = _train(folder, tmp_path / 'run')
    argv = ['export', str(run), str(tmp_path / 'out')]
    if case == 'inside a checkpoint':
        argv[2], words = str(run / 'last' / 'exp'), ['inside the run', 'last/']
    elif case == 'under a file':
        argv[2], words = str(run / 'config.yaml' / 'x'), ['cannot write the export']
    elif case == 'empty name':
        argv[2], words = '', ['give the export a folder']
    elif case == 'head without tokens':
        argv, words = argv + ['--head', 'avg'], ['no distillation tokens']
    elif case == 'config edited':  # predict and export must not use preprocessing the model was not trained with
        text = (run / 'config.yaml').read_text().replace('- 0.5\n', '- 0.2\n', 1)
        (run / 'config.yaml').write_text(text)
        words = ['was trained with mean [0.5]']
    else:
        os.remove(run / 'best' / 'state.json')
        words = ['state.json is missing']
    capsys.readouterr()
    assert main(argv) == 2
    one_error_line(capsys, *words)
    assert not (tmp_path / 'out').exists() and not any(n.startswith('.export.') for n in os.listdir(tmp_path))
    shutil.rmtree(run)


@pytest.mark.parametrize('damage', ['empty config.json', 'class list cut', 'token args edited', 'weights cut',
                                    'head size edited', 'an export before 0.2'])
def test_damaged_exports_are_refused_in_one_line(std_run, folder, tmp_path, capsys, damage):
    token = damage in ('empty config.json', 'class list cut', 'token args edited', 'an export before 0.2')
    out = tmp_path / 'exp'
    assert main(['export', str(std_run), str(out)] + ([] if token else ['--head', 'cls'])) == 0
    words = [str(out)]
    if damage == 'empty config.json':
        (out / 'config.json').write_text('{}')
    elif damage == 'class list cut':
        doc = json.loads((out / 'config.json').read_text())
        doc['label_names'] = doc['label_names'][:2]
        (out / 'config.json').write_text(json.dumps(doc))
    elif damage == 'token args edited':  # another token count does not fit the weights
        doc = json.loads((out / 'config.json').read_text())
        doc['model_args'].update(num_teachers=2, token_positions=[1, 1])
        (out / 'config.json').write_text(json.dumps(doc))
    elif damage == 'an export before 0.2':  # token exports were stdistill.json + weights
        os.remove(out / 'config.json')
        (out / 'stdistill.json').write_text('{}')
        words.append('export the run again')
    elif damage == 'weights cut':
        weights = out / 'model.safetensors'
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        doc = json.loads((out / 'config.json').read_text())
        doc['num_classes'] = 5
        (out / 'config.json').write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(['predict', str(out), _images(folder)[0]]) == 2
    one_error_line(capsys, *words)


def test_a_best_checkpoint_kept_for_its_ema_says_so_without_ema(tmp_path):
    """best/ is kept for whichever of the student's and the EMA weights scored higher: taking the
    student's weights of a checkpoint kept for its EMA gets a note naming --ema."""
    from stdistill.apps.export import ema_hint
    (tmp_path / 'best').mkdir()
    (tmp_path / 'last').mkdir()
    from stdistill.training.checkpoint import split_tensors

    def state_json(state):  # what save_checkpoint writes: the state's skeleton under 'state' (it used to be
        return json.dumps({'state': split_tensors(state)[0]})  # read at the top level, so the note never came)
    state = {'epoch': 3, 'metrics': {'val_top1': 71.5, 'ema_top1': 80.25}}
    (tmp_path / 'best' / 'state.json').write_text(state_json(state))
    (tmp_path / 'last' / 'state.json').write_text(state_json({'history': [{'val_top1': 90.0, 'ema_top1': 85.0}]}))
    assert ema_hint(str(tmp_path)) == (f'note: {tmp_path}/best was scored top-1 80.25 with its EMA weights and 71.50 '
                                       'with the student\'s, which these are: add --ema to take the EMA weights')
    assert ema_hint(str(tmp_path), ema=True) is None
    assert ema_hint(str(tmp_path), 'last') is None  # the student's weights scored higher there
    (tmp_path / 'best' / 'state.json').write_text(state_json({'metrics': {'val_top1': 71.5}}))  # no EMA
    assert ema_hint(str(tmp_path)) is None


def test_a_small_student_export_says_timm_needs_stdistill_imported(std_run, tmp_path, capsys):
    """mixer_t4_28 is registered by stdistill: its class-head folder loads in timm after the import."""
    capsys.readouterr()
    assert main(['export', str(std_run), str(tmp_path / 'cls'), '--head', 'cls']) == 0
    assert f"`import stdistill, timm; model = timm.create_model('local-dir:{tmp_path / 'cls'}', pretrained=True)" \
        f".eval()`" in capsys.readouterr().out


def test_an_export_stopped_by_sigterm_leaves_nothing(std_run, tmp_path):
    """`kill` and `timeout` send SIGTERM: the partial export folder is removed, as on Ctrl-C."""
    import signal
    import time
    out = tmp_path / 'exports' / 'stopped'
    proc = subprocess.Popen([sys.executable, '-m', 'stdistill', 'export', str(std_run), str(out), '--onnx'],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.parent.is_dir() and any(n.startswith('.export.') for n in os.listdir(out.parent))):
        assert proc.poll() is None and time.monotonic() < deadline, 'the export ended before it was stopped'
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    assert 'stdistill: interrupted' in proc.stderr.read()
    assert not out.parent.exists()  # nor the parent folder the export made (or its lock file)


def test_an_ema_export_of_another_head_names_the_command_that_scores_it(std_run, tmp_path, capsys):
    """Each head's top-1 is recorded for the student's weights only: the export of the EMA's class head
    says so, with the command that scores it, which runs as printed (stdistill.utils.hints)."""
    import shlex
    capsys.readouterr()
    assert main(['export', str(std_run), str(tmp_path / 'ema_cls'), '--ema', '--head', 'cls']) == 0
    out = capsys.readouterr().out
    hint = re.search(r'not recorded .*: score it with `([^`]+)`', out).group(1)
    assert hint == f'stdistill eval --which best --ema {std_run} inference_head=cls'
    assert main(shlex.split(hint)[1:]) == 0
    assert re.search(r'\(EMA weights\): top-1 [\d.]+', capsys.readouterr().out)


def test_predict_with_timm_example_says_what_timm_alone_cannot_load(std_run, folder, tmp_path):
    """examples/predict_with_timm.py, which users copy: a token-head export (std_mixer_t4_28) and a
    student stdistill registers (mixer_t4_28) are one line and exit 2, not a traceback (issue 28, case 6)."""
    example = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'examples',
                           'predict_with_timm.py')
    assert main(['export', str(std_run), str(tmp_path / 'tokens')]) == 0
    assert main(['export', str(std_run), str(tmp_path / 'cls'), '--head', 'cls']) == 0
    image = _images(folder)[0]
    for target, words in ((tmp_path / 'tokens', 'std_mixer_t4_28, which timm knows only once stdistill is imported'),
                          (tmp_path / 'cls', 'mixer_t4_28, which timm knows only once stdistill is imported'),
                          (tmp_path / 'nowhere', 'is not a folder')):
        done = subprocess.run([sys.executable, example, str(target), image], capture_output=True, text=True,
                              timeout=300)
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(err) == 1 and words in err[0], done.stderr
