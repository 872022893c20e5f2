"""The quickstart's plumbing at a tiny size (the real run is `stdistill quickstart`, in CI)."""
import json
import os

from stdistill.quickstart import run_quickstart


def test_quickstart_writes_table_plot_and_results(tmp_path, capsys):
    out = tmp_path / 'qs'
    results = run_quickstart(str(out), workers=0, train_samples=256, val_samples=200, epochs=1, progress=False)
    with open(out / 'results.json') as f:
        assert json.load(f) == results
    rows = results['rows']
    assert [r['name'] for r in rows] == ['teacher', 'plain', 'std']
    for row in rows:
        assert row['params_m'] > 0 and 0 <= row['top1'] <= 100 and row['test_images'] == 200
    assert rows[2]['params_m'] > rows[1]['params_m']  # the token pair and its head
    assert os.path.getsize(out / 'comparison.png') > 0
    # the STD student read the teacher the quickstart had just trained
    with open(out / 'std' / 'config.yaml') as f:
        assert str(out / 'teacher' / 'best' / 'model.safetensors') in f.read()
    printed = capsys.readouterr().out
    assert 'STD vs plain student' in printed and 'mixer_t4_28' in printed
    # a second run in the same folder replaces the first
    run_quickstart(str(out), workers=0, train_samples=256, val_samples=200, epochs=1, progress=False)
