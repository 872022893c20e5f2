"""The own-data walkthrough, run command by command as a new user would: a real second dataset
(scikit-learn's digits as a PNG folder), teacher, plain and STD students, eval, export,
predictions for real images, and a student of a timm architecture exported to a folder that timm
loads and predicts with alone. The manual's page (docs/own-data.md) runs as written; the README's
"Your own data" section must hold the same commands, so one run checks both."""
import json
import os
import re
import subprocess
import sys

import pytest
import shell

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bash_commands(text):
    """The commands of every ```bash block of `text`, in order, blank lines left out."""
    return [line for block in re.findall(r'```bash\n(.*?)```', text, re.S) for line in block.splitlines()
            if line.strip()]


def readme_commands():
    with open(os.path.join(ROOT, 'README.md')) as f:
        text = f.read()
    return bash_commands(text.split('\n## Your own data\n', 1)[1].split('\n## ', 1)[0])


def walkthrough_commands():
    with open(os.path.join(ROOT, 'docs', 'own-data.md')) as f:
        return bash_commands(f.read())


def test_readme_holds_the_walkthrough_of_the_manual():
    assert readme_commands(), 'the README has no ```bash block under "## Your own data"'
    assert readme_commands() == walkthrough_commands()


@pytest.mark.slow  # minutes of training
def test_your_own_data_section_runs_as_written(tmp_path):
    for name in ('recipes', 'examples'):  # the commands use paths relative to a checkout
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = shell.ENV  # the installed `stdistill` first on PATH
    commands, outputs = walkthrough_commands(), []
    for command in commands:
        result = shell.run(command, tmp_path)  # stdistill commands in this process, the others in bash
        assert result.returncode == 0, f'{command}\n{result.stderr[-2000:]}'
        outputs.append(result.stdout)
    runs = tmp_path / 'runs' / 'digits'
    names = ('teacher', 'plain', 'std', 'std_s16')
    summaries = {name: json.loads((runs / name / 'summary.json').read_text()) for name in names}
    for name, summary in summaries.items():  # 10 classes: chance is 10%
        assert summary['final']['val_top1'] > 60, (name, summary['final']['val_top1'])
        assert summary['data'][0].startswith('train: 1437 images in 10 classes')
    # the STD runs' teacher sees the normalisation and size its own checkpoint records
    assert summaries['std']['teacher_inputs'] == [
        'teachers.0 (resnet18) sees 3 channel(s), 32x32, mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)']
    assert summaries['std_s16']['teacher_inputs'] == [
        'teachers.0 (resnet18) sees 3 channel(s), 32x32, mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5) '
        '(adapted from the student batch)']
    assert sorted(os.listdir(tmp_path / 'exported' / 'digits')) == ['config.json', 'model.onnx', 'model.safetensors']
    token = json.loads((tmp_path / 'exported' / 'digits' / 'config.json').read_text())  # the avg head: a timm model
    assert token['architecture'] == 'std_mixer_t4_32' and token['model_args']['inference_head'] == 'avg'
    assert sorted(os.listdir(tmp_path / 'exported' / 'digits_timm')) == ['config.json', 'model.safetensors']
    config = json.loads((tmp_path / 'exported' / 'digits_timm' / 'config.json').read_text())
    assert config['architecture'] == 'mixer_s16_224' and config['pretrained_cfg']['input_size'] == [3, 64, 64]
    images = ['data/digits/validation/0/0000.png', 'data/digits/validation/3/0045.png',
              'data/digits/validation/7/0240.png']
    by_command = dict(zip(commands, outputs))
    ours_first = next(out for command, out in by_command.items() if command.startswith('stdistill predict'))
    for predictions in (ours_first.strip().splitlines(), outputs[-1].strip().splitlines()):
        assert [p.split(':')[0] for p in predictions] == images
        assert all(len(p.split(': ')[1].split(', ')) == 5 for p in predictions)  # top-5 with probabilities
        # the exported students predict as their runs evaluated: most of these three right
        assert sum(p.split(': ')[1].split(' ')[0] == p.split('/')[-2] for p in predictions) >= 2, predictions
    # timm alone: the example never imports stdistill, and predicts what `stdistill predict` does
    script = ("import runpy, sys; sys.argv = ['predict_with_timm.py', 'exported/digits_timm', *sys.argv[1:]]; "
              "runpy.run_path('examples/predict_with_timm.py', run_name='__main__'); "
              "assert 'stdistill' not in sys.modules, 'stdistill was imported'")
    alone = subprocess.run([sys.executable, '-c', script, *images], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    ours = subprocess.run(['stdistill', 'predict', 'exported/digits_timm', *images], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert alone.stdout == outputs[-1] == ours.stdout, (alone.stdout, ours.stdout)
