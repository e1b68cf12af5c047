// Measured at a2aff56 (2026-11-27); historical, not maintained: the code has moved on since.
// Same-process A/B timing of two builds of rnnjax's CPU LSTM kernel (rnnjax/csrc/lstm_cpu.cc),
// call by call, so that both see the same moods of the machine (whole-process figures on the
// project's 2-core machine drift by tens of per cent between minutes).
//
// Each build is a shared library of one version of lstm_cpu.cc with the `k_*` wrappers below
// (they follow the current source's lstm_forward / lstm_backward / lstm_infer signatures);
// the driver loads two or more, alternates forward, backward and inference calls between
// them for ROUNDS rounds, and prints each build's median times and the median ratio of
// their per-round times to the first build's. From the repository root, with the venv
// active (MKL and jaxlib's FFI headers come from it):
//
//   P=$(python -c 'import sys; print(sys.prefix)')
//   J=$(python -c 'import jax; print(jax.ffi.include_dir())')
//   FLAGS="-O3 -march=native -std=c++17 -w -I$J -I$P/include -L$P/lib -l:libmkl_rt.so.3 \
//          -Wl,-rpath,$P/lib -lpthread"
//   g++ -shared -fPIC -DKSRC='"/abs/path/a/lstm_cpu.cc"' benchmarks/probes/kernel_ab.cc \
//       -o /tmp/a.so $FLAGS          # likewise b.so from another version
//   g++ -DDRIVER benchmarks/probes/kernel_ab.cc -o /tmp/ab -ldl
//   /tmp/ab /tmp/a.so /tmp/b.so -- 28 128 28 128 40     # T B F H ROUNDS
//
// Used for docs/lab/2026-11-speed-notes.md item 15 (the older build's wrappers passed x and hs where these
// pass xh, as its functions took them).
#ifndef DRIVER
#include KSRC

static std::vector<float> g_xh;  // the forward pass's stacked rows, kept for the backward

extern "C" void k_init(int threads) { rnnjax_lstm_init(threads); }
extern "C" void k_fwd(int64_t T, int64_t B, int64_t F, int64_t H, const float* x,
                      const float* wi, const float* wh, const float* b, float* hs, float* cs,
                      float* acts, float* tcs) {
  g_xh.resize(T * B * (F + H + 1));
  lstm_forward(T, B, F, H, x, wi, wh, b, hs, cs, g_xh.data(), acts, tcs);
}
extern "C" void k_bwd(int64_t T, int64_t B, int64_t F, int64_t H, const float* x,
                      const float* wi, const float* wh, const float* hs, const float* cs,
                      const float* acts, const float* tcs, const float* dh, float* dx,
                      float* dwi, float* dwh, float* db, float* dc0, float* dh0) {
  lstm_backward(T, B, F, H, wi, wh, g_xh.data(), cs, acts, tcs, dh, dx, dwi, dwh, db, dc0,
                dh0);
}
extern "C" void k_infer(int64_t T, int64_t B, int64_t F, int64_t H, const float* x,
                        const float* wi, const float* wh, const float* b, float* hs,
                        float* c) {
  lstm_infer(T, B, F, H, x, wi, wh, b, hs, c);
}

#else  // the driver
#include <dlfcn.h>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

using Fwd = void (*)(int64_t, int64_t, int64_t, int64_t, const float*, const float*,
                     const float*, const float*, float*, float*, float*, float*);
using Bwd = void (*)(int64_t, int64_t, int64_t, int64_t, const float*, const float*,
                     const float*, const float*, const float*, const float*, const float*,
                     const float*, float*, float*, float*, float*, float*, float*);
using Inf = void (*)(int64_t, int64_t, int64_t, int64_t, const float*, const float*,
                     const float*, const float*, float*, float*);

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

static double median_ms(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2] * 1e3;
}

