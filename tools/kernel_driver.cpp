// A driver of the CPU kernel's C entry points (sasa_forward_f32/f64, sasa_backward_f32/f64), for tools/arm_check.py:
// the same inputs on every architecture (an integer generator; every input is exact in float32 and float64), the
// forward (with the weights and the log-sum-exp) and the backward of a few problems, every output written raw.
//
//   c++ -O2 -std=c++17 -fopenmp -march=... -DSASA_KERNEL='"/path/to/sasa_cpu.cpp"' tools/kernel_driver.cpp -o driver
//   ./driver out.bin [threads]
//
// out.bin: a first line `sasa-driver isa=ISA vector_bytes=N`, then per array a line `case/name dtype count` followed
// by count raw numbers (float32 or float64, this machine's byte order), then a last line `end`.
#ifndef SASA_KERNEL
#define SASA_KERNEL "../sasa_fastai/csrc/sasa_cpu.cpp"  // relative to this file
#endif
#include SASA_KERNEL

#include <cstdio>
#include <cstdlib>
#include <string>

// splitmix64: integers only, so every machine draws the same numbers
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // a number in [-1, 1) with a 24-bit mantissa: exact in float32, so both types see the same values
  double uniform() { return ((double)(next() >> 40) - 8388608.0) / 8388608.0; }
};

template <typename T> static std::vector<T> draw(Rng& g, long n, double scale) {
  std::vector<T> v(n);
  for (T& x : v) x = (T)(g.uniform() * scale);
  return v;
}

static const char* type_name(float) { return "float32"; }
static const char* type_name(double) { return "float64"; }

template <typename T> static void put(FILE* f, const std::string& name, const std::vector<T>& v) {
  std::fprintf(f, "%s %s %ld\n", name.c_str(), type_name(T()), (long)v.size());
  std::fwrite(v.data(), sizeof(T), v.size(), f);
}

static void forward(const float* q, const float* k, const float* v, const float* rh, const float* rw, long bs, int B,
                    int N, int D, int H, int W, int K, int m, float* out, float* lse, float* wts, int threads) {
  sasa_forward_f32(q, k, v, rh, rw, bs, B, N, D, H, W, K, m, out, lse, wts, threads, nullptr);
}
static void forward(const double* q, const double* k, const double* v, const double* rh, const double* rw, long bs,
                    int B, int N, int D, int H, int W, int K, int m, double* out, double* lse, double* wts,
                    int threads) {
  sasa_forward_f64(q, k, v, rh, rw, bs, B, N, D, H, W, K, m, out, lse, wts, threads, nullptr);
}
static void backward(const float* q, const float* k, const float* v, const float* rh, const float* rw, long bs,
                     int B, int N, int D, int H, int W, int K, int m, const float* out, const float* lse,
                     const float* dout, float* dq, float* dk, float* dv, long gbs, float* drel, int threads) {
  sasa_backward_f32(q, k, v, rh, rw, bs, B, N, D, H, W, K, m, out, lse, dout, dq, dk, dv, gbs, drel, threads,
                    nullptr);
}
static void backward(const double* q, const double* k, const double* v, const double* rh, const double* rw, long bs,
                     int B, int N, int D, int H, int W, int K, int m, const double* out, const double* lse,
                     const double* dout, double* dq, double* dk, double* dv, long gbs, double* drel, int threads) {
  sasa_backward_f64(q, k, v, rh, rw, bs, B, N, D, H, W, K, m, out, lse, dout, dq, dk, dv, gbs, drel, threads,
                    nullptr);
}

// One problem, laid out as native.py lays it: qkv [B, 3C, H, W] (q, k, v channel slices, batch stride 3C*H*W),
// tables [K, N, D/2], out [B, C, H, W], lse [B, N, H, W], weights [B, N, K*K, H, W], dqkv like qkv,
// drel [B, N, 2, K, D/2]. `qscale` and `vscale` scale the queries and the values (the denormal case).
template <typename T>
static void run_case(FILE* f, const char* name, int B, int C, int N, int H, int W, int K, int masked, int threads,
                     double qscale = 1, double vscale = 1) {
  Rng g(0x5a5a0000u + (uint64_t)B * 1000003u + C * 10007u + N * 1009u + H * 101u + W * 11u + K * 3u + masked);
  const int D = C / N;
  const long HW = (long)H * W, bs = 3L * C * HW, cs = (long)C * HW;
  std::vector<T> qkv(B * bs);
  for (int b = 0; b < B; ++b)
    for (long i = 0; i < 3 * cs; ++i) qkv[b * bs + i] = (T)(g.uniform() * (i < cs ? qscale : i < 2 * cs ? 1 : vscale));
  const std::vector<T> rel_h = draw<T>(g, (long)K * N * (D / 2), 1), rel_w = draw<T>(g, (long)K * N * (D / 2), 1);
  const std::vector<T> dout = draw<T>(g, B * cs, 1);
  std::vector<T> out(B * cs), lse((long)B * N * HW), wts((long)B * N * K * K * HW), dqkv(B * bs);
  std::vector<T> drel((long)B * N * 2 * K * (D / 2));
  const T *q = qkv.data(), *k = q + cs, *v = q + 2 * cs;
  forward(q, k, v, rel_h.data(), rel_w.data(), bs, B, N, D, H, W, K, masked, out.data(), lse.data(), wts.data(),
          threads);
  backward(q, k, v, rel_h.data(), rel_w.data(), bs, B, N, D, H, W, K, masked, out.data(), lse.data(), dout.data(),
           dqkv.data(), dqkv.data() + cs, dqkv.data() + 2 * cs, bs, drel.data(), threads);
  const std::string c = name;
  put(f, c + "/out", out); put(f, c + "/lse", lse); put(f, c + "/weights", wts);
  put(f, c + "/dqkv", dqkv); put(f, c + "/drel", drel);
}

int main(int argc, char** argv) {
  if (argc < 2) { std::fprintf(stderr, "usage: %s OUT [threads]\n", argv[0]); return 2; }
  FILE* f = std::fopen(argv[1], "wb");
  if (!f) { std::perror(argv[1]); return 2; }
  const int t = argc > 2 ? std::atoi(argv[2]) : 2;
  std::fprintf(f, "sasa-driver isa=%s vector_bytes=%d\n", sasa_isa(), sasa_vector_bytes());
  for (int K : {3, 5, 7})
    for (int m : {0, 1}) {
      const std::string name = "f32-k" + std::to_string(K) + (m ? "-masked" : "-zero");
      run_case<float>(f, name.c_str(), 2, 16, 2, 7, 9, K, m, t);
    }
  run_case<float>(f, "f32-k7-zero-2x3map", 2, 16, 2, 2, 3, 7, 0, t);   // a map smaller than the window
  run_case<float>(f, "f32-k7-masked-2x3map", 2, 16, 2, 2, 3, 7, 1, t);
  run_case<float>(f, "f32-k5-masked-3x37", 1, 16, 2, 3, 37, 5, 1, t);  // rows of several AVX-512 blocks and a tail
  run_case<double>(f, "f64-k5-masked", 2, 16, 2, 7, 9, 5, 1, t);
  run_case<double>(f, "f64-k3-zero", 1, 8, 1, 5, 6, 3, 0, t);
  // weights down to exp(-87) times values near float32's smallest normal (2^-126): denormal products and sums
  run_case<float>(f, "f32-denormal", 1, 16, 2, 7, 9, 5, 1, t, 8.0, 0x1p-118);
  std::fprintf(f, "end\n");
  return std::fclose(f) == 0 ? 0 : 2;
}
