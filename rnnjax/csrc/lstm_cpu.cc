// rnnjax's LSTM layer for XLA's CPU backend: forward, inference and backward as XLA FFI
// handlers, matmuls by MKL's cblas_sgemm, tanh by MKL's vsTanh. Built and loaded by
// rnnjax/lstm_kernel.py, which documents the equations and the layouts.
//
// Time-major: x [T,B,F]; gates i, f, g, o (flax OptimizedLSTMCell's and PyTorch's order);
// wi [F,4H], wh [H,4H], b [4H] are the four gates' kernels and biases side by side.
// Threads split the batch rows, and each runs the whole recurrence for its rows: the rows
// of an LSTM are independent until the weight gradients, so no thread waits for another
// inside the time loop. Each thread calls MKL single-threaded.
#include <algorithm>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>
#include <mkl.h>
#include <xmmintrin.h>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using Buf = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;

static int g_threads = 1;   // set by rnnjax_lstm_init
constexpr int64_t kMinRows = 16;  // fewer rows per thread than this: fewer threads

struct FlushDenormals {  // as XLA's CPU runtime does
  unsigned int saved;
  FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved); }
};

// fn(lo, hi) for each of up to g_threads parts of [0, total) (at least `min_part` long),
// each on its own thread; the calling thread takes the first.
static void parallel(int64_t total, int64_t min_part,
                     const std::function<void(int64_t, int64_t)>& fn) {
  const int n = (int)std::max<int64_t>(1, std::min<int64_t>(g_threads, total / min_part));
  auto part = [&](int k) {
    FlushDenormals ftz;
    mkl_set_num_threads_local(1);
    fn(total * k / n, total * (k + 1) / n);
  };
  std::vector<std::thread> pool;
  for (int k = 1; k < n; ++k) pool.emplace_back(part, k);
  part(0);
  for (auto& t : pool) t.join();
}

static void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              m, n, k, 1.f, a, lda, b, ldb, beta, c, ldc);
}

// Rows [lo, hi) of z [B,4H]: sigmoid on i, f, o and tanh on g, by one vsTanh
// (sigmoid(z) = tanh(z/2)/2 + 1/2).
static void activate(float* z, int64_t rows, int64_t H) {
  const int64_t G = 4 * H;
  for (int64_t b = 0; b < rows; ++b) {
    float* r = z + b * G;
    for (int64_t j = 0; j < 2 * H; ++j) r[j] *= 0.5f;
    for (int64_t j = 3 * H; j < G; ++j) r[j] *= 0.5f;
  }
  vsTanh(rows * G, z, z);
  for (int64_t b = 0; b < rows; ++b) {
    float* r = z + b * G;
    for (int64_t j = 0; j < 2 * H; ++j) r[j] = 0.5f * r[j] + 0.5f;
    for (int64_t j = 3 * H; j < G; ++j) r[j] = 0.5f * r[j] + 0.5f;
  }
}

// One time step for n rows: z [n,4H] <- the gate activations of b + x W_i + h W_h, then
// c_next = f c + i g (c_next may be c) and h_next = o tanh(c_next); tc: n*H scratch.
static void step(int64_t n, int64_t F, int64_t H, const float* x, const float* h,
                 const float* c, const float* wi, const float* wh, const float* b, float* z,
                 float* c_next, float* h_next, float* tc) {
  const int64_t G = 4 * H;
  for (int64_t r = 0; r < n; ++r) std::memcpy(z + r * G, b, G * sizeof(float));
  sgemm(false, false, n, G, F, x, F, wi, G, 1.f, z, G);
  sgemm(false, false, n, G, H, h, H, wh, G, 1.f, z, G);
  activate(z, n, H);
  for (int64_t r = 0; r < n; ++r) {
    const float* a = z + r * G;
    for (int64_t j = 0; j < H; ++j)
      c_next[r * H + j] = a[H + j] * c[r * H + j] + a[j] * a[2 * H + j];
  }
  vsTanh(n * H, c_next, tc);
  for (int64_t r = 0; r < n; ++r) {
    const float* a = z + r * G;
    for (int64_t j = 0; j < H; ++j) h_next[r * H + j] = a[3 * H + j] * tc[r * H + j];
  }
}

// x [T,B,F], wi [F,4H], wh [H,4H], b [4H], c0 [B,H], h0 [B,H] ->
// hs [T+1,B,H] (hs[0] = h0), cs [T+1,B,H] (cs[0] = c0), acts [T,B,4H] (gate activations).
static ffi::Error Fwd(Buf x, Buf wi, Buf wh, Buf bias, Buf c0, Buf h0, Out hs, Out cs,
                      Out acts) {
  const int64_t T = x.dimensions()[0], B = x.dimensions()[1], F = x.dimensions()[2];
  const int64_t H = wh.dimensions()[0], G = 4 * H;
  float* A = acts->typed_data();
  float* HS = hs->typed_data();
  float* CS = cs->typed_data();
  std::memcpy(HS, h0.typed_data(), B * H * sizeof(float));
  std::memcpy(CS, c0.typed_data(), B * H * sizeof(float));
  parallel(B, kMinRows, [&](int64_t lo, int64_t hi) {
    std::vector<float> tc((hi - lo) * H);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = t * B + lo, next = (t + 1) * B + lo;
      step(hi - lo, F, H, x.typed_data() + row * F, HS + row * H, CS + row * H,
           wi.typed_data(), wh.typed_data(), bias.typed_data(), A + row * G, CS + next * H,
           HS + next * H, tc.data());
    }
  });
  return ffi::Error::Success();
}

