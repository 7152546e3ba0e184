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
#include <omp.h>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

// Denormal numbers (below ~1e-38 in float32) appear as training goes on (tiny weights times tiny values) and make x86
// arithmetic many times slower. Each thread of the kernel treats them as zero while it runs, then restores its state.
struct FlushDenormals {
#if defined(__SSE__) || defined(__x86_64__)
  unsigned int saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }  // flush-to-zero (bit 15) and denormals-are-zero (bit 6)
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

static inline float exp_(float x) {
  // exp(x) for x <= ~0, branch-free so that loops vectorise (Cephes polynomial, relative error ~2e-7); 0 below -87.
  const float y = std::max(x, -87.0f);
  const float n = (y * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = y - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f; p = p * r + 8.3334519073e-3f; p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f; p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float s; std::memcpy(&s, &bits, 4);
  return x < -87.0f ? 0.0f : p * s;
}
static inline double exp_(double x) { return std::exp(x); }

// Where the time goes (`sasa_bench`'s breakdown): when the caller passes a `prof` array, each thread adds the seconds
// it spent in each phase of the kernel to it (PHASES_FWD / PHASES_BWD entries); with `prof` null nothing is timed.
struct Timer {
  double* acc; double t;
  explicit Timer(double* a) : acc(a), t(a ? omp_get_wtime() : 0) {}
  void lap(int phase) { if (acc) { const double now = omp_get_wtime(); acc[phase] += now - t; t = now; } }
};
static void add_profile(double* prof, const double* mine, int n) {
  if (!prof) return;
#pragma omp critical
  for (int i = 0; i < n; ++i) prof[i] += mine[i];
}
constexpr int PHASES_FWD = 4;  // set-up (padded planes, relative logits), logits, softmax, weighted sum of values
constexpr int PHASES_BWD = 5;  // set-up, logits (recomputed), d logits (dout.v, softmax), dq and the tables, key pass

constexpr int JB = 16;  // pixels per register block: every inner loop below has this fixed trip count

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
// slack so whole register blocks may read past the last pixel. Pixel (i, j) sits at (i + h) * Wp + h + j.
template <typename T> struct Padded {
  std::vector<T> buf; long HWp = 0; int Wp = 0;
  void load(const Problem<T>& P, const T* src, int planes, T fill) {
    const int h = P.h(); Wp = P.Wp(); HWp = P.HWp();
    buf.assign(planes * HWp + JB, fill);
    for (int c = 0; c < planes; ++c)
      for (int i = 0; i < P.H; ++i)
        std::memcpy(&buf[c * HWp + (long)(i + h) * Wp + h], src + c * P.HW() + (long)i * P.W, sizeof(T) * P.W);
  }
  // the relative logits of head n: plane a = sum_d table[a, n, d] * q[half * D/2 + d] (zero outside the image)
  void rel(const Problem<T>& P, const T* q, const T* table, int n, int half) {
    const int h = P.h(), D2 = P.D / 2; Wp = P.Wp(); HWp = P.HWp();
    buf.assign(P.K * HWp + JB, T(0));
    for (int a = 0; a < P.K; ++a)
      for (int d = 0; d < D2; ++d) {
        const T c = table[((long)a * P.N + n) * D2 + d];
        const T* qd = q + (long)(half * D2 + d) * P.HW();
        for (int i = 0; i < P.H; ++i) {
          T* __restrict dst = &buf[a * HWp + (long)(i + h) * Wp + h];
          const T* __restrict src = qd + (long)i * P.W;
          for (int j = 0; j < P.W; ++j) dst[j] += c * src[j];
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

template <typename T> static inline void store(T* dst, const T* acc, int nj) {
  for (int jj = 0; jj < nj; ++jj) dst[jj] = acc[jj];
}

// Logits of query row i of one head for every window offset o = a*K + b, into lo[o*Wr + j]. Shared by the forward
// and the query-side backward, so both see identical numbers.
template <typename T>
static void row_logits(const Problem<T>& P, const Padded<T>& Q, const Padded<T>& Kp, const Padded<T>& RH,
                       const Padded<T>& RW, int i, T* lo) {
  const int K = P.K, W = P.W, D = P.D, Wp = P.Wp(), h = P.h(), Wr = P.Wr();
  const long qrow = (long)(i + h) * Wp + h;
  for (int a = 0; a < K; ++a)
    for (int bb = 0; bb < K; ++bb) {
      T* L = lo + (long)(a * K + bb) * Wr;
      const long krow = (long)(i + a) * Wp + bb;
      for (int j0 = 0; j0 < W; j0 += JB) {
        T acc[JB];
        const T* ra = RH.at(a, qrow + j0); const T* rb = RW.at(bb, qrow + j0);
        for (int jj = 0; jj < JB; ++jj) acc[jj] = ra[jj] + rb[jj];
        for (int d = 0; d < D; ++d) {
          const T* qd = Q.at(d, qrow + j0); const T* kd = Kp.at(d, krow + j0);
          for (int jj = 0; jj < JB; ++jj) acc[jj] += qd[jj] * kd[jj];
        }
        for (int jj = 0; jj < JB; ++jj) L[j0 + jj] = acc[jj];
      }
      if (P.masked) {  // keys outside the image leave the softmax
        const T ninf = -std::numeric_limits<T>::infinity();
        const int ii = i + a - h;
        if (ii < 0 || ii >= P.H) std::fill(L, L + W, ninf);
        else {
          for (int j = 0; j < std::min(W, h - bb); ++j) L[j] = ninf;
          for (int j = std::max(0, W + h - bb); j < W; ++j) L[j] = ninf;
        }
      }
    }
}

// out[d][i][j] = sum_o A[o][j] * X[d] at the window position o of pixel (i, j): the weighted sum over the window.
// `base` is the padded index of offset 0 for pixel (i, 0), off[o] the offsets' padded displacements.
template <typename T>
static void window_sum(const Problem<T>& P, const T* A, const Padded<T>& X, long base, const long* off, T* out) {
  const int KK = P.K * P.K, W = P.W, D = P.D, Wr = P.Wr();
  for (int d = 0; d < D; ++d)
    for (int j0 = 0; j0 < W; j0 += JB) {
      T acc[JB] = {};
      for (int o = 0; o < KK; ++o) {
        const T* a = A + (long)o * Wr + j0; const T* x = X.at(d, base + off[o] + j0);
        for (int jj = 0; jj < JB; ++jj) acc[jj] += a[jj] * x[jj];
      }
      store(out + d * P.HW() + j0, acc, std::min(JB, W - j0));
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
#pragma omp parallel num_threads(nthreads)
  {
    FlushDenormals ftz;
    std::vector<T> lo((long)KK * Wr), m(Wr), s(Wr);
    HeadPlanes<T> hp;
    double mine[PHASES_FWD] = {};
    Timer tm(prof ? mine : nullptr);
#pragma omp for schedule(dynamic)
    for (long t = 0; t < (long)P.B * P.N; ++t) {
      const int b = t / P.N, n = t % P.N;
      const long hd = P.head(b, n);
      hp.load(P, b, n);
      tm.lap(0);
      for (int i = 0; i < P.H; ++i) {
        row_logits(P, hp.Q, hp.Kp, hp.RH, hp.RW, i, lo.data());
        tm.lap(1);
        std::fill(m.begin(), m.end(), -std::numeric_limits<T>::infinity());
        std::fill(s.begin(), s.end(), T(0));
        for (int o = 0; o < KK; ++o) {
          const T* L = &lo[(long)o * Wr];
          for (int j = 0; j < W; ++j) m[j] = std::max(m[j], L[j]);
        }
        for (int o = 0; o < KK; ++o) {
          T* __restrict L = &lo[(long)o * Wr];
          for (int j = 0; j < W; ++j) { L[j] = exp_(L[j] - m[j]); s[j] += L[j]; }
        }
        T* ls = lse + hd * HW + (long)i * W;
        for (int j = 0; j < W; ++j) { ls[j] = m[j] + std::log(s[j]); s[j] = T(1) / s[j]; }
        for (int o = 0; o < KK; ++o) {
          T* __restrict L = &lo[(long)o * Wr];
          for (int j = 0; j < W; ++j) L[j] *= s[j];  // now the attention weights
          if (wts) std::memcpy(wts + (hd * KK + o) * HW + (long)i * W, L, sizeof(T) * W);
        }
        tm.lap(2);
        window_sum(P, lo.data(), hp.Vp, (long)i * P.Wp(), off.data(), out + hd * D * HW + (long)i * W);
        tm.lap(3);
      }
    }
    add_profile(prof, mine, PHASES_FWD);
  }
}

// Backward, per (image, head). Query pass: recompute the weights p from the log-sum-exp, ds = p * (dout.v - dsum)
// with dsum = dout.out, giving dq (through q.k and q.r) and the head's share of the relative tables' gradient
// (drel: [B, N, 2, K, D/2], summed over images by the caller); p and ds are also filed under their key (one slot per
// key and offset, so no two queries write the same place). Key pass: every key gathers from the k*k queries whose
// window holds it, dk = sum ds * q and dv = sum p * dout: the same window sum as the forward's, with reversed offsets.
// No scatter-add, no races between threads.
template <typename T>
static void backward(const Problem<T>& P, const T* out, const T* lse, const T* dout, T* dq, T* dk, T* dv, long gbs,
                     T* drel, int nthreads, double* prof) {
  const int K = P.K, KK = K * K, W = P.W, D = P.D, D2 = D / 2, h = P.h(), Wp = P.Wp(), Wr = P.Wr();
  const long HW = P.HW(), HWp = P.HWp();
  const std::vector<long> off = offsets(P, false), qoff = offsets(P, true);
#pragma omp parallel num_threads(nthreads)
  {
    FlushDenormals ftz;
    std::vector<T> lo((long)KK * Wr), dsm(Wr), Pk((long)KK * Wr), Gk((long)KK * Wr), gr(2 * K * Wr);
    std::vector<T> Ps(KK * HWp + JB), Gs(KK * HWp + JB);  // p and ds by key: plane o, padded position of the key
    HeadPlanes<T> hp;
    Padded<T> Go;
    const Padded<T> &Q = hp.Q, &Kp = hp.Kp, &Vp = hp.Vp, &RH = hp.RH, &RW = hp.RW;
    double mine[PHASES_BWD] = {};
    Timer tm(prof ? mine : nullptr);
#pragma omp for schedule(dynamic)
    for (long t = 0; t < (long)P.B * P.N; ++t) {
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
        const T* ls = lse + hd * HW + row;
        std::fill(dsm.begin(), dsm.end(), T(0));
        for (int d = 0; d < D; ++d) for (int j = 0; j < W; ++j) dsm[j] += GO[d * HW + row + j] * O[d * HW + row + j];
        row_logits(P, Q, Kp, RH, RW, i, lo.data());
        tm.lap(1);
        for (int o = 0; o < KK; ++o) {  // lo <- d loss / d logit = p * (dout.v - dsum)
          T* L = &lo[(long)o * Wr];
          for (int j0 = 0; j0 < W; j0 += JB) {
            T dp[JB] = {};
            for (int d = 0; d < D; ++d) {
              const T* g = Go.at(d, qrow + j0); const T* x = Vp.at(d, (long)i * Wp + off[o] + j0);
              for (int jj = 0; jj < JB; ++jj) dp[jj] += g[jj] * x[jj];
            }
            const int nj = std::min(JB, W - j0);
            T* ps = &Ps[o * HWp + (long)i * Wp + off[o] + j0]; T* gs = &Gs[o * HWp + (long)i * Wp + off[o] + j0];
            for (int jj = 0; jj < nj; ++jj) {
              const T p = exp_(L[j0 + jj] - ls[j0 + jj]);
              ps[jj] = p; gs[jj] = L[j0 + jj] = p * (dp[jj] - dsm[j0 + jj]);
            }
          }
        }
        tm.lap(2);
        for (int o = 0; o < 2 * K; ++o) std::fill(&gr[(long)o * Wr], &gr[(long)o * Wr] + W, T(0));
        for (int a = 0; a < K; ++a)  // d loss / d rh[a] and / d rw[b]: sums of ds over the window's rows and columns
          for (int bb = 0; bb < K; ++bb) {
            const T* L = &lo[(long)(a * K + bb) * Wr];
            T* __restrict gh = &gr[(long)a * Wr]; T* __restrict gw = &gr[(long)(K + bb) * Wr];
            for (int j = 0; j < W; ++j) { gh[j] += L[j]; gw[j] += L[j]; }
          }
        window_sum(P, lo.data(), Kp, (long)i * Wp, off.data(), DQ + row);
        // through q.r: dq[half] += sum_a g[a] table[a]; drel[a] += sum_j g[a] q[half]
        for (int half = 0; half < 2; ++half)
          for (int a = 0; a < K; ++a) {
            const T* g = &gr[(long)(half * K + a) * Wr];
            const T* table = (half ? P.rel_w : P.rel_h) + ((long)a * P.N + n) * D2;
            for (int d = 0; d < D2; ++d) {
              T* __restrict dqd = DQ + (long)(half * D2 + d) * HW + row;
              const T* __restrict qd = Qh + (long)(half * D2 + d) * HW + row;
              T acc = 0;
              for (int j = 0; j < W; ++j) { dqd[j] += g[j] * table[d]; acc += g[j] * qd[j]; }
              dR[(half * K + a) * D2 + d] += acc;
            }
          }
        tm.lap(3);
      }
      for (int ii = 0; ii < P.H; ++ii) {  // key pass
        const long krow = (long)(ii + h) * Wp + h;
        for (int o = 0; o < KK; ++o) {  // this key row's p and ds, zero where the query lies outside the image
          const int a = o / K, bb = o % K, i = ii - a + h;
          T* pk = &Pk[(long)o * Wr]; T* gk = &Gk[(long)o * Wr];
          if (i < 0 || i >= P.H) { std::fill(pk, pk + Wr, T(0)); std::fill(gk, gk + Wr, T(0)); continue; }
          std::memcpy(pk, &Ps[o * HWp + krow], sizeof(T) * Wr); std::memcpy(gk, &Gs[o * HWp + krow], sizeof(T) * Wr);
          for (int jj = 0; jj < std::min(W, bb - h); ++jj) pk[jj] = gk[jj] = 0;
          for (int jj = std::max(0, W + bb - h); jj < W; ++jj) pk[jj] = gk[jj] = 0;
        }
        window_sum(P, Gk.data(), Q, (long)ii * Wp, qoff.data(), DK + (long)ii * W);
        window_sum(P, Pk.data(), Go, (long)ii * Wp, qoff.data(), DV + (long)ii * W);
      }
      tm.lap(4);
    }
    add_profile(prof, mine, PHASES_BWD);
  }
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
// multiply-adds in registers (8 accumulators of JB lanes each: enough independent chains to keep every vector FMA unit
// busy, few enough to stay in registers).
extern "C" double sasa_fma_peak(int nthreads, long iters) {
  double start = omp_get_wtime(), sink = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : sink)
  {
    constexpr int R = 8;
    float acc[R][JB];
    for (int r = 0; r < R; ++r) for (int j = 0; j < JB; ++j) acc[r][j] = 1.0f + 1e-3f * (r * JB + j);
    const float a = 0.999999f, c = 1e-7f;
    for (long it = 0; it < iters; ++it)
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < JB; ++j) acc[r][j] = std::fma(acc[r][j], a, c);
    for (int r = 0; r < R; ++r) for (int j = 0; j < JB; ++j) sink += acc[r][j];
  }
  const double secs = omp_get_wtime() - start;
  return sink > 0 ? (double)nthreads * iters * 8 * JB / secs : 0;  // (sink keeps the loop from being removed)
}
