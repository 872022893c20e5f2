"""Every teacher sees the image it was trained on: its own normalisation, size and channels."""
import numpy as np
import pytest
import timm
import torch
import torchvision.transforms.functional as TF
from safetensors.torch import save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from stdistill.apps.cli import main
from stdistill.config import load_config
from stdistill.data.fashion_mnist import FashionMNIST
from stdistill.data.loaders import FASHION_MNIST_NORM
from stdistill.method.teacher_input import RECORD_KEY, InputContract, TeacherInput
from stdistill.method.teachers import create_teacher, recorded_contract
from stdistill.training.builders import build_objective, build_teachers, student_contract
from stdistill.training.train import train
from test_train import TINY


def real_images(size, rgb, count=6):
    """Fashion-MNIST test images in [0, 1], (count, 3 or 1, size, size), tinted per channel if rgb."""
    data = FashionMNIST(split='test')
    x = torch.from_numpy(data.images[:count].astype(np.float32) / 255)[:, None]
    if rgb:
        x = torch.cat([x, 0.6 * x + 0.15, 1 - 0.8 * x], dim=1)
    return TF.resize(x, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)


def own_preprocessing(images, contract):
    """What the teacher's own pipeline gives from the same images: torchvision's resize and
    normalize, channels repeated for an RGB model."""
    if images.shape[1] != contract.in_chans:
        images = images.repeat(1, contract.in_chans, 1, 1)
    if contract.img_size and tuple(images.shape[-2:]) != tuple(contract.img_size):
        mode = TF.InterpolationMode(contract.interpolation)
        images = TF.resize(images, list(contract.img_size), interpolation=mode, antialias=True)
    return TF.normalize(images, list(contract.mean), list(contract.std))


