import pytest

from stdistill.apps.cli import main
from stdistill.apps.profiling import PAPER_ROWS, PaperComparison, Profile, profile_model


def test_paper_table_every_row_within_tolerance(capsys):
    assert main(['profile', '--paper']) == 0  # exit 1 if any row is outside 1% params / 3% GMACs
    out = capsys.readouterr().out
    assert f'{len(PAPER_ROWS)}/{len(PAPER_ROWS)} rows within it' in out
    assert 'outside tolerance' not in out


def test_tolerance_check_can_fail():
    row = PAPER_ROWS[0]
    off = PaperComparison(row, Profile(row.model, int(row.params_m * 1e6 * 1.02), int(row.gmacs * 1e9)))
    assert not off.within_tolerance


def test_std_overhead_counts_exactly():
    """Two Mixer-S16 pairs add exactly the token layers and heads docs/method.md section 6 derives."""
    base = profile_model('mixer_s16_224')
    std = profile_model('std_mixer_s16_224', num_teachers=2)
    P, N, DS, DC, K = 196, 512, 256, 2048, 1000
    pair_params = (2 * N + (P + 1) * DS + DS + DS + 1 + N) + (2 * (N + 1) + (N + 1) * DC + DC + DC + 1 + P) \
        + (N + P) * K + K
    pair_macs = N * ((P + 1) * DS + DS) + P * ((N + 1) * DC + DC) + (N + P) * K
    assert std.params - base.params == 2 * pair_params
    assert std.macs - base.macs == 2 * pair_macs


def test_profile_single_model(capsys):
    assert main(['profile', 'std_cyclemlp_b1', '--num-teachers', '2', '--num-classes', '10', '--img-size', '64']) == 0
    assert 'std_cyclemlp_b1: params' in capsys.readouterr().out


@pytest.mark.parametrize('argv, message', [
    (['profile', 'mixr_s16_224'], "unknown model 'mixr_s16_224'"),
    (['profile', 'std_mixer_s16_224', '--token-positions', '8'], 'outside the backbone'),
    (['profile', 'std_mixer_s16_224', '--num-teachers', '0'], 'num_teachers'),
    (['profile', 'resnet50', '--num-teachers', '2'], 'applies to STD students'),
    (['profile', 'std_mixer_s16_224', '--img-size', '0'], '--img-size must be a positive integer'),
    (['profile'], 'give a model name'),
])
def test_profile_bad_input_is_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1 and 'Traceback' not in err
