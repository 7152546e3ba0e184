// sasa_fastai's CPU kernel: fused local self-attention (SASA, Ramachandran et al. 2019), forward and backward.
// Built on first use by sasa_fastai/native.py (documented in nbs/02_native.ipynb) and called through ctypes from the
// registered op sasa_fastai::sasa_fwd / sasa_bwd (nbs/05_ops.ipynb). No k*k copies of keys or values; every inner loop
// runs along an image row (vectorised), with the sums over channels and window offsets kept in registers.
// Layout (per-head planes): q, k, v are [B, N, D, H, W] with contiguous planes and a batch stride `bs` (elements),
// so the three can be views into one projection output; out, dq, dk, dv are [B, N, D, H, W] contiguous.
// rel_h, rel_w are the relative embedding tables [K, N, D/2] (row offsets, column offsets); q.r splits into
// rh[a] = q[:D/2] . rel_h[a] and rw[b] = q[D/2:] . rel_w[b], computed here per head (2K numbers per pixel, never
// stored).
// lse: [B, N, H, W]. wts (optional): [B, N, K*K, H, W].
// The logit of query (i, j) for the key (i+a-h, j+b-h), h = K/2, is q.k + rh[a] + rw[b]. Outside the image the key
// and value are zero (the paper's zero-padded memory), so the logit is rh[a] + rw[b]; with `masked` the position is
// left out of the softmax instead.
// One task is one (image, head): its key and value planes are copied once into a zero-padded scratch plane, so the
// window loops need no bounds checks.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <algorithm>
#include <limits>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

// Denormal numbers (below ~1e-38 in float32) appear as training goes on (tiny weights times tiny values) and make x86
// arithmetic many times slower. Each thread of the kernel treats them as zero while it runs, then restores its state
// (on ARM too, so that both compute the same numbers).
struct FlushDenormals {
#if defined(__SSE__) || defined(__x86_64__)
  unsigned int saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }  // flush-to-zero (bit 15) and denormals-are-zero (bit 6)
  ~FlushDenormals() { _mm_setcsr(saved); }
#elif defined(__aarch64__)
  uint64_t saved = fpcr();
  FlushDenormals() { set_fpcr(saved | (1ull << 24)); }  // FZ (bit 24): denormal inputs and results are zero
  ~FlushDenormals() { set_fpcr(saved); }
  static uint64_t fpcr() { uint64_t v; asm volatile("mrs %0, fpcr" : "=r"(v)); return v; }
  static void set_fpcr(uint64_t v) { asm volatile("msr fpcr, %0" : : "r"(v)); }
#endif
};

static inline double exp_(double x) { return std::exp(x); }

static inline float log_(float x) {
  // log(x) for normal x > 0, branch-free so that loops vectorise (Cephes polynomial, relative error ~1e-7): the
  // softmax takes the log of every pixel's sum, which the library's scalar logf made a third of the softmax's time.
  int32_t bits; std::memcpy(&bits, &x, 4);
  float e = (float)(((bits >> 23) & 0xff) - 126);  // x = m * 2^e, m in [0.5, 1)
  bits = (bits & 0x007fffff) | 0x3f000000;
  float m; std::memcpy(&m, &bits, 4);
  const bool low = m < 0.707106781f;  // m in [sqrt(1/2), sqrt(2)) after this
  e = low ? e - 1.0f : e;
  m = (low ? m + m : m) - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f; y = y * m + 1.1676998740e-1f; y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f; y = y * m - 1.6668057665e-1f; y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f; y = y * m + 3.3333331174e-1f;
  y = y * m * z - 2.12194440e-4f * e - 0.5f * z;
  return m + y + 0.693359375f * e;
}
static inline double log_(double x) { return std::log(x); }

// Where the time goes (`sasa_bench`'s breakdown): when the caller passes a `prof` array, each thread adds the seconds
// it spent in each phase of the kernel to it (PHASES_FWD / PHASES_BWD entries); with `prof` null nothing is timed.
static double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
struct Timer {
  double* acc; double t;
  explicit Timer(double* a) : acc(a), t(a ? seconds() : 0) {}
  void lap(int phase) { if (acc) { const double now = seconds(); acc[phase] += now - t; t = now; } }
};
static std::mutex profile_lock;
static void add_profile(double* prof, const double* mine, int n) {
  if (!prof) return;
  std::lock_guard<std::mutex> hold(profile_lock);
  for (int i = 0; i < n; ++i) prof[i] += mine[i];
}

