"""torchrun with 2 CPU processes (gloo): both ranks end with identical weights, rank 0 writes."""
import json
import os
import subprocess
import sys


from stdistill.checkpoint import load_checkpoint
from stdistill.config import load_config
from stdistill.distributed import weights_digest
from stdistill.train import build_student
from test_train import TINY


def test_two_process_gloo_run_keeps_ranks_identical(tmp_path):
    out = tmp_path / 'ddp'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'stdistill', 'train', *TINY, 'device=cpu', 'epochs=2', f'output={out}']
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / 'summary.json') as f:
        summary = json.load(f)
    digests = summary['weights_sha256_per_rank']
    assert summary['world_size'] == 2 and len(digests) == 2 and digests[0] == digests[1]
    # the digest is of the weights that were saved, and training moved them away from the initial ones
    cfg = load_config(str(out / 'config.yaml'))
    student = build_student(cfg, cfg.num_classes, pretrained=False)
    initial = weights_digest(student)
    state = load_checkpoint(str(out / 'last'), student)
    assert weights_digest(student) == digests[0] != initial
    # each rank trained on its own half of the data: 128 images / 2 ranks / batch 32 = 2 steps an epoch
    assert state['num_updates'] == 4
    with open(out / 'log.jsonl') as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 2 and rows[-1]['val_images'] == 96
