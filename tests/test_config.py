import dataclasses

import pytest
import yaml

from stdistill.apps.cli import main
from stdistill.config import TrainConfig, load_config, save_config


def write(tmp_path, text, name='r.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_yaml_and_overrides_in_that_order(tmp_path):
    path = write(tmp_path, 'epochs: 7\nlr: 0.001\nteachers:\n  - model: resnet50d\n    token_position: 3\n')
    cfg = load_config(path, ['epochs=9', 'mine=false', 'scale=[0.5, 1]', 'teachers.0.checkpoint=/x.safetensors',
                             'teachers.1.model=resnet101d', 'model_kwargs.embed_dim=64'])
    assert cfg.epochs == 9 and cfg.lr == 0.001 and cfg.mine is False and cfg.scale == [0.5, 1.0]
    assert cfg.weight_decay == TrainConfig().weight_decay  # untouched keys keep the defaults
    assert cfg.teachers[0] == {'model': 'resnet50d', 'checkpoint': '/x.safetensors', 'pretrained': None,
                               'token_position': 3, 'kwargs': {}, 'use_ema': False, 'mean': None, 'std': None, 'img_size': None,
                               'interpolation': None}
    assert cfg.teachers[1]['model'] == 'resnet101d' and cfg.teachers[1]['token_position'] == -1
    assert cfg.model_kwargs == {'embed_dim': 64}


def test_saved_config_reloads_to_the_same(tmp_path):
    cfg = load_config(None, ['teachers=[resnet18]', 'epochs=3'])
    save_config(cfg, str(tmp_path / 'c.yaml'))
    assert load_config(str(tmp_path / 'c.yaml')) == cfg


@pytest.mark.parametrize('text, overrides, message', [
    ('epcohs: 3\n', [], "unknown config key 'epcohs'; did you mean epochs?"),
    ('', ['lerning_rate=1'], "unknown config key 'lerning_rate'"),
    ('', ['teachers.0.modle=x'], 'teachers.0.modle'),
    ('epochs: three\n', [], 'config key epochs must be int'),
    ('method: distill\n', [], 'method must be one of none, kd, deit, std'),
    ('teachers:\n  - token_position: 1\n', [], 'teachers.0 must be a mapping with at least a model name'),
    ('- 1\n- 2\n', [], 'must be a YAML mapping'),
    ('', ['epochs'], "override 'epochs' must be key=value"),
    ('', ['scale=[0.5]'], 'config key scale must be two area fractions [min, max] with 0 < min <= max <= 1'),
    ('', ['scale=[1.0,0.5]'], 'config key scale must be two area fractions'),
    ('', ['ratio=[1]'], 'config key ratio must be two aspect ratios [min, max]'),
    ('', ['ratio=[0,1]'], 'config key ratio must be two aspect ratios'),
])
def test_bad_config_is_one_clear_error(tmp_path, text, overrides, message):
    with pytest.raises(ValueError) as info:
        load_config(write(tmp_path, text), overrides)
    assert message in str(info.value) and '\n' not in str(info.value)


def test_train_help_lists_every_key(capsys):
    with pytest.raises(SystemExit):
        main(['train', '--help'])
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert f'\n  {f.name} ' in out


def test_recipe_files_are_plain_yaml_mappings():
    import glob
    paths = glob.glob('recipes/**/*.yaml', recursive=True)
    assert len(paths) >= 19
    for path in paths:
        with open(path) as f:
            assert isinstance(yaml.safe_load(f), dict), path
