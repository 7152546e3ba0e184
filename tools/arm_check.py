#!/usr/bin/env python
"""ARM: does the CPU kernel compile for aarch64 and compute the same numbers there as on x86-64?

    python tools/arm_check.py        # or `make arm-check`, which first installs the tools with apt-get

Builds tools/kernel_driver.cpp (a driver of the kernel's C entry points, which includes
sasa_fastai/csrc/sasa_cpu.cpp) twice with the kernel's own flags (`sasa_fastai.native.FLAGS`, at -O2): for this
machine (x86-64-v3 where the CPU has it, else -march=native) and, with Debian's cross compiler
(g++-aarch64-linux-gnu), for aarch64 (-march=armv8-a, NEON, linked statically), which runs under qemu-aarch64
(qemu-user). Both run the same problems on the same inputs: float32 with k = 3, 5, 7, zero-padded and masked borders,
a map smaller than the window, a row of several register blocks, float64, and one case whose numbers are denormal.
Every output of the forward (output, log-sum-exp, weights) and of the backward (d qkv, d tables) is compared:
max |arm - x86| / max(1, max |x86|) must stay below 1e-5 in float32 and 1e-12 in float64, and both builds must
flush denormal numbers to zero alike (x86's MXCSR FTZ/DAZ, AArch64's FPCR.FZ: the same count of denormals in every
array; a build that keeps them differs by ~1e-38, which no tolerance sees). One line per array.

Exit status: 0 when every array agrees, 1 when one does not (or a build fails), 77 when the cross compiler or qemu is
missing (the line names what to install).
"""
import argparse, ast, math, os, platform, shutil, subprocess, sys, tempfile, time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / 'tools' / 'kernel_driver.cpp'
TOLERANCE = {'float32': 1e-5, 'float64': 1e-12}
INSTALL = 'apt-get install g++-aarch64-linux-gnu qemu-user (or run `make arm-check`)'
SKIP = 77  # the exit status that test runners (automake, meson) read as "skipped"

def kernel_settings() -> tuple: # (FLAGS, THREADS, X86_LEVELS, kernel source path)
    "The kernel's compiler flags and source from `sasa_fastai.native`, read from native.py where torch is missing."
    sys.path.insert(0, str(ROOT))
    try:
        import sasa_fastai.native as native
        names = vars(native)
        source = native.source_file()
    except ImportError:  # no torch here: the constants are literals in native.py
        tree = ast.parse((ROOT / 'sasa_fastai' / 'native.py').read_text())
        names = {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name) and t.id in ('FLAGS', 'THREADS', 'X86_LEVELS')}
        source = ROOT / 'sasa_fastai' / 'csrc' / 'sasa_cpu.cpp'
    threads = names.get('THREADS') or {'OpenMP': []}  # (older native.py: -fopenmp among the FLAGS)
    return list(names['FLAGS']), dict(threads), dict(names['X86_LEVELS']), Path(source)

def host_march(x86_levels:dict # `sasa_fastai.native.X86_LEVELS`
              ) -> str: # the `-march` of the host build
    "x86-64-v3 (AVX2, vectors twice NEON's width) where this CPU has it, else `native`."
    try: line = next(l for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('flags'))
    except (OSError, StopIteration): return 'native'
    flags = set(line.split(':', 1)[1].split())
    need = [f for level in ('x86-64-v2', 'x86-64-v3') for f in x86_levels.get(level, ())]
    return 'x86-64-v3' if platform.machine() == 'x86_64' and set(need) <= flags else 'native'

def tools(cross:str, # the aarch64 cross compiler
          host:str # the host's C++ compiler
         ) -> tuple: # (cross compiler, qemu, host compiler) paths, or a one-line message naming what is missing
    "Find the three programs the check runs."
    qemu = shutil.which('qemu-aarch64') or shutil.which('qemu-aarch64-static')
    found = shutil.which(cross), qemu, shutil.which(host)
    if not found[0] or not found[1]:
        missing = ' and '.join(n for n, p in ((cross, found[0]), ('qemu-aarch64', qemu)) if not p)
        return f'arm check skipped: {missing} not found; install them: {INSTALL}'
    if not found[2]: return f'arm check skipped: no host C++ compiler {host!r}: install g++ (or set CXX)'
    return found