def test_a_vit_trained_at_another_size_and_normalisation_gets_its_own_input(tmp_path):
    """A fixed-size teacher (ViT at 48, ImageNet mean/std, recorded in its checkpoint) fed the
    batch of a 32x32 student normalised with 0.5/0.5."""
    torch.manual_seed(0)
    vit = timm.create_model('vit_tiny_patch16_224', img_size=48, num_classes=10)
    recorded = InputContract(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 3, (48, 48), 'bicubic')
    path = str(tmp_path / 'vit.safetensors')
    save_file(vit.state_dict(), path, metadata={RECORD_KEY: recorded.to_json()})
    teacher = create_teacher('vit_tiny_patch16_224', num_classes=10, checkpoint=path, img_size=48)
    assert teacher.contract == recorded
    student = InputContract((0.5,) * 3, (0.5,) * 3, 3, (32, 32))
    teacher.adapt_to(student)
    raw = real_images(32, rgb=True)
    batch = TF.normalize(raw, list(student.mean), list(student.std))
    expected = teacher.model(own_preprocessing(raw, recorded).contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(teacher(batch), expected, rtol=0, atol=1e-5)
    # without the contract the teacher would get the student's tensor, resized: different logits
    plain = teacher.model(TF.resize(batch, [48, 48], antialias=True).contiguous(memory_format=torch.channels_last))
    assert (plain - expected).abs().max() > 1e-2


def test_a_grayscale_student_feeds_an_rgb_cnn_its_own_normalisation():
    torch.manual_seed(0)
    teacher = create_teacher('resnet10t', num_classes=10)  # random weights: timm's cfg (ImageNet, RGB)
    assert teacher.contract.in_chans == 3 and teacher.contract.mean == IMAGENET_DEFAULT_MEAN
    assert teacher.contract.img_size is None  # a CNN takes any size: the student's is kept
    student = InputContract(*FASHION_MNIST_NORM, 1, (28, 28))
    teacher.adapt_to(student)
    raw = real_images(28, rgb=False)
    batch = TF.normalize(raw, list(student.mean), list(student.std))
    expected = teacher.model(own_preprocessing(raw, teacher.contract).contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(teacher(batch), expected, rtol=0, atol=1e-5)


def test_a_stdistill_run_records_its_contract_and_serves_as_a_teacher(tmp_path):
    """A Mixer trained by stdistill at 28x28 on Fashion-MNIST's normalisation, used as the teacher
    of a 32x32 student normalised with 0.5/0.5: resized to 28 and renormalised."""
    out = tmp_path / 'teacher'
    train(load_config(None, [*TINY, 'method=none', 'teachers=[]', 'epochs=1', 'model_ema=false', f'output={out}']))
    path = str(out / 'best' / 'model.safetensors')
    assert recorded_contract(path) == {'mean': FASHION_MNIST_NORM[0], 'std': FASHION_MNIST_NORM[1], 'in_chans': 1,
                                       'img_size': (28, 28), 'interpolation': 'bicubic'}
    teacher = create_teacher('mixer_t4_28', num_classes=10, checkpoint=path, embed_dim=16, num_blocks=2)
    student = InputContract((0.5,), (0.5,), 1, (32, 32))
    teacher.adapt_to(student)
    assert teacher.input.size == (28, 28)
    raw = real_images(32, rgb=False)
    batch = TF.normalize(raw, [0.5], [0.5])
    expected = teacher.model(own_preprocessing(raw, teacher.contract).contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(teacher(batch), expected, rtol=0, atol=1e-5)
    # its own batches pass through untouched
    assert create_teacher('mixer_t4_28', 10, checkpoint=path, embed_dim=16, num_blocks=2).adapt_to(
        InputContract(*FASHION_MNIST_NORM, 1, (28, 28))).input.identity


def test_a_cnn_checkpoint_is_fed_the_size_it_was_trained_at(tmp_path):
    """A CNN takes any size, but one trained by stdistill on 32x32 images predicts badly on a
    64x64 student's batch (its receptive fields see digits twice as large): the size its
    checkpoint records is the size it sees. Without a record, the student's size is kept."""
    torch.manual_seed(0)
    cnn = timm.create_model('resnet10t', num_classes=10)
    path = str(tmp_path / 'cnn.safetensors')
    recorded = InputContract((0.5,) * 3, (0.5,) * 3, 3, (32, 32), 'bilinear')
    save_file(cnn.state_dict(), path, metadata={'format': 'pt', RECORD_KEY: recorded.to_json()})
    teacher = create_teacher('resnet10t', num_classes=10, checkpoint=path)
    assert teacher.contract == recorded
    teacher.adapt_to(InputContract((0.5,) * 3, (0.5,) * 3, 3, (64, 64)))
    assert teacher.input.size == (32, 32)
    raw = real_images(64, rgb=True)
    expected = teacher.model(own_preprocessing(raw, teacher.contract).contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(teacher(TF.normalize(raw, [0.5] * 3, [0.5] * 3)), expected, rtol=0, atol=1e-5)
    assert expected.shape == (6, 10)
    # a file without a record (another tool's): the student's size, as for timm's cfg
    save_file(cnn.state_dict(), path, metadata={'format': 'pt'})
    assert create_teacher('resnet10t', num_classes=10, checkpoint=path).contract.img_size is None


def test_a_checkpoint_of_an_older_run_takes_the_normalisation_of_its_run(tmp_path):
    """Checkpoints written before they recorded their contract: the run's config.yaml has it."""
    from safetensors.torch import load_file
    out = tmp_path / 'old'
    train(load_config(None, [*TINY, 'method=none', 'teachers=[]', 'epochs=1', 'model_ema=false', f'output={out}']))
    path = str(out / 'best' / 'model.safetensors')
    save_file(load_file(path), path, metadata={'format': 'pt'})  # what an older stdistill wrote
    assert recorded_contract(path) == {}
    cfg = load_config(None, [*TINY, f'teachers=[{{model: mixer_t4_28, checkpoint: {path}, '
                                    f'kwargs: {{embed_dim: 16, num_blocks: 2}}}}]'])
    (teacher,) = build_teachers(cfg, 10, torch.device('cpu'))
    assert teacher.contract == InputContract(*FASHION_MNIST_NORM, 1, (28, 28), 'bicubic')
    assert teacher.input.identity  # the student of TINY is normalised the same way


@pytest.mark.parametrize('recipe', ['mixer_s16_std', 'mixer_b16_std', 'mixer_s16_deit'])
def test_mixer_recipes_normalise_teachers_with_imagenet_and_the_student_with_half(recipe):
    cfg = load_config(f'recipes/imagenet/{recipe}.yaml')
    student = student_contract(cfg)
    assert student.mean == (0.5, 0.5, 0.5) and student.std == (0.5, 0.5, 0.5) and student.img_size == (224, 224)
    for teacher in build_teachers(cfg, 1000, torch.device('cpu'), pretrained=False):
        assert teacher.contract.mean == IMAGENET_DEFAULT_MEAN and teacher.contract.std == IMAGENET_DEFAULT_STD
        assert not teacher.input.identity and teacher.input.size is None  # renormalised, not resized
        x = torch.zeros(1, 3, 224, 224)  # the student's 0 is grey 0.5: for the teacher (0.5 - mean) / std
        expected = ((0.5 - torch.tensor(IMAGENET_DEFAULT_MEAN)) / torch.tensor(IMAGENET_DEFAULT_STD))
        torch.testing.assert_close(teacher.input(x)[0, :, 0, 0], expected)


def test_teacher_contract_overrides_in_the_config(tmp_path):
    cfg = load_config(None, [*TINY, 'teachers=[{model: resnet10t, pretrained: false, mean: [0.1, 0.2, 0.3], '
                                    'std: [0.4, 0.5, 0.6], img_size: 40, interpolation: bilinear}]'])
    (teacher,) = build_teachers(cfg, 10, torch.device('cpu'), pretrained=False)
    assert teacher.contract == InputContract((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 3, (40, 40), 'bilinear')
    assert teacher.input.output_shape((2, 1, 28, 28)) == (2, 3, 40, 40)


def test_a_fixed_size_teacher_for_a_28px_student_is_resized_and_trains(tmp_path):
    """vit_tiny_patch16_224 for a 28x28 student: its patch embedding takes 224 only."""
    out = tmp_path / 'run'
    assert main(['train', *TINY, 'teachers=[{model: vit_tiny_patch16_224, pretrained: false}]', 'epochs=1',
                 'train_samples=64', f'output={out}']) == 0
    cfg = load_config(str(out / 'config.yaml'))
    (teacher,) = build_objective(cfg, 10, torch.device('cpu'), mixup_active=True, pretrained=False).teachers
    assert teacher.input.size == (224, 224) and teacher.input.output_shape((4, 1, 28, 28)) == (4, 3, 224, 224)


def _error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('stdistill: error: '), lines
    return lines[0]


def test_what_cannot_be_adapted_is_refused_at_setup_naming_the_key(tmp_path, capsys):
    # a Swin at 28x28: its windows do not fit; refused before any step, naming teachers.0.img_size
    out = tmp_path / 'swin'
    assert main(['train', *TINY, 'teachers=[{model: swin_tiny_patch4_window7_224, pretrained: false, img_size: 28}]',
                 f'output={out}']) == 2
    line = _error_line(capsys)
    assert 'teachers.0 (swin_tiny_patch4_window7_224) cannot take 3x28x28 inputs' in line
    assert 'set teachers.0.img_size' in line and not (out / 'last').exists()
    # an RGB student and a teacher checkpoint with one input channel and no recorded normalisation
    gray = timm.create_model('resnet10t', in_chans=1, num_classes=10)
    path = str(tmp_path / 'gray.safetensors')
    save_file(gray.state_dict(), path)
    assert main(['train', *TINY, 'in_chans=3', 'mean=[0.5,0.5,0.5]', 'std=[0.5,0.5,0.5]',
                 f'teachers=[{{model: resnet10t, checkpoint: {path}}}]', f'output={tmp_path / "gray"}']) == 2
    line = _error_line(capsys)
    assert 'teachers.0: teacher resnet10t takes 1 channel(s); the input of its timm cfg does not fit' in line
    assert 'mean and std need 1 values' in line
    # ... with its normalisation given, the channel count still cannot be adapted
    assert main(['train', *TINY, 'in_chans=3', 'mean=[0.5,0.5,0.5]', 'std=[0.5,0.5,0.5]',
                 f'teachers=[{{model: resnet10t, checkpoint: {path}, mean: [0.3], std: [0.3]}}]',
                 f'output={tmp_path / "gray2"}']) == 2
    line = _error_line(capsys)
    assert 'teachers.0 (resnet10t)' in line and "student's batch has 3 channel(s) and the teacher takes 1" in line


def test_teacher_input_identity_and_shapes():
    same = InputContract((0.5,), (0.5,), 1, (28, 28))
    adapter = TeacherInput(same, same)
    x = torch.randn(2, 1, 28, 28)
    assert adapter.identity and adapter(x) is x
    with pytest.raises(ValueError, match='only equal counts'):
        TeacherInput(InputContract((0.5,) * 3, (0.5,) * 3, 3), same)
    with pytest.raises(ValueError, match='mean and std need 3 values'):
        InputContract((0.5,), (0.5,), 3)


def test_pretrained_teachers_and_students_from_a_local_file(tmp_path):
    """pretrained=True without a network: timm's pretrained_cfg_overlay=dict(file=...) is where a
    hub download ends; the file's weights load and the overlay's normalisation is the contract."""
    torch.manual_seed(0)
    source = timm.create_model('resnet10t', num_classes=10)
    path = str(tmp_path / 'resnet10t.safetensors')
    save_file(source.state_dict(), path)
    overlay = dict(file=path, num_classes=10, mean=(0.3, 0.3, 0.3), std=(0.2, 0.2, 0.2))
    teacher = create_teacher('resnet10t', num_classes=10, pretrained=True, pretrained_cfg_overlay=overlay)
    for name, tensor in source.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[name], tensor), name
    assert teacher.contract.mean == (0.3, 0.3, 0.3) and teacher.contract.std == (0.2, 0.2, 0.2)
    # the same through a config: teachers default to pretrained when no checkpoint is given
    mixer = timm.create_model('mixer_t4_28', num_classes=10, in_chans=1, embed_dim=16, num_blocks=2)
    student_path = str(tmp_path / 'mixer.safetensors')
    save_file(mixer.state_dict(), student_path)
    cfg = load_config(None, [*TINY, 'pretrained=true',
                             f'model_kwargs={{embed_dim: 16, num_blocks: 2, pretrained_cfg_overlay: {{file: {student_path}}}}}',
                             f'teachers=[{{model: resnet10t, kwargs: {{pretrained_cfg_overlay: {{file: {path}, num_classes: 10}}}}}}]'])
    objective = build_objective(cfg, 10, torch.device('cpu'), mixup_active=True)
    for name, tensor in mixer.state_dict().items():
        assert torch.equal(objective.student.backbone.state_dict()[name], tensor), name
    for name, tensor in source.state_dict().items():
        assert torch.equal(objective.teachers[0].model.state_dict()[name], tensor), name


def test_local_pretrained_files_keep_their_head_and_fail_in_one_line(tmp_path, monkeypatch):
    """The class count of an overlay file is read from its classifier (timm would otherwise drop
    a 4-class head as another label set's); a missing file, a file of another size and no
    network are one line each, for teachers and students alike."""
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)  # fail fast, no retries
    torch.manual_seed(0)
    source = timm.create_model('resnet10t', num_classes=4)
    path = str(tmp_path / 'four.safetensors')
    save_file(source.state_dict(), path)
    teacher = create_teacher('resnet10t', 4, pretrained=True, pretrained_cfg_overlay={'file': path})
    assert torch.equal(teacher.model.fc.weight, source.fc.weight)
    cfg = load_config(None, [*TINY, f'teachers=[{{model: resnet10t, kwargs: {{num_classes: 4, '
                                    f'pretrained_cfg_overlay: {{file: {path}}}}}}}]'])
    with pytest.raises(ValueError, match=r'teachers.0.kwargs.num_classes is 4 but the student has 10 classes'):
        build_teachers(cfg, 10, torch.device('cpu'))
    (same,) = build_teachers(cfg, 4, torch.device('cpu'))  # num_classes in kwargs agrees: accepted
    assert torch.equal(same.model.fc.weight, source.fc.weight)
    with pytest.raises(ValueError, match='pretrained_cfg_overlay file not found for teacher resnet10t: /nope'):
        create_teacher('resnet10t', 4, pretrained=True, pretrained_cfg_overlay={'file': '/nope.safetensors'})
    mixer = timm.create_model('mixer_s16_224', num_classes=10)
    mixer_path = str(tmp_path / 'mixer.safetensors')
    save_file(mixer.state_dict(), mixer_path)
    student_at_32 = load_config(None, [*TINY, 'model=mixer_s16_224', 'img_size=32', 'in_chans=3', 'mean=[0.5,0.5,0.5]',
                                       'std=[0.5,0.5,0.5]', 'model_kwargs={}', 'pretrained=true', 'method=none',
                                       'teachers=[]', f'model_kwargs={{pretrained_cfg_overlay: {{file: {mixer_path}}}}}'])
    with pytest.raises(ValueError, match=r'cannot load pretrained weights for student mixer_s16_224 \(.*size mismatch'):
        build_objective(student_at_32, 10, torch.device('cpu'), mixup_active=True)
    offline = load_config(None, [*TINY, 'model=resmlp_12_224', 'img_size=224', 'in_chans=3', 'model_kwargs={}',
                                 'pretrained=true', 'method=none', 'teachers=[]'])
    with pytest.raises(ValueError, match='cannot load pretrained weights for student resmlp_12_224'):
        build_objective(offline, 10, torch.device('cpu'), mixup_active=True)


def test_a_student_trained_at_another_size_is_rebuilt_at_that_size_as_a_teacher(tmp_path, capsys):
    out = tmp_path / 'at32'
    train(load_config(None, [*TINY, 'img_size=32', 'method=none', 'teachers=[]', 'epochs=1', 'model_ema=false',
                             f'output={out}']))
    path = str(out / 'best' / 'model.safetensors')
    assert recorded_contract(path)['img_size'] == (32, 32)
    teacher = create_teacher('mixer_t4_28', 10, checkpoint=path, embed_dim=16, num_blocks=2)
    assert teacher.contract.img_size == (32, 32)
    # as the teacher of a 28x28 student: each batch resized to 32, and the run says what it sees
    run = tmp_path / 'student'
    assert main(['train', *TINY, 'epochs=1', f'output={run}', f'teachers=[{{model: mixer_t4_28, checkpoint: {path}, '
                 f'kwargs: {{embed_dim: 16, num_blocks: 2}}}}]']) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith('teachers.0')]
    assert said == ['teachers.0 (mixer_t4_28) sees 1 channel(s), 32x32, mean (0.286,), std (0.353,) '
                    '(adapted from the student batch)']


def _record(tmp_path, name, record):
    model = timm.create_model('resnet10t', num_classes=10)
    path = str(tmp_path / f'{name}.safetensors')
    save_file(model.state_dict(), path, metadata={RECORD_KEY: record})
    return path


BAD_RECORDS = {
    'strings': '{"mean": ["a", "b", "c"], "std": [1, 1, 1], "in_chans": 3}',
    'nulls': '{"mean": [null, 0, 0], "std": [1, 1, 1], "in_chans": 3}',
    'nested': '{"mean": [[0.5], [0.5], [0.5]], "std": [1, 1, 1], "in_chans": 3}',
    'booleans': '{"mean": [true, false, true], "std": [1, 1, 1], "in_chans": 3}',
    'nan': '{"mean": [NaN, 0, 0], "std": [1, 1, 1], "in_chans": 3}',
    'short_size': '{"mean": [0, 0, 0], "std": [1, 1, 1], "in_chans": 3, "input_size": [1, 28]}',
    'huge_size': '{"mean": [0, 0, 0], "std": [1, 1, 1], "in_chans": 3, "input_size": [3, 100000, 100000]}',
    'not_json': 'mean=0.5',
}


@pytest.mark.parametrize('case', sorted(BAD_RECORDS))
def test_a_damaged_recorded_contract_is_one_line(tmp_path, capsys, case):
    path = _record(tmp_path, case, BAD_RECORDS[case])
    assert main(['train', *TINY, f'teachers=[{{model: resnet10t, checkpoint: {path}}}]',
                 f'output={tmp_path / "run"}']) == 2
    assert f'cannot read the input contract recorded in {path}: not a valid input record' in _error_line(capsys)


BAD_INPUT = {
    'teacher mean nan': (["teachers=[{model: resnet10t, pretrained: false, mean: [.nan, 0, 0], std: [1, 1, 1]}]"],
                         'config key teachers.0.mean must be finite'),
    'teacher mean alone': (["teachers=[{model: resnet10t, pretrained: false, mean: [0.5, 0.5, 0.5]}]"],
                           'teachers.0: teacher resnet10t: give both mean and std'),
    'student mean alone': (['mean=[0.5]'], 'give both mean and std'),
    'student std inf': (['mean=[0.5]', 'std=[.inf]'], 'config key std must be finite'),
    'teacher kwargs unknown': (["teachers=[{model: resnet10t, pretrained: false, kwargs: {foo: 1}}]"],
                               "cannot build teachers.0 (resnet10t) with kwargs {'foo': 1}"),
    'overlay not a mapping': (["teachers=[{model: resnet10t, kwargs: {pretrained_cfg_overlay: 5}}]"],
                              'teachers.0.kwargs.pretrained_cfg_overlay must be a mapping'),
    'dist_timeout inf': (['dist_timeout=.inf'], 'config key dist_timeout must be finite'),
    'dist_timeout huge': (['dist_timeout=1e12'], 'dist_timeout must be at most a week'),
    'unknown aa': (['aa=foo'], "cannot build the training augmentation (aa='foo')"),
    'teacher features_only': (["teachers=[{model: resnet10t, pretrained: false, kwargs: {features_only: true}}]"],
                              'a teacher is a whole classifier'),
    'teacher checkpoint_path': (["teachers=[{model: resnet10t, pretrained: false, kwargs: {checkpoint_path: /x}}]"],
                                'give weights as teachers.0.checkpoint'),
    'teacher act_layer': (["teachers=[{model: resnet10t, pretrained: false, kwargs: {act_layer: foo}}]"],
                          "cannot build teachers.0 (resnet10t) with kwargs {'act_layer': 'foo'}: KeyError"),
    'teacher num_classes string': (["teachers=[{model: resnet10t, pretrained: false, kwargs: {num_classes: '10'}}]"],
                                   "teachers.0.kwargs.num_classes is '10'"),
    'teacher img_size huge': (["teachers=[{model: resnet10t, pretrained: false, img_size: 100000}]"],
                              'teachers.0.img_size must be from 1 to 8192'),
    'teacher std tiny': (["teachers=[{model: resnet10t, pretrained: false, mean: [0, 0, 0], std: [1.0e-30, 1, 1]}]"],
                         'teachers.0.std must be at least 1e-06'),
    'teacher overlay unused': (["teachers=[{model: resnet10t, pretrained: false, "
                                "kwargs: {pretrained_cfg_overlay: {file: /x.safetensors}}}]"],
                               'teachers.0.kwargs.pretrained_cfg_overlay.file is given but pretrained weights are off'),
    'student std tiny': (['mean=[0.5]', 'std=[1.0e-40]'], 'config key std must be at least 1e-06'),
    'student embed_dim 0': (['model_kwargs={embed_dim: 0, num_blocks: 2}'],
                            'cannot build mixer_t4_28 with model_kwargs: ZeroDivisionError'),
    'student num_classes': (['model_kwargs={embed_dim: 16, num_blocks: 2, num_classes: 4}'],
                            'model_kwargs.num_classes is 4 but the data has 10 classes'),
    'student interpolation': (['interpolation=random'], 'config key interpolation must be one of'),
}


@pytest.mark.parametrize('case', sorted(BAD_INPUT))
def test_bad_teacher_and_precision_input_is_one_line(tmp_path, capsys, case):
    extra, words = BAD_INPUT[case]
    assert main(['train', *TINY, *extra, f'output={tmp_path / "run"}']) == 2
    assert words in _error_line(capsys)
    assert not (tmp_path / 'run' / 'last').exists()


def test_a_foreign_checkpoint_ignores_an_unrelated_config_beside_it(tmp_path):
    """Only the layout stdistill writes (RUN/best/model.safetensors beside state.json) takes its
    normalisation from RUN/config.yaml; a .pth in some project folder keeps its timm cfg's."""
    project = tmp_path / 'proj'
    (project / 'weights').mkdir(parents=True)
    (project / 'config.yaml').write_text('model: mixer_s16_224\nmean: [0.5, 0.5, 0.5]\nstd: [0.5, 0.5, 0.5]\n')
    path = project / 'weights' / 'r10.pth'
    torch.save(timm.create_model('resnet10t', num_classes=10).state_dict(), path)
    cfg = load_config(None, [*TINY, f'teachers=[{{model: resnet10t, checkpoint: {path}}}]'])
    (teacher,) = build_teachers(cfg, 10, torch.device('cpu'))
    assert teacher.contract.mean == IMAGENET_DEFAULT_MEAN


def test_exponents_without_a_dot_are_numbers():
    assert load_config(None, ['lr=1e-3', 'mine_weight=5E-2']).lr == 0.001


def test_an_std_student_checkpoint_is_a_teacher_through_its_class_head(tmp_path):
    out = tmp_path / 'std'
    train(load_config(None, [*TINY, 'epochs=1', f'output={out}']))  # TINY distils with STD
    path = str(out / 'best' / 'model.safetensors')
    teacher = create_teacher('mixer_t4_28', 10, checkpoint=path, embed_dim=16, num_blocks=2)
    from safetensors.torch import load_file
    weights = load_file(path)
    for name, tensor in teacher.model.state_dict().items():
        assert torch.equal(tensor, weights[f'backbone.{name}']), name


def test_resume_from_another_directory_reads_the_same_teacher(tmp_path, monkeypatch):
    """The run's config.yaml keeps absolute paths: a relative teacher checkpoint (or data folder)
    is not looked up again from wherever --resume runs."""
    here, there = tmp_path / 'here', tmp_path / 'there'
    here.mkdir()
    there.mkdir()
    for folder, seed in ((here, 0), (there, 1)):
        torch.manual_seed(seed)
        save_file(timm.create_model('resnet10t', num_classes=10).state_dict(), str(folder / 't.safetensors'))
    monkeypatch.chdir(here)
    run = tmp_path / 'run'
    assert main(['train', *TINY, f'output={run}', 'teachers=[{model: resnet10t, checkpoint: t.safetensors}]',
                 '--stop-after', '1']) == 0
    assert load_config(str(run / 'config.yaml')).teachers[0]['checkpoint'] == str(here / 't.safetensors')
    monkeypatch.chdir(there)
    assert main(['train', '--resume', str(run)]) == 0
    assert load_config(str(run / 'config.yaml')).teachers[0]['checkpoint'] == str(here / 't.safetensors')


def test_an_older_run_whose_config_cannot_be_read_is_refused_not_guessed(tmp_path, capsys):
    from safetensors.torch import load_file
    out = tmp_path / 'old'
    train(load_config(None, [*TINY, 'method=none', 'teachers=[]', 'epochs=1', 'model_ema=false', f'output={out}']))
    path = str(out / 'best' / 'model.safetensors')
    save_file(load_file(path), path, metadata={'format': 'pt'})  # no recorded contract
    with open(out / 'config.yaml', 'a') as f:
        f.write('old_key_from_v0: 1\n')
    assert main(['train', *TINY, f'output={tmp_path / "run"}', f'teachers=[{{model: mixer_t4_28, checkpoint: {path}, '
                 f'kwargs: {{embed_dim: 16, num_blocks: 2}}}}]']) == 2
    line = _error_line(capsys)
    assert 'records no input normalisation and its run' in line and "set the teacher's mean and std" in line


def test_a_teachers_own_mean_and_std_that_miss_its_channels_are_named_as_given(tmp_path, capsys):
    """mean/std set in a teacher's config entry with one value for an RGB teacher: the message
    blames the entry (not a checkpoint or timm's cfg) and says how many values to give."""
    assert main(['train', *TINY, 'teachers=[{model: resnet10t, pretrained: false, mean: [0.5], std: [0.5]}]',
                 f'output={tmp_path / "run"}']) == 2
    line = _error_line(capsys)
    assert 'teacher resnet10t takes 3 channel(s); the mean and std given in its config entry do not fit' in line
    assert line.endswith('give 3 values each') and not (tmp_path / 'run').exists()
