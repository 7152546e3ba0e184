#!/usr/bin/env python
"""Does `make demo` keep its word? Train the demo recipe once per seed, exactly as `make demo` does, and report the
final validation accuracy of every seed, their mean and range, and the training time.

    python tools/demo_sweep.py                      # DEMO of sasa_fastai.learner, seeds 42 1 2 3 4, 2 threads
    python tools/demo_sweep.py --size 32 --epochs 8 # another recipe (any of DEMO's keys), to compare

Each run is `sasa_train --data digits <recipe> --seed S --out <tmp>` in a fresh process with OMP_NUM_THREADS
threads (default 2, as `make demo`); the training time is the sum of the epoch times in its history.csv. Writes the
table to --out (default results/demo_sweep.md) and prints it, and the figures to the .json beside it. Exit status 1
if a run fails or a seed ends below --min_acc."""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def main():
    from sasa_fastai.learner import DEMO
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    for k, v in DEMO.items():
        if k != 'seed': p.add_argument(f'--{k}', type=type(v), default=v, help=f'(default: DEMO, {v})')
    p.add_argument('--seeds', type=int, nargs='+', default=[DEMO['seed'], 1, 2, 3, 4], help='one run per seed')
    p.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 2)), help='CPU threads per run')
    p.add_argument('--min_acc', type=float, default=0.97, help='the accuracy every seed must reach')
    p.add_argument('--out', default=str(ROOT / 'results' / 'demo_sweep.md'), help='markdown file to write')
    a = p.parse_args()
    recipe = {k: getattr(a, k) for k in DEMO if k != 'seed'}
    exe = Path(sys.executable).parent / 'sasa_train'
    flags = [s for k, v in recipe.items() for s in (f'--{k}', str(v))]
    env = {**os.environ, 'OMP_NUM_THREADS': str(a.threads), 'CUDA_VISIBLE_DEVICES': ''}
    env.pop('OMP_WAIT_POLICY', None)  # OpenMP's default, as in `make demo` (a single process: spinning is faster)
    rows, t0 = [], time.time()
    for seed in a.seeds:
        out = Path(tempfile.mkdtemp(prefix='demo_sweep_'))
        cmd = [str(exe), '--data', 'digits', *flags, '--seed', str(seed), '--out', str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            rows.append(dict(seed=seed, error=(r.stderr.strip().splitlines() or ['?'])[-1]))
        else:
            import csv
            hist = list(csv.DictReader(open(out / 'history.csv')))
            secs = sum(int(m) * 60 + int(s) for m, s in (h['time'].split(':') for h in hist))
            wrote = next((l for l in r.stdout.splitlines() if l.startswith('wrote ')), '')
            rows.append(dict(seed=seed, accuracy=float(hist[-1]['accuracy']), train_s=secs,
                             files=wrote.split(': ', 1)[-1]))
        shutil.rmtree(out, ignore_errors=True)
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    ok = [r for r in rows if 'error' not in r]
    accs = [r['accuracy'] for r in ok]
    import torch, platform
    md = ['## `make demo` over seeds', '',
          f"`python tools/demo_sweep.py {' '.join(sys.argv[1:])}`".replace(' `', '`'), '',
          f"Recipe: `sasa_train --data digits {' '.join(flags)} --seed S`, {a.threads} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}.", '',
          '| seed | final validation accuracy | training time |', '|---:|---:|---:|']
    md += [f"| {r['seed']} | error: {r['error']} | |" if 'error' in r else
           f"| {r['seed']} | {r['accuracy']:.4f} | {r['train_s'] // 60} min {r['train_s'] % 60:02d} s |" for r in rows]
    if accs:
        md += ['', f"Mean {sum(accs) / len(accs):.4f}, range {min(accs):.4f} to {max(accs):.4f} "
               f"over {len(accs)} seeds; "
               f"longest training {max(r['train_s'] for r in ok)} s; every seed >= {a.min_acc}: "
               f"{'yes' if len(ok) == len(rows) and min(accs) >= a.min_acc else 'NO'}. Total {time.time() - t0:.0f} s."]
    text = '\n'.join(md) + '\n'
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    summary = dict(recipe=recipe, seeds=a.seeds, threads=a.threads, min_acc=a.min_acc, runs=rows,
                   mean=sum(accs) / len(accs) if accs else None, min=min(accs, default=None),
                   max=max(accs, default=None),
                   longest_train_s=max((r['train_s'] for r in ok), default=None))
    Path(a.out).with_suffix('.json').write_text(json.dumps(summary, indent=1) + '\n')
    print(text)
    return 0 if len(ok) == len(rows) and accs and min(accs) >= a.min_acc else 1

if __name__ == '__main__': sys.exit(main())