def _noise(line):
    "The static libgomp's linker note on dlopen: true of every static OpenMP program, nothing to do with the kernel."
    return 'libgomp.a' in line or "Using 'dlopen' in statically linked" in line

def build(jobs:dict # name: the compiler command
         ) -> dict: # name: (exit status, the compiler's messages)
    "Run the compilers at once (one per core): each takes a few seconds."
    procs = {n: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n, cmd in jobs.items()}
    done = {}
    for n, p in procs.items():
        out = p.communicate()[0]
        done[n] = p.returncode, '\n'.join(l for l in out.splitlines() if not _noise(l))
    return done

def read_arrays(path:Path) -> tuple: # (the build's header fields, {name: (dtype, array)})
    "Parse what kernel_driver writes: a header line, then per array a line `name dtype count` and its raw numbers."
    data, pos, arrays = path.read_bytes(), 0, {}
    def line():
        nonlocal pos
        end = data.index(b'\n', pos)
        text, pos = data[pos:end].decode(), end + 1
        return text
    head = dict(f.split('=', 1) for f in line().split()[1:])
    while (l := line()) != 'end':
        name, dtype, n = l.split()
        a = array('f' if dtype == 'float32' else 'd')
        size = a.itemsize * int(n)
        a.frombytes(data[pos:pos + size]); pos += size
        arrays[name] = dtype, a
    return head, arrays

def worst(a, # the aarch64 numbers
          b # the reference (x86-64) numbers
         ) -> tuple: # (max |a - b| / max(1, max |b|), the same over max |b| alone)
    "The error of `a` against `b`, scaled by the reference's size (a NaN or an infinity on one side only: inf)."
    diff, top = 0.0, 0.0
    for x, y in zip(a, b):
        if x != y:
            d = abs(x - y)
            diff = d if d > diff else diff
            if math.isnan(d) and not (math.isnan(x) and math.isnan(y)): diff = math.inf
        if abs(y) > top: top = abs(y)
    if len(a) != len(b): diff = math.inf
    return diff / max(1.0, top), (diff / top if top else diff)

TINIEST = {'float32': 2.0 ** -126, 'float64': 2.0 ** -1022}  # the smallest normal numbers