int main(int argc, char** argv) {
  int sep = 1;
  while (sep < argc && std::strcmp(argv[sep], "--")) ++sep;
  if (sep < 2 || argc != sep + 6) {
    std::fprintf(stderr, "usage: %s LIB.so [LIB.so ...] -- T B F H ROUNDS\n", argv[0]);
    return 2;
  }
  const int L = sep - 1;
  const int64_t T = std::atoi(argv[sep + 1]), B = std::atoi(argv[sep + 2]),
                F = std::atoi(argv[sep + 3]), H = std::atoi(argv[sep + 4]), G = 4 * H;
  const int rounds = std::atoi(argv[sep + 5]);
  std::vector<Fwd> fwd;
  std::vector<Bwd> bwd;
  std::vector<Inf> inf;
  for (int l = 0; l < L; ++l) {
    void* h = dlopen(argv[1 + l], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      std::fprintf(stderr, "%s\n", dlerror());
      return 1;
    }
    ((void (*)(int))dlsym(h, "k_init"))(2);
    fwd.push_back((Fwd)dlsym(h, "k_fwd"));
    bwd.push_back((Bwd)dlsym(h, "k_bwd"));
    inf.push_back((Inf)dlsym(h, "k_infer"));
  }
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> u(-1, 1);
  auto vec = [&](int64_t n, float s) {
    std::vector<float> v(n);
    for (auto& e : v) e = s * u(rng);
    return v;
  };
  auto x = vec(T * B * F, 1), wi = vec(F * G, 0.3), wh = vec(H * G, 0.15), b = vec(G, 0.5),
       dh = vec(T * B * H, 0.1), c0 = vec(B * H, 0.5), h0 = vec(B * H, 0.5);
  std::vector<float> hs((T + 1) * B * H), cs((T + 1) * B * H), acts(T * B * G),
      tcs(T * B * H), hs2((T + 1) * B * H), c(B * H), dx(T * B * F), dwi(F * G), dwh(H * G),
      db(G), dc0(B * H), dh0(B * H);
  std::vector<std::vector<double>> tf(L), tb(L), ti(L);
  for (int r = 0; r < rounds + 2; ++r) {  // the first two rounds warm up
    for (int l = 0; l < L; ++l) {
      std::copy(h0.begin(), h0.end(), hs.begin());
      std::copy(c0.begin(), c0.end(), cs.begin());
      const double t0 = now();
      fwd[l](T, B, F, H, x.data(), wi.data(), wh.data(), b.data(), hs.data(), cs.data(),
             acts.data(), tcs.data());
      const double t1 = now();
      std::fill(dc0.begin(), dc0.end(), 0.01f);
      bwd[l](T, B, F, H, x.data(), wi.data(), wh.data(), hs.data(), cs.data(), acts.data(),
             tcs.data(), dh.data(), dx.data(), dwi.data(), dwh.data(), db.data(), dc0.data(),
             dh0.data());
      const double t2 = now();
      std::copy(h0.begin(), h0.end(), hs2.begin());
      std::copy(c0.begin(), c0.end(), c.begin());
      const double t3 = now();
      inf[l](T, B, F, H, x.data(), wi.data(), wh.data(), b.data(), hs2.data(), c.data());
      const double t4 = now();
      if (r >= 2) {
        tf[l].push_back(t1 - t0);
        tb[l].push_back(t2 - t1);
        ti[l].push_back(t4 - t3);
      }
    }
  }
  for (int l = 0; l < L; ++l)
    std::printf("T%ld B%ld F%ld H%ld %-30s forward %.3f  backward %.3f  inference %.3f ms\n",
                (long)T, (long)B, (long)F, (long)H, argv[1 + l], median_ms(tf[l]),
                median_ms(tb[l]), median_ms(ti[l]));
  for (int l = 1; l < L; ++l) {
    std::vector<double> train, infer;
    for (size_t k = 0; k < tf[0].size(); ++k) {
      train.push_back((tf[l][k] + tb[l][k]) / (tf[0][k] + tb[0][k]));
      infer.push_back(ti[l][k] / ti[0][k]);
    }
    std::printf("  %s / %s, median of per-round ratios: training (forward + backward) "
                "%.3f, inference %.3f\n", argv[1 + l], argv[1], median_ms(train) / 1e3,
                median_ms(infer) / 1e3);
  }
}
#endif
