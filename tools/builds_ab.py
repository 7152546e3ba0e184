#!/usr/bin/env python
"""Two builds of the CPU kernel side by side, in one process, interleaved, on the same inputs.

    python tools/builds_ab.py                                  # OpenMP against std::thread (no-OpenMP compilers)
    python tools/builds_ab.py --a SASA_FASTAI_MARCH=x86-64-v3 --b SASA_FASTAI_MARCH=x86-64-v4   # AVX2 against AVX-512
    python tools/builds_ab.py --repeats 20 --size 40 --channels 64 --batch 8

Each build is compiled in a fresh process with its own kernel folder and its environment (`NAME=VALUE ...`; the word
`no-openmp` stands for a compiler wrapper that refuses -fopenmp, as Apple's clang does); both libraries are then
loaded here, and the SASA layer's forward and backward run with each in turn. Prints each build's `build_info`, the
median milliseconds and the ratio b / a.
"""
import argparse, ctypes, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

def refusing_compiler(folder):
    "A `c++` that refuses -fopenmp, as Apple's clang does."
    path = Path(folder) / 'c++-without-openmp'
    path.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec c++ "$@"\n')
    path.chmod(0o755)
    return str(path)

def build(spec, folder):
    "Build the kernel for `spec` (`NAME=VALUE ...` or `no-openmp`) in a fresh process: (library path, build_info)."
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, 'SASA_FASTAI_KERNELS': str(folder)}
    for word in spec.split():
        if word == 'no-openmp': env['CXX'] = refusing_compiler(folder)
        elif word != 'default': k, v = word.split('=', 1); env[k] = v
    code = 'from sasa_fastai.native import build_info; print(build_info())'
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    return next(Path(folder).glob('*.so')), out.stdout.strip()

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--a', default='default', help='the first build (default: this machine\'s)')
    ap.add_argument('--b', default='no-openmp', help='the second build (default: without OpenMP)')
    ap.add_argument('--repeats', type=int, default=20); ap.add_argument('--size', type=int, default=40)
    ap.add_argument('--channels', type=int, default=64); ap.add_argument('--batch', type=int, default=8)
    a = ap.parse_args()
    import torch
    from sasa_fastai import native
    from sasa_fastai.layers import SASA2d
    with tempfile.TemporaryDirectory() as d:
        builds = {name: build(spec, Path(d) / name) for name, spec in (('a', a.a), ('b', a.b))}
        libs = {name: native._declare(ctypes.CDLL(str(so))) for name, (so, _) in builds.items()}
        layer = SASA2d(a.channels, a.channels, kernel_size=7, num_heads=8, backend='native')
        x = torch.randn(a.batch, a.channels, a.size, a.size, requires_grad=True)
        times = {name: [] for name in libs}
        for i in range(a.repeats + 2):
            for name, lib in libs.items():
                native._library = lib
                t = time.perf_counter(); layer(x).sum().backward(); ms = (time.perf_counter() - t) * 1e3
                if i >= 2: times[name].append(ms)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f'SASA2d C={a.channels} @ {a.size}x{a.size}, batch {a.batch}, k=7, 8 heads, forward+backward, '
          f'{torch.get_num_threads()} threads, median of {a.repeats} interleaved:')
    for n, spec in (('a', a.a), ('b', a.b)): print(f'  {n}: {spec:32s} {med[n]:8.2f} ms  {builds[n][1]}')
    print(f"  b / a: {med['b'] / med['a']:.2f}x")

if __name__ == '__main__': main()
