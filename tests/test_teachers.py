import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from stdistill.method.teachers import FrozenTeacher, create_teacher, load_weights

ARCH = 'resnet10t'  # a small timm ResNet: the teacher code is the same for resnet50 or swin


@pytest.fixture(scope='module')
def trained_like(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model(ARCH, num_classes=7).eval()
    folder = tmp_path_factory.mktemp('teachers')
    save_file(model.state_dict(), str(folder / 't.safetensors'))
    torch.save({'state_dict': model.state_dict()}, str(folder / 't.pth'))
    return model, folder


@pytest.mark.parametrize('filename', ['t.safetensors', 't.pth'])
def test_teacher_from_local_checkpoint(trained_like, filename):
    model, folder = trained_like
    teacher = create_teacher(ARCH, num_classes=7, checkpoint=str(folder / filename))
    x = torch.randn(2, 3, 64, 64)
    for name, tensor in model.state_dict().items():  # the weights load exactly
        assert torch.equal(teacher.model.state_dict()[name], tensor), name
    # the teacher runs channels-last: the same logits up to the order of the convolutions' sums
    torch.testing.assert_close(teacher(x), model(x).detach(), rtol=1e-5, atol=1e-5)
    assert teacher.num_classes == 7


def test_teacher_is_frozen_and_stays_in_eval(trained_like):
    _, folder = trained_like
    teacher = create_teacher(ARCH, num_classes=7, checkpoint=str(folder / 't.safetensors'))
    assert isinstance(teacher, FrozenTeacher)
    parent = torch.nn.Sequential(teacher).train()
    assert not parent[0].training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    out = teacher(torch.randn(2, 3, 64, 64, requires_grad=True))
    assert not out.requires_grad


def test_class_mismatch_is_refused(trained_like):
    _, folder = trained_like
    with pytest.raises(ValueError, match='predicts 7 classes but the student has 10'):
        create_teacher(ARCH, num_classes=10, checkpoint=str(folder / 't.safetensors'))
    # without weights (tests, smoke runs) a teacher is built for the student's classes
    assert create_teacher(ARCH, num_classes=10).num_classes == 10


def test_unknown_teacher_name():
    with pytest.raises(ValueError, match="unknown model 'resnet5O'"):
        create_teacher('resnet5O')


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(ValueError, match='checkpoint not found'):
        create_teacher(ARCH, checkpoint=str(tmp_path / 'nope.pth'))
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'not a safetensors file')
    with pytest.raises(ValueError, match='cannot load checkpoint'):
        load_weights(str(bad))


def test_checkpoint_of_another_architecture(trained_like):
    _, folder = trained_like
    with pytest.raises(ValueError, match='does not fit teacher resnet18'):
        create_teacher('resnet18', checkpoint=str(folder / 't.safetensors'))


class _Payload:
    """Unpickling this would create a folder: the sign that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / 'code-ran'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'fc.weight': _Payload(str(marker))}}, str(path))
    with pytest.raises(ValueError, match='cannot load checkpoint'):
        create_teacher(ARCH, checkpoint=str(path))
    assert not marker.exists()


def test_pretrained_download_failure_is_one_clear_error(monkeypatch):
    """Offline (as here), timm cannot fetch weights: the message says to give a checkpoint or a file."""
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)  # fail fast, no retries
    with pytest.raises(ValueError, match='cannot load pretrained weights for teacher resnet10t.*a checkpoint, or a local file'):
        create_teacher(ARCH, pretrained=True)


@pytest.mark.parametrize('name', ['resnet50', 'resnet101', 'swin_base_patch4_window7_224'])
def test_paper_teachers_build_from_timm_names(name):
    with torch.device('meta'):  # shapes only: no memory, no compute
        teacher = create_teacher(name, num_classes=1000)
        out = teacher(torch.empty(2, 3, 224, 224))
    assert isinstance(teacher, FrozenTeacher) and out.shape == (2, 1000)
