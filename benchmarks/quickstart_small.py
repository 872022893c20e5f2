"""How long `stdistill quickstart --small` takes here, against its 3-minute target.

    python benchmarks/quickstart_small.py          # an idle 2-core CPU: about 2 minutes

Runs the command itself (teacher, plain and STD student, all stages from scratch) in a
temporary folder and prints the wall time, the target, their ratio and the table's top-1s.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

TARGET_S = 180.0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'qs')
        start = time.perf_counter()
        result = subprocess.run([sys.executable, '-m', 'stdistill', 'quickstart', '--small', '--output', out],
                                capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            return 1
        with open(os.path.join(out, 'results.json')) as f:
            rows = {r['name']: r['top1'] for r in json.load(f)['rows']}
    print(f'quickstart --small: {seconds:.0f} s; target {TARGET_S:.0f} s; ratio {seconds / TARGET_S:.2f} '
          f'({os.cpu_count()} CPUs); top-1 teacher {rows["teacher"]:.2f}, plain {rows["plain"]:.2f}, '
          f'std {rows["std"]:.2f} on 2,000 test images')
    return 0 if seconds <= TARGET_S else 2


if __name__ == '__main__':
    sys.exit(main())