// Threads: OpenMP where the compiler has it (`-fopenmp`), else std::thread (Apple's clang has no OpenMP); native.py
// builds with the first that compiles and says which (`sasa_threads`). `parallel(n, body)` runs body() on n threads
// at once; the threads take tasks one at a time from a shared `Tasks` counter, so a head that finishes early takes the
// next (which (image, head) a thread computes never changes a result: every task writes only its own outputs).
template <typename F> static void parallel(int nthreads, F&& body) {
  nthreads = std::max(nthreads, 1);
#if defined(_OPENMP)
#pragma omp parallel num_threads(nthreads)
  body();
#else
  std::vector<std::thread> others;
  for (int i = 1; i < nthreads; ++i) others.emplace_back([&body] { body(); });
  body();
  for (std::thread& t : others) t.join();
#endif
}
struct Tasks {
  std::atomic<long> next{0};
  const long n;
  explicit Tasks(long n) : n(n) {}
  bool take(long& t) { t = next.fetch_add(1, std::memory_order_relaxed); return t < n; }
};
constexpr int PHASES_FWD = 4;  // set-up (padded planes, relative logits), logits, softmax, weighted sum of values
constexpr int PHASES_BWD = 5;  // set-up, logits (recomputed), d logits (dout.v, softmax), dq and the tables, key pass

// The vector width the compiler targets (`-march=`, see native.py): one register holds 16 floats with AVX-512, 8 with
// AVX/AVX2, 4 with SSE (x86-64's baseline) and NEON (AArch64). A register block of pixels is exactly one register:
// blocks wider than the hardware's vectors are split by the compiler, and on AVX2 that split code ran 2x slower.
#if defined(__AVX512F__)
constexpr int VEC_BYTES = 64;
#elif defined(__AVX__)
constexpr int VEC_BYTES = 32;
#else
constexpr int VEC_BYTES = 16;
#endif
// Vector registers the target has: 32 with AVX-512 and on AArch64, 16 on other x86.
#if defined(__AVX512F__) || defined(__aarch64__)
constexpr int VEC_REGS = 32;
#else
constexpr int VEC_REGS = 16;
#endif
constexpr int JB = VEC_BYTES / sizeof(float);  // pixels per register block: every inner loop below has this trip count

template <typename T> struct Problem {
  const T *q, *k, *v, *rel_h, *rel_w;
  long bs;  // batch stride of q, k, v
  int B, N, D, H, W, K, masked;
  int h() const { return K / 2; }
  long HW() const { return (long)H * W; }
  int Wp() const { return W + 2 * h(); }                        // padded row
  long HWp() const { return (long)(H + 2 * h()) * Wp(); }       // padded plane
  int Wr() const { return (W + JB - 1) / JB * JB; }             // a row of per-pixel scratch, whole blocks
  const T* plane(const T* t, int b, int n) const { return t + b * bs + (long)n * D * HW(); }
  long head(int b, int n) const { return (long)b * N + n; }
};

// Scratch copies of `planes` H x W planes, zero-padded by h (value `fill` outside the image), plus JB elements of
// slack so whole register blocks may read past the last pixel. Pixel (i, j) sits at (i + h) * Wp + h + j. Only the
// image part is written after the first task of a shape: the border keeps its fill (on small maps the border is most
// of the plane: 60 of 64 numbers at 2x2, k = 7).
template <typename T> struct Padded {
  std::vector<T> buf; long HWp = 0; int Wp = 0, H = -1, W = -1, K = -1; T filled = T(0);
  void shape(const Problem<T>& P, int planes, T fill) {  // (re)fill the whole buffer when the shape changes
    const long n = planes * P.HWp() + JB;
    if (H == P.H && W == P.W && K == P.K && (long)buf.size() == n && filled == fill) return;
    H = P.H; W = P.W; K = P.K; Wp = P.Wp(); HWp = P.HWp(); filled = fill;
    buf.assign(n, fill);
  }
  void load(const Problem<T>& P, const T* src, int planes, T fill) {
    const int h = P.h();
    shape(P, planes, fill);
    for (int c = 0; c < planes; ++c)
      for (int i = 0; i < P.H; ++i)
        std::memcpy(&buf[c * HWp + (long)(i + h) * Wp + h], src + c * P.HW() + (long)i * P.W, sizeof(T) * P.W);
  }
  // the relative logits of head n: plane a = sum_d table[a, n, d] * q[half * D/2 + d] (zero outside the image)
  void rel(const Problem<T>& P, const T* q, const T* table, int n, int half) {
    const int h = P.h(), D2 = P.D / 2;
    shape(P, P.K, T(0));
    for (int a = 0; a < P.K; ++a)
      for (int d = 0; d < D2; ++d) {
        const T c = table[((long)a * P.N + n) * D2 + d];
        const T* qd = q + (long)(half * D2 + d) * P.HW();
        for (int i = 0; i < P.H; ++i) {
          T* __restrict dst = &buf[a * HWp + (long)(i + h) * Wp + h];
          const T* __restrict src = qd + (long)i * P.W;
          if (d == 0) for (int j = 0; j < P.W; ++j) dst[j] = c * src[j];
          else for (int j = 0; j < P.W; ++j) dst[j] += c * src[j];
        }
      }
  }
  const T* at(int c, long idx) const { return buf.data() + c * HWp + idx; }
};

