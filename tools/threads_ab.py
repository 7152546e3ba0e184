#!/usr/bin/env python
"""The CPU kernel's two threadings side by side: OpenMP against std::thread (the build a compiler without OpenMP gets,
e.g. Apple's clang), in one process, interleaved, on the same inputs.

    python tools/threads_ab.py [--repeats 20] [--size 40] [--channels 64] [--batch 8]

Builds both kernels in fresh folders (the std::thread one with a compiler wrapper that refuses -fopenmp), loads both,
and times the SASA layer's forward and backward with each in turn; prints the median milliseconds and the ratio.
"""
import argparse, ctypes, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

def build(folder, cxx=None):
    "Build the kernel in a fresh process with its cache in `folder` (and `cxx` as the compiler): the library's path."
    env = {**os.environ, 'SASA_FASTAI_KERNELS': str(folder), **({'CXX': cxx} if cxx else {})}
    code = 'from sasa_fastai.native import build_info; print(build_info()["threads"])'
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, check=True)
    return next(Path(folder).glob('*.so')), out.stdout.strip()

def refusing_compiler(folder):
    "A `c++` that refuses -fopenmp, as Apple's clang does."
    path = Path(folder) / 'c++-without-openmp'
    path.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec c++ "$@"\n')
    path.chmod(0o755)
    return str(path)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--repeats', type=int, default=20); ap.add_argument('--size', type=int, default=40)
    ap.add_argument('--channels', type=int, default=64); ap.add_argument('--batch', type=int, default=8)
    a = ap.parse_args()
    import torch
    from sasa_fastai import native
    from sasa_fastai.layers import SASA2d
    with tempfile.TemporaryDirectory() as d:
        builds = [build(Path(d) / 'omp'), build(Path(d) / 'threads', refusing_compiler(d))]
        loaded = {name: native._declare(ctypes.CDLL(str(so))) for so, name in builds}
        layer = SASA2d(a.channels, a.channels, kernel_size=7, num_heads=8, backend='native')
        x = torch.randn(a.batch, a.channels, a.size, a.size, requires_grad=True)
        def step():
            layer(x).sum().backward()
        times = {name: [] for name in loaded}
        for i in range(a.repeats + 2):
            for name, lib in loaded.items():
                native._library = lib
                t = time.perf_counter(); step(); ms = (time.perf_counter() - t) * 1e3
                if i >= 2: times[name].append(ms)
        med = {n: statistics.median(t) for n, t in times.items()}
    print(f'SASA2d C={a.channels} @ {a.size}x{a.size}, batch {a.batch}, k=7, 8 heads, forward+backward, '
          f'{torch.get_num_threads()} threads, median of {a.repeats} interleaved:')
    for n, m in med.items(): print(f'  {n:12s} {m:8.2f} ms')
    print(f"  std::thread / OpenMP: {med['std::thread'] / med['OpenMP']:.2f}x")

if __name__ == '__main__': main()