// Inference: x, wi, wh, b, c0, h0 as Fwd -> hs [T+1,B,H], c_T [B,H]; the gate activations
// stay in a per-thread scratch block and the cell state is updated in place.
static ffi::Error Infer(Buf x, Buf wi, Buf wh, Buf bias, Buf c0, Buf h0, Out hs, Out cT) {
  const int64_t T = x.dimensions()[0], B = x.dimensions()[1], F = x.dimensions()[2];
  const int64_t H = wh.dimensions()[0], G = 4 * H;
  float* HS = hs->typed_data();
  float* C = cT->typed_data();
  std::memcpy(HS, h0.typed_data(), B * H * sizeof(float));
  std::memcpy(C, c0.typed_data(), B * H * sizeof(float));
  parallel(B, kMinRows, [&](int64_t lo, int64_t hi) {
    std::vector<float> z((hi - lo) * G), tc((hi - lo) * H);
    float* c = C + lo * H;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = t * B + lo;
      step(hi - lo, F, H, x.typed_data() + row * F, HS + row * H, c, wi.typed_data(),
           wh.typed_data(), bias.typed_data(), z.data(), c, HS + (row + B) * H, tc.data());
    }
  });
  return ffi::Error::Success();
}

// x, wi, wh, hs, cs, acts (as Fwd gives them), dhs [T,B,H] (cotangent of hs[1:]),
// dcT [B,H] (of cs[T]) -> dx [T,B,F], dwi [F,4H], dwh [H,4H], db [4H], dc0 [B,H], dh0 [B,H].
static ffi::Error Bwd(Buf x, Buf wi, Buf wh, Buf hs, Buf cs, Buf acts, Buf dhs, Buf dcT,
                      Out dx, Out dwi, Out dwh, Out db, Out dc0, Out dh0) {
  const int64_t T = x.dimensions()[0], B = x.dimensions()[1], F = x.dimensions()[2];
  const int64_t H = wh.dimensions()[0], G = 4 * H;
  const float* A = acts.typed_data();
  const float* HS = hs.typed_data();
  const float* CS = cs.typed_data();
  const float* DH = dhs.typed_data();
  const float* X = x.typed_data();
  const float* WI = wi.typed_data();
  std::vector<float> dz(T * B * G), wht(G * H);
  mkl_somatcopy('R', 'T', H, G, 1.f, wh.typed_data(), G, wht.data(), H);  // wh^T [4H,H]
  float* DC0 = dc0->typed_data();
  float* DH0 = dh0->typed_data();
  std::memcpy(DC0, dcT.typed_data(), B * H * sizeof(float));  // dc, carried backwards
  std::memset(DH0, 0, B * H * sizeof(float));                 // dh, carried backwards
  parallel(B, kMinRows, [&](int64_t lo, int64_t hi) {
    const int64_t n = hi - lo;
    std::vector<float> tc(n * H);
    float* dc = DC0 + lo * H;
    float* dh = DH0 + lo * H;
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* a = A + (t * B + lo) * G;
      const float* cp = CS + (t * B + lo) * H;
      const float* dht = DH + (t * B + lo) * H;
      vsTanh(n * H, CS + ((t + 1) * B + lo) * H, tc.data());
      float* d = dz.data() + (t * B + lo) * G;
      for (int64_t b = 0; b < n; ++b) {
        const float* r = a + b * G;
        float* dr = d + b * G;
        for (int64_t j = 0; j < H; ++j) {
          const int64_t k = b * H + j;
          const float i = r[j], f = r[H + j], g = r[2 * H + j], o = r[3 * H + j];
          const float hgrad = dh[k] + dht[k];
          const float c = dc[k] + hgrad * o * (1.f - tc[k] * tc[k]);
          dr[j] = c * g * i * (1.f - i);
          dr[H + j] = c * cp[k] * f * (1.f - f);
          dr[2 * H + j] = c * i * (1.f - g * g);
          dr[3 * H + j] = hgrad * tc[k] * o * (1.f - o);
          dc[k] = c * f;
        }
      }
      sgemm(false, false, n, H, G, d, G, wht.data(), H, 0.f, dh, H);
    }
  });
  // Weight and bias gradients: one matmul over all T*B rows, columns split over threads;
  // dx: rows split.
  float* DWH = dwh->typed_data();
  float* DWI = dwi->typed_data();
  float* DB = db->typed_data();
  parallel(G, 64, [&](int64_t lo, int64_t hi) {
    const int64_t n = hi - lo;
    sgemm(true, false, H, n, T * B, HS, H, dz.data() + lo, G, 0.f, DWH + lo, G);
    sgemm(true, false, F, n, T * B, X, F, dz.data() + lo, G, 0.f, DWI + lo, G);
    std::memset(DB + lo, 0, n * sizeof(float));
    for (int64_t r = 0; r < T * B; ++r) {
      const float* row = dz.data() + r * G + lo;
      for (int64_t j = 0; j < n; ++j) DB[lo + j] += row[j];
    }
  });
  parallel(T * B, kMinRows, [&](int64_t lo, int64_t hi) {
    sgemm(false, true, hi - lo, F, G, dz.data() + lo * G, G, WI, G, 0.f,
          dx->typed_data() + lo * F, F);
  });
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmFwd, Fwd,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Arg<Buf>()
                                  .Ret<Buf>().Ret<Buf>().Ret<Buf>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmBwd, Bwd,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>()
                                  .Ret<Buf>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmInfer, Infer,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Arg<Buf>()
                                  .Ret<Buf>().Ret<Buf>());

// Threads per call (the cores this process may use), and MKL without its own threads.
extern "C" void rnnjax_lstm_init(int threads) {
  g_threads = std::max(1, threads);
  mkl_set_threading_layer(MKL_THREADING_SEQUENTIAL);
}