// The planes one task (image b, head n) works on: queries, keys, values and the relative logits, zero-padded.
template <typename T> struct HeadPlanes {
  Padded<T> Q, Kp, Vp, RH, RW;
  void load(const Problem<T>& P, int b, int n) {
    const T* q = P.plane(P.q, b, n);
    Q.load(P, q, P.D, T(0)); Kp.load(P, P.plane(P.k, b, n), P.D, T(0)); Vp.load(P, P.plane(P.v, b, n), P.D, T(0));
    RH.rel(P, q, P.rel_h, n, 0); RW.rel(P, q, P.rel_w, n, 1);
  }
};

// Each thread's scratch lives on after a call (OpenMP keeps its threads), so later calls reuse its pages: fresh
// pages would cost a page fault per 4 KiB, which at these sizes weighs as much as a window loop.
template <typename T> struct Scratch {
  std::vector<T> lo, dsm, lsr, gr, Ps, Gs, zero;
  HeadPlanes<T> hp;
  Padded<T> Go;
};
template <typename T> static Scratch<T>& scratch() { static thread_local Scratch<T> s; return s; }

template <typename T> static inline void store(T* dst, const T* acc, int nj) {
  for (int jj = 0; jj < nj; ++jj) dst[jj] = acc[jj];
}

// Register blocks. The window loops are bound by loads, not by multiply-adds: one product of two streamed operands
// costs two loads. Each loop below keeps one operand in a register and reuses it across a block of accumulators:
// RB window offsets of one row (the logits and d logits) or DB channels (the weighted sums), JB pixels each. Each
// block is one float register, so RB = 8 accumulators, the reused operand and a streamed one take 10 registers: they
// fit the 16 of AVX2 and SSE as well as the 32 of AVX-512 and NEON, and a window row of k <= 8 is one block.
constexpr int RB = 8;
constexpr int DB = RB;