def denormals(a, dtype) -> int:
    "How many numbers of `a` are denormal (the kernel flushes them to zero: x86's FTZ/DAZ, AArch64's FPCR.FZ)."
    return sum(1 for x in a if x and abs(x) < TINIEST[dtype])

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cross', default=os.environ.get('CROSS_CXX', 'aarch64-linux-gnu-g++'), help='aarch64 compiler')
    p.add_argument('--arm-march', default='armv8-a', help='-march of the aarch64 build')
    p.add_argument('--march', default=None, help='-march of the host build (default: x86-64-v3 where possible)')
    p.add_argument('--threads', type=int, default=2, help="the kernel's threads in both runs")
    p.add_argument('--source', type=Path, default=None, help="the kernel's source (default: the package's)")
    p.add_argument('--thread-model', default=None,
                   help="how the kernel runs threads, a key of native.THREADS (default: the first, OpenMP)")
    p.add_argument('--opt', default='-O2', help='optimisation level of both builds (the kernel ships at -O3)')
    p.add_argument('--keep', type=Path, default=None, help='keep the builds and their outputs in this folder')
    a = p.parse_args(argv)
    start = time.time()
    found = tools(a.cross, os.environ.get('CXX', 'c++'))
    if isinstance(found, str): print(found); return SKIP
    cross, qemu, host = found
    flags, threads, levels, source = kernel_settings()
    source, model = (a.source or source).resolve(), a.thread_model or next(iter(threads))
    if model not in threads: print(f'--thread-model: one of {", ".join(threads)}'); return 2
    flags = [f for f in flags if f not in ('-shared', '-fPIC')] + threads[model]
    flags += [a.opt, '-pthread', f'-DSASA_KERNEL="{source}"']  # (-pthread: a static std::thread needs it)
    march = a.march or host_march(levels)
    with tempfile.TemporaryDirectory() as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        exe = {'x86': work / 'driver-host', 'arm': work / 'driver-aarch64'}
        jobs = {'x86': [host, *flags, f'-march={march}', str(DRIVER), '-o', str(exe['x86'])],
                'arm': [cross, *flags, f'-march={a.arm_march}', '-static', str(DRIVER), '-o', str(exe['arm'])]}
        t0 = time.time()
        built = build(jobs)
        t1 = time.time()
        for n, (rc, msg) in built.items():
            if msg: print(f"{n} build ({' '.join(jobs[n][:1] + jobs[n][-4:-2])}) says:\n{msg}")
            if rc: print(f'arm check FAILED: the {n} build failed (exit status {rc})'); return 1
        outs = {n: work / f'{n}.bin' for n in exe}
        runs = {'x86': [str(exe['x86'])], 'arm': [qemu, str(exe['arm'])]}
        procs = {n: subprocess.Popen([*cmd, str(outs[n]), str(a.threads)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True) for n, cmd in runs.items()}
        for n, pr in procs.items():
            msg = pr.communicate()[0]
            if pr.returncode:
                print(f"arm check FAILED: the {n} driver ({' '.join(runs[n])}) exited with {pr.returncode}\n{msg}")
                return 1
        (hx, ref), (ha, got) = read_arrays(outs['x86']), read_arrays(outs['arm'])
        t2 = time.time()
    print(f"{platform.machine()} build:  isa={hx['isa']} vector_bytes={hx['vector_bytes']} "
          f"({Path(host).name} -march={march} {a.opt}, {model})")
    print(f"aarch64 build: isa={ha['isa']} vector_bytes={ha['vector_bytes']} ({Path(cross).name} "
          f"-march={a.arm_march} {a.opt} -static, {model}, run by {Path(qemu).name})")
    bad, top = [], {}
    for name, (dtype, b) in ref.items():
        if name not in got: print(f'{name:28s} missing from the aarch64 output'); bad.append(name); continue
        err, rel = worst(got[name][1], b)
        tiny = denormals(got[name][1], dtype), denormals(b, dtype)  # both builds must flush them alike
        ok = err < TOLERANCE[dtype] and tiny[0] == tiny[1]
        top[dtype] = max(top.get(dtype, 0.0), err)
        if not ok: bad.append(name)
        flush = '' if tiny == (0, 0) else f'  denormals: aarch64 {tiny[0]}, x86 {tiny[1]}'
        print(f"{name:28s} {dtype} {len(b):6d} numbers  worst {err:.2e} (over max|x86| alone {rel:.2e})  "
              f"{'ok' if ok else 'DIFFERS'}{flush}")
    bad += [f'{n} (aarch64 only)' for n in got if n not in ref]
    worst_line = ', '.join(f'worst {e:.1e} in {t} (limit {TOLERANCE[t]:.0e})' for t, e in sorted(top.items()))
    secs = f'{time.time() - start:.1f} s (builds {t1 - t0:.1f} s, runs {t2 - t1:.1f} s)'
    if bad:
        print(f'arm check FAILED: {len(bad)} of {len(ref)} arrays differ ({", ".join(bad)}); {worst_line}; '
              f'{secs}')
        return 1
    print(f'arm check passed: all {len(ref)} arrays agree; {worst_line}; {secs}')
    return 0

if __name__ == '__main__': sys.exit(main())
