"""The README's "Your own data" section, run command by command as a new user would: a real
second dataset (scikit-learn's digits as a PNG folder), teacher, plain and STD students, eval,
export, a timm load of the export, and predictions for real images."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    text = open(os.path.join(ROOT, 'README.md')).read()
    section = text.split('\n## Your own data\n', 1)[1].split('\n## ', 1)[0]
    block = re.search(r'```bash\n(.*?)```', section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_your_own_data_section_runs_as_written(tmp_path):
    for name in ('recipes', 'examples'):  # the commands use paths relative to a checkout
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
    outputs = []
    for command in readme_commands():
        result = subprocess.run(['bash', '-c', command], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f'{command}\n{result.stderr[-2000:]}'
        outputs.append(result.stdout)
    runs = tmp_path / 'runs' / 'digits'
    summaries = {name: json.loads((runs / name / 'summary.json').read_text()) for name in ('teacher', 'plain', 'std')}
    for name, summary in summaries.items():  # 10 classes: chance is 10%
        assert summary['final']['val_top1'] > 60, (name, summary['final']['val_top1'])
        assert summary['data'][0].startswith('train: 1437 images in 10 classes')
    # the STD run's teacher sees the normalisation its own checkpoint records
    assert summaries['std']['teacher_inputs'] == [
        'teachers.0 (resnet18) sees 3 channel(s), any size, mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)']
    assert sorted(os.listdir(tmp_path / 'exported' / 'digits')) == ['model.onnx', 'model.safetensors',
                                                                     'stdistill.json']
    assert sorted(os.listdir(tmp_path / 'exported' / 'digits_timm')) == ['config.json', 'model.safetensors']
    assert outputs[-1].strip() == "MlpMixer ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']"
    predictions = outputs[-3].strip().splitlines()
    assert [p.split(':')[0] for p in predictions] == ['data/digits/validation/0/0000.png',
                                                      'data/digits/validation/3/0045.png',
                                                      'data/digits/validation/7/0240.png']
    assert all(len(p.split(': ')[1].split(', ')) == 5 for p in predictions)  # top-5 with probabilities
    # the exported student predicts as the run evaluated: most of these three right
    assert sum(p.split(': ')[1].split(' ')[0] == p.split('/')[-2] for p in predictions) >= 2, predictions