// JB lanes as one value (GCC/Clang vector extension: one AVX-512 register for float, two AVX2 ones), so that the
// blocks below stay in registers; unaligned loads and stores go through memcpy.
template <typename T> struct Lanes { typedef T V __attribute__((vector_size(JB * sizeof(T)))); };
template <typename T> using V = typename Lanes<T>::V;
template <typename T> static inline V<T> vload(const T* p) { V<T> v; std::memcpy(&v, p, sizeof v); return v; }
template <typename T> static inline void vstore(T* p, V<T> v) { std::memcpy(p, &v, sizeof v); }
template <typename VT> static inline VT vmax(VT a, VT b) { return a > b ? a : b; }
// exp of every lane, for x <= ~0 (softmax logits minus their maximum). float32: branch-free in vector instructions, the
// Cephes polynomial (relative error ~2e-7), 0 below -87; float64, which only the tests use, lane by lane.
static inline V<double> vexp(V<double> x) {
  V<double> r;
  for (int j = 0; j < JB; ++j) r[j] = exp_(x[j]);
  return r;
}
static inline V<float> vexp(V<float> x) {
  typedef int32_t VI __attribute__((vector_size(sizeof(V<float>))));
  const V<float> lo = V<float>{} - 87.0f;
  const V<float> y = x > lo ? x : lo;
  const V<float> n = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const V<float> r = y - n * 0.693359375f + n * 2.12194440e-4f;
  V<float> p = V<float>{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  const V<float> e = p * (V<float>)bits;
  return x < lo ? V<float>{} : e;
}

// acc[r][jj] += sum_d x[d*xs + jj] * y[d*ys + r + jj], r < R: the dot products over D channels of JB pixels with R
// neighbouring window offsets along a row (y is the padded key or value row, offset b0 at y[0]).
template <typename T, int R>
static inline void dots_fixed(const T* __restrict x, long xs, const T* __restrict y, long ys, int D, T (*acc)[JB]) {
  V<T> a[R];
  for (int r = 0; r < R; ++r) a[r] = vload(acc[r]);
  for (int d = 0; d < D; ++d) {
    const V<T> xv = vload(x + d * xs);
    const T* yd = y + d * ys;
    for (int r = 0; r < R; ++r) a[r] += xv * vload(yd + r);
  }
  for (int r = 0; r < R; ++r) vstore(acc[r], a[r]);
}

template <typename T>
static inline void dots(int R, const T* x, long xs, const T* y, long ys, int D, T (*acc)[JB]) {
  switch (R) {  // a fixed trip count for every block size, so each is unrolled into registers
    case 1: return dots_fixed<T, 1>(x, xs, y, ys, D, acc);
    case 2: return dots_fixed<T, 2>(x, xs, y, ys, D, acc);
    case 3: return dots_fixed<T, 3>(x, xs, y, ys, D, acc);
    case 4: return dots_fixed<T, 4>(x, xs, y, ys, D, acc);
    case 5: return dots_fixed<T, 5>(x, xs, y, ys, D, acc);
    case 6: return dots_fixed<T, 6>(x, xs, y, ys, D, acc);
    case 7: return dots_fixed<T, 7>(x, xs, y, ys, D, acc);
    case 8: return dots_fixed<T, 8>(x, xs, y, ys, D, acc);
  }
}

// Logits of query row i of one head for every window offset o = a*K + b, into lo[o*Wr + j] (whole register blocks:
// j < P.Wr()). Shared by the forward and the query-side backward, so both see identical numbers.
template <typename T>
static void row_logits(const Problem<T>& P, const Padded<T>& Q, const Padded<T>& Kp, const Padded<T>& RH,
                       const Padded<T>& RW, int i, T* lo, long Wr) {
  const int K = P.K, W = P.W, D = P.D, Wp = P.Wp(), h = P.h();
  const long qrow = (long)(i + h) * Wp + h;
  for (int a = 0; a < K; ++a) {
    const long krow = (long)(i + a) * Wp;
    for (int j0 = 0; j0 < W; j0 += JB) {
      const T* ra = RH.at(a, qrow + j0);
      for (int b0 = 0; b0 < K; b0 += RB) {
        const int R = std::min(RB, K - b0);
        T acc[RB][JB];
        for (int r = 0; r < R; ++r) {
          const T* rb = RW.at(b0 + r, qrow + j0);
          for (int jj = 0; jj < JB; ++jj) acc[r][jj] = ra[jj] + rb[jj];
        }
        dots(R, Q.at(0, qrow + j0), Q.HWp, Kp.at(0, krow + b0 + j0), Kp.HWp, D, acc);
        for (int r = 0; r < R; ++r) {
          T* L = lo + (long)(a * K + b0 + r) * Wr + j0;
          for (int jj = 0; jj < JB; ++jj) L[jj] = acc[r][jj];
        }
      }
    }
    if (P.masked) {  // keys outside the image leave the softmax
      const T ninf = -std::numeric_limits<T>::infinity();
      const int ii = i + a - h;
      for (int bb = 0; bb < K; ++bb) {
        T* L = lo + (long)(a * K + bb) * Wr;
        if (ii < 0 || ii >= P.H) std::fill(L, L + W, ninf);
        else {
          for (int j = 0; j < std::min(W, h - bb); ++j) L[j] = ninf;
          for (int j = std::max(0, W + h - bb); j < W; ++j) L[j] = ninf;
        }
      }
    }
  }
}

// out[c][jj] = sum_o A[o][j0 + jj] * x[c*xs + off[o] + jj], c < C: the weighted sum over the window for C channels
// of JB pixels at once (the weights of each offset loaded once for all C).
template <typename T, int C>
static inline void wsum_fixed(const T* const* A, int j0, const T* __restrict x, long xs, const long* off, int KK,
                              T* out, long os, int nj) {
  V<T> acc[C] = {};
  for (int o = 0; o < KK; ++o) {
    const V<T> av = vload(A[o] + j0);
    const T* xo = x + off[o];
    for (int c = 0; c < C; ++c) acc[c] += av * vload(xo + c * xs);
  }
  for (int c = 0; c < C; ++c) {
    T lanes[JB];
    vstore(lanes, acc[c]);
    store(out + c * os, lanes, nj);
  }
}

// out[d][i][j] = sum_o A[o][j] * X[d] at the window position o of pixel (i, j): the weighted sum over the window.
// `base` is the padded index of offset 0 for pixel (i, 0), off[o] the offsets' padded displacements, A[o] the row of
// weights of offset o (readable for whole register blocks).
template <typename T>
static void window_sum(const Problem<T>& P, const T* const* A, const Padded<T>& X, long base, const long* off,
                       T* out) {
  const int KK = P.K * P.K, W = P.W, D = P.D;
  const long HW = P.HW();
  for (int j0 = 0; j0 < W; j0 += JB) {
    const int nj = std::min(JB, W - j0);
    for (int d0 = 0; d0 < D; d0 += DB) {
      const T* x = X.at(d0, base + j0); T* o = out + d0 * HW + j0;
      switch (std::min(DB, D - d0)) {
        case 1: wsum_fixed<T, 1>(A, j0, x, X.HWp, off, KK, o, HW, nj); break;
        case 2: wsum_fixed<T, 2>(A, j0, x, X.HWp, off, KK, o, HW, nj); break;
        case 3: wsum_fixed<T, 3>(A, j0, x, X.HWp, off, KK, o, HW, nj); break;
        case 4: wsum_fixed<T, 4>(A, j0, x, X.HWp, off, KK, o, HW, nj); break;
        case 5: wsum_fixed<T, 5>(A, j0, x, X.HWp, off, KK, o, HW, nj); break;
        case 6: wsum_fixed<T, 6>(A, j0, x, X.HWp, off, KK, o, HW, nj); break;
        case 7: wsum_fixed<T, 7>(A, j0, x, X.HWp, off, KK, o, HW, nj); break;
        case 8: wsum_fixed<T, 8>(A, j0, x, X.HWp, off, KK, o, HW, nj); break;
      }
    }
  }
}

template <typename T>
static std::vector<long> offsets(const Problem<T>& P, bool reversed) {
  // padded displacement of window offset (a, b); reversed: of the query whose window holds a key at offset (a, b)
  std::vector<long> off(P.K * P.K);
  for (int a = 0; a < P.K; ++a)
    for (int b = 0; b < P.K; ++b)
      off[a * P.K + b] = reversed ? (long)(P.K - 1 - a) * P.Wp() + (P.K - 1 - b) : (long)a * P.Wp() + b;
  return off;
}

template <typename T>
static void forward(const Problem<T>& P, T* out, T* lse, T* wts, int nthreads, double* prof) {
  const int K = P.K, KK = K * K, W = P.W, D = P.D, Wr = P.Wr();
  const long HW = P.HW();
  const std::vector<long> off = offsets(P, false);
  Tasks tasks((long)P.B * P.N);
  parallel(nthreads, [&] {
    FlushDenormals ftz;
    Scratch<T>& S = scratch<T>();
    std::vector<T>& lo = S.lo;
    lo.assign((long)KK * Wr, T(0));
    std::vector<const T*> rows(KK);  // the weights' row of each offset
    for (int o = 0; o < KK; ++o) rows[o] = lo.data() + (long)o * Wr;
    HeadPlanes<T>& hp = S.hp;
    double mine[PHASES_FWD] = {};
    Timer tm(prof ? mine : nullptr);
    for (long t; tasks.take(t);) {
      const int b = t / P.N, n = t % P.N;
      const long hd = P.head(b, n);
      hp.load(P, b, n);
      tm.lap(0);
      for (int i = 0; i < P.H; ++i) {
        row_logits(P, hp.Q, hp.Kp, hp.RH, hp.RW, i, lo.data(), Wr);
        tm.lap(1);
        T* ls = lse + hd * HW + (long)i * W;
        for (int j0 = 0; j0 < W; j0 += JB) {  // the softmax over the window, JB pixels in registers
          const int nj = std::min(JB, W - j0);
          T* L = lo.data() + j0;
          V<T> mx = vload(L);
          for (int o = 1; o < KK; ++o) mx = vmax(mx, vload(L + (long)o * Wr));
          V<T> sum = {};
          for (int o = 0; o < KK; ++o) {
            const V<T> e = vexp(vload(L + (long)o * Wr) - mx);
            vstore(L + (long)o * Wr, e); sum += e;
          }
          T ml[JB], sl[JB];
          vstore(ml, mx); vstore(sl, sum);
          for (int jj = 0; jj < nj; ++jj) ls[j0 + jj] = ml[jj] + log_(sl[jj]);
          const V<T> inv = T(1) / sum;
          for (int o = 0; o < KK; ++o) {
            vstore(L + (long)o * Wr, vload(L + (long)o * Wr) * inv);  // now the attention weights
            if (wts) std::memcpy(wts + (hd * KK + o) * HW + (long)i * W + j0, L + (long)o * Wr, sizeof(T) * nj);
          }
        }
        tm.lap(2);
        window_sum(P, rows.data(), hp.Vp, (long)i * P.Wp(), off.data(), out + hd * D * HW + (long)i * W);
        tm.lap(3);
      }
    }
    add_profile(prof, mine, PHASES_FWD);
  });
}

// Backward, per (image, head). Query pass: recompute the weights p from the log-sum-exp, ds = p * (dout.v - dsum)
// with dsum = dout.out, giving dq (through q.k and q.r) and the head's share of the relative tables' gradient
// (drel: [B, N, 2, K, D/2], summed over images by the caller). Key pass: every key gathers from the k*k queries whose
// window holds it, dk = sum ds * q and dv = sum p * dout: the same window sum as the forward's, with reversed offsets.
// Key row ii needs query rows ii - h .. ii + h, so it runs as soon as query row ii + h is done, and p and ds are kept
// for the last K query rows only: a ring of K slots of K*K rows each (in cache), written in order, each row with h
// zeros on both sides (the queries outside the image). No scatter, no scatter-add, no races between threads.
template <typename T>
static void backward(const Problem<T>& P, const T* out, const T* lse, const T* dout, T* dq, T* dk, T* dv, long gbs,
                     T* drel, int nthreads, double* prof) {
  const int K = P.K, KK = K * K, W = P.W, D = P.D, D2 = D / 2, h = P.h(), Wp = P.Wp(), Wr = P.Wr();
  const long HW = P.HW();
  const long Wq = Wr + 2 * h, slot = KK * Wq;  // a ring row: h zeros, a query row in whole blocks, h zeros
  const std::vector<long> off = offsets(P, false), qoff = offsets(P, true);
  Tasks tasks((long)P.B * P.N);
  parallel(nthreads, [&] {
    FlushDenormals ftz;
    Scratch<T>& S = scratch<T>();
    std::vector<T> &dsm = S.dsm, &lsr = S.lsr, &gr = S.gr, &Ps = S.Ps, &Gs = S.Gs;
    dsm.assign(Wr, T(0)); gr.assign(2 * K * Wr, T(0));
    lsr.assign(Wr, std::numeric_limits<T>::infinity());  // the row's log-sum-exp, +inf past the row: p = 0 there
    Ps.assign(K * slot + JB, T(0)); Gs.assign(K * slot + JB, T(0));  // p and ds of the last K query rows
    S.zero.assign(Wq + JB, T(0));  // a ring row of zeros: the queries above and below the image
    std::vector<const T*> rows(KK), prows(KK), grows(KK);
    HeadPlanes<T>& hp = S.hp;
    Padded<T>& Go = S.Go;
    const Padded<T> &Q = hp.Q, &Kp = hp.Kp, &Vp = hp.Vp, &RH = hp.RH, &RW = hp.RW;
    double mine[PHASES_BWD] = {};
    Timer tm(prof ? mine : nullptr);
    auto key_row = [&](int ii, T* DK, T* DV) {  // dk and dv of key row ii from the ring
      for (int a = 0; a < K; ++a) {
        const int i = ii - a + h;  // the query row whose offset (a, b) reaches key row ii
        for (int b = 0; b < K; ++b) {
          const long col = 2 * h - b;  // key column jj is query column jj - b + h, at h + jj - b + h in a ring row
          const int o = a * K + b;  // qoff[o]: where that query sits in Q and Go, seen from key row ii
          if (i < 0 || i >= P.H) { prows[o] = grows[o] = S.zero.data() + col; continue; }
          const long at = (long)(i % K) * slot + (long)(a * K + b) * Wq + col;
          prows[o] = &Ps[at]; grows[o] = &Gs[at];
        }
      }
      window_sum(P, grows.data(), Q, (long)ii * Wp, qoff.data(), DK + (long)ii * W);
      window_sum(P, prows.data(), Go, (long)ii * Wp, qoff.data(), DV + (long)ii * W);
    };
    for (long t; tasks.take(t);) {
      const int b = t / P.N, n = t % P.N;
      const long hd = P.head(b, n);
      hp.load(P, b, n);
      T* dR = drel + hd * 2 * K * D2;  // this (image, head)'s slot: [2][K][D/2]
      std::fill(dR, dR + 2 * K * D2, T(0));
      const T* Qh = P.plane(P.q, b, n);
      const long g0 = b * gbs + (long)n * D * HW;
      T *DQ = dq + g0, *DK = dk + g0, *DV = dv + g0;
      Go.load(P, dout + hd * D * HW, D, T(0));
      const T* O = out + hd * D * HW;
      const T* GO = dout + hd * D * HW;
      tm.lap(0);
      for (int i = 0; i < P.H; ++i) {
        const long row = (long)i * W, qrow = (long)(i + h) * Wp + h;
        T* lo = &Gs[(long)(i % K) * slot + h];  // ds of this row, in its ring slot (first the logits)
        T* pr = &Ps[(long)(i % K) * slot + h];  // p of this row
        for (int o = 0; o < KK; ++o) rows[o] = lo + o * Wq;
        const T* ls = lse + hd * HW + row;
        std::fill(dsm.begin(), dsm.end(), T(0));
        for (int d = 0; d < D; ++d) for (int j = 0; j < W; ++j) dsm[j] += GO[d * HW + row + j] * O[d * HW + row + j];
        row_logits(P, Q, Kp, RH, RW, i, lo, Wq);
        tm.lap(1);
        for (int j = 0; j < W; ++j) lsr[j] = ls[j];
        for (int a = 0; a < K; ++a)  // lo <- d loss / d logit = p * (dout.v - dsum); lanes past the row get 0
          for (int j0 = 0; j0 < W; j0 += JB)
            for (int b0 = 0; b0 < K; b0 += RB) {
              const int R = std::min(RB, K - b0);
              T dp[RB][JB] = {};
              dots(R, Go.at(0, qrow + j0), Go.HWp, Vp.at(0, (long)(i + a) * Wp + b0 + j0), Vp.HWp, D, dp);
              const V<T> l = vload(&lsr[j0]), dsum = vload(&dsm[j0]);
              for (int r = 0; r < R; ++r) {
                const long at = (long)(a * K + b0 + r) * Wq + j0;
                const V<T> p = vexp(vload(lo + at) - l);
                vstore(pr + at, p); vstore(lo + at, p * (vload(dp[r]) - dsum));
              }
            }
        tm.lap(2);
        for (int o = 0; o < 2 * K; ++o) std::fill(&gr[(long)o * Wr], &gr[(long)o * Wr] + W, T(0));
        for (int a = 0; a < K; ++a)  // d loss / d rh[a] and / d rw[b]: sums of ds over the window's rows and columns
          for (int bb = 0; bb < K; ++bb) {
            const T* L = lo + (long)(a * K + bb) * Wq;
            T* __restrict gh = &gr[(long)a * Wr]; T* __restrict gw = &gr[(long)(K + bb) * Wr];
            for (int j = 0; j < W; ++j) { gh[j] += L[j]; gw[j] += L[j]; }
          }
        window_sum(P, rows.data(), Kp, (long)i * Wp, off.data(), DQ + row);
        // through q.r: dq[half] += sum_a g[a] table[a]; drel[a] += sum_j g[a] q[half]
        for (int half = 0; half < 2; ++half)
          for (int a = 0; a < K; ++a) {
            const T* g = &gr[(long)(half * K + a) * Wr];
            const T* table = (half ? P.rel_w : P.rel_h) + ((long)a * P.N + n) * D2;
            for (int d = 0; d < D2; ++d) {
              T* __restrict dqd = DQ + (long)(half * D2 + d) * HW + row;
              const T* __restrict qd = Qh + (long)(half * D2 + d) * HW + row;
              const T td = table[d];
              V<T> acc = {};  // the sum over the row in JB lanes (a scalar sum would not vectorise)
              int j = 0;
              for (; j + JB <= W; j += JB) {
                const V<T> gj = vload(g + j);
                vstore(dqd + j, vload(dqd + j) + gj * td);
                acc += gj * vload(qd + j);
              }
              T sum = 0, lanes[JB];
              for (; j < W; ++j) { dqd[j] += g[j] * td; sum += g[j] * qd[j]; }
              vstore(lanes, acc);
              for (int jj = 0; jj < JB; ++jj) sum += lanes[jj];
              dR[(half * K + a) * D2 + d] += sum;
            }
          }
        tm.lap(3);
        if (i >= h) { key_row(i - h, DK, DV); tm.lap(4); }
      }
      for (int ii = std::max(0, P.H - h); ii < P.H; ++ii) key_row(ii, DK, DV);
      tm.lap(4);
    }
    add_profile(prof, mine, PHASES_BWD);
  });
}

#define SASA_API(T, SFX)                                                                                              \
  extern "C" void sasa_forward_##SFX(const T* q, const T* k, const T* v, const T* rel_h, const T* rel_w, long bs,     \
                                     int B, int N, int D, int H, int W, int K, int masked, T* out, T* lse,            \
                                     T* wts, int nthreads, double* prof) {                                            \
    Problem<T> P{q, k, v, rel_h, rel_w, bs, B, N, D, H, W, K, masked};                                                \
    forward(P, out, lse, wts, nthreads, prof);                                                                        \
  }                                                                                                                   \
  extern "C" void sasa_backward_##SFX(const T* q, const T* k, const T* v, const T* rel_h, const T* rel_w, long bs,    \
                                      int B, int N, int D, int H, int W, int K, int masked, const T* out,             \
                                      const T* lse, const T* dout, T* dq, T* dk, T* dv, long gbs, T* drel,            \
                                      int nthreads, double* prof) {                                                   \
    Problem<T> P{q, k, v, rel_h, rel_w, bs, B, N, D, H, W, K, masked};                                                \
    backward(P, out, lse, dout, dq, dk, dv, gbs, drel, nthreads, prof);                                               \
  }
