"""How long `stdistill quickstart` takes here, against its target: 5 minutes (3 with --small).

    python benchmarks/quickstart_time.py            # the default: an idle 2-core CPU, about 5 minutes
    python benchmarks/quickstart_time.py --small    # --small: about 3 minutes

Runs the command itself (teacher, plain and STD student, all stages from scratch) in a
temporary folder and prints the wall time, the target, their ratio and the table's top-1s.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TARGET_S = {'default': 300.0, 'small': 180.0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--small', action='store_true', help='time `stdistill quickstart --small`')
    args = parser.parse_args(argv)
    flags = ['--small'] if args.small else []
    target = TARGET_S['small' if args.small else 'default']
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'qs')
        start = time.perf_counter()
        result = subprocess.run([sys.executable, '-m', 'stdistill', 'quickstart', '--output', out, *flags],
                                capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            return 1
        with open(os.path.join(out, 'results.json')) as f:
            rows = json.load(f)['rows']
    top1 = {r['name']: r['top1'] for r in rows}
    print(f'{" ".join(["quickstart", *flags])}: {seconds:.0f} s; target {target:.0f} s; ratio {seconds / target:.2f} '
          f'({os.cpu_count()} CPUs); top-1 teacher {top1["teacher"]:.2f}, plain {top1["plain"]:.2f}, '
          f'std {top1["std"]:.2f} on {rows[0]["test_images"]:,} test images')
    return 0 if seconds <= target else 2


if __name__ == '__main__':
    sys.exit(main())