SASA_API(float, f32)
SASA_API(double, f64)

// The machine's own limit: float32 multiply-adds per second of `nthreads` threads running independent fused
// multiply-adds in registers: FMA_CHAINS accumulators of one register each (enough independent chains to cover the
// FMA units' latency, e.g. 2 units x 4 cycles, few enough to leave room for the two constants, so nothing spills).
constexpr int FMA_CHAINS = VEC_REGS - 4;
extern "C" double sasa_fma_peak(int nthreads, long iters) {
  const double start = seconds();
  double sink = 0;
  std::mutex lock;
  parallel(nthreads, [&] {
    V<float> acc[FMA_CHAINS], a, c;
    for (int j = 0; j < JB; ++j) { a[j] = 0.999999f; c[j] = 1e-7f; }
    for (int r = 0; r < FMA_CHAINS; ++r) for (int j = 0; j < JB; ++j) acc[r][j] = 1.0f + 1e-3f * (r * JB + j);
    for (long it = 0; it < iters; ++it)
      for (int r = 0; r < FMA_CHAINS; ++r) acc[r] = acc[r] * a + c;  // contracted to one FMA (-ffp-contract=fast)
    double mine = 0;
    for (int r = 0; r < FMA_CHAINS; ++r) for (int j = 0; j < JB; ++j) mine += acc[r][j];
    std::lock_guard<std::mutex> hold(lock);
    sink += mine;
  });
  const double secs = seconds() - start;
  return sink > 0 ? (double)nthreads * iters * FMA_CHAINS * JB / secs : 0;  // (sink keeps the loop from being removed)
}

// What this build computes with: its vector width in bytes, the widest vector instructions it was compiled for and
// how it runs threads (native.build_info, the benchmark's rows, the tests).
extern "C" const char* sasa_threads() {
#if defined(_OPENMP)
  return "OpenMP";
#else
  return "std::thread";
#endif
}
extern "C" int sasa_vector_bytes() { return VEC_BYTES; }
extern "C" const char* sasa_isa() {
#if defined(__AVX512F__)
  return "AVX-512";
#elif defined(__AVX2__)
  return "AVX2";
#elif defined(__AVX__)
  return "AVX";
#elif defined(__ARM_NEON) || defined(__aarch64__)
  return "NEON";
#elif defined(__SSE4_2__)
  return "SSE4.2";
#elif defined(__SSE2__) || defined(__x86_64__)
  return "SSE2";
#else
  return "scalar";
#endif
}
