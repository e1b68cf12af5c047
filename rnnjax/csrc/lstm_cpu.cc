// rnnjax's LSTM layer for XLA's CPU backend: forward, inference and backward as XLA FFI
// handlers, matmuls by MKL's cblas_sgemm, tanh by MKL's vsTanh. Built and loaded by
// rnnjax/lstm_kernel.py, which documents the equations and the layouts.
//
// Time-major: x [T,B,F]; gates i, f, g, o (flax OptimizedLSTMCell's and PyTorch's order);
// wi [F,4H], wh [H,4H], b [4H] are the four gates' kernels and biases side by side.
// Threads split the batch rows, and each runs the whole recurrence for its rows: the rows
// of an LSTM are independent until the weight gradients, so no thread waits for another
// inside the time loop. Each thread calls MKL single-threaded. A time step is one matmul,
// [x_t | h_{t-1} | 1] [wi; wh; b], and the training forward pass keeps those rows, so that
// the backward pass gets all weight and bias gradients as one matmul over the T*B rows.
#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
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

// The stacked weights W = [wi; wh; b] [F+H+1, 4H], so that one matmul [x_t | h | 1] W gives
// the gate pre-activations z, with the columns of gates i, f and o halved: z comes out as
// [z_i/2 | z_f/2 | z_g | z_o/2] and one tanh gives all four gates, sigmoid(z) =
// tanh(z/2)/2 + 1/2. (Halving is exact in floating point.)
static std::vector<float> stacked_weights(int64_t F, int64_t H, const float* wi,
                                          const float* wh, const float* b) {
  const int64_t G = 4 * H;
  std::vector<float> w((F + H + 1) * G);
  std::memcpy(w.data(), wi, F * G * sizeof(float));
  std::memcpy(w.data() + F * G, wh, H * G * sizeof(float));
  std::memcpy(w.data() + (F + H) * G, b, G * sizeof(float));
  for (int64_t r = 0; r < F + H + 1; ++r)
    for (int64_t j = 0; j < G; ++j)
      if (j < 2 * H || j >= 3 * H) w[r * G + j] *= 0.5f;
  return w;
}

// For n rows of z [n,4H] holding tanh([z_i/2 | z_f/2 | z_g | z_o/2]): z <- the gate
// activations i, f, g, o; c_next = f c + i g (c_next may be c).
static void gates(int64_t n, int64_t H, float* __restrict__ z, const float* c, float* c_next) {
  for (int64_t r = 0; r < n; ++r) {
    float* a = z + r * 4 * H;
    const float* cr = c + r * H;
    float* cn = c_next + r * H;
    for (int64_t j = 0; j < H; ++j) {
      const float i = 0.5f * a[j] + 0.5f, f = 0.5f * a[H + j] + 0.5f;
      a[j] = i;
      a[H + j] = f;
      a[3 * H + j] = 0.5f * a[3 * H + j] + 0.5f;
      cn[j] = f * cr[j] + i * a[2 * H + j];
    }
  }
}

// One thread's rows [lo, hi) of the recurrence, from h = hs[0] and c = c0 (each [n,H] with
// the batch stride B): for each t, z = [x_t | h | 1] W, the gates, c_t and h_t. Writes
// h_t to HS (at t+1); c_t to CS (at t+1) or, without CS, over c0 in C; where given
// (training), [x_t | h_{t-1} | 1] to XH, the gate activations to A and tanh(c_t) to TC, at t.
static void recurrence(int64_t T, int64_t B, int64_t F, int64_t H, int64_t lo, int64_t hi,
                       const float* x, const std::vector<float>& w, float* HS, float* CS,
                       float* C, float* XH, float* A, float* TC) {
  const int64_t n = hi - lo, G = 4 * H, K = F + H + 1;
  std::vector<float> xh_scratch(XH ? 0 : n * K), scratch(A ? 0 : n * G),
      tc_scratch(TC ? 0 : n * H);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = t * B + lo, next = row + B;
    const float* h = HS + row * H;
    const float* c = CS ? CS + row * H : C + lo * H;
    float* cn = CS ? CS + next * H : C + lo * H;
    float* hn = HS + next * H;
    float* z = A ? A + row * G : scratch.data();
    float* tc = TC ? TC + row * H : tc_scratch.data();
    float* xh = XH ? XH + row * K : xh_scratch.data();
    for (int64_t r = 0; r < n; ++r) {
      std::memcpy(xh + r * K, x + (row + r) * F, F * sizeof(float));
      std::memcpy(xh + r * K + F, h + r * H, H * sizeof(float));
      xh[r * K + F + H] = 1.f;
    }
    sgemm(false, false, n, G, K, xh, K, w.data(), G, 0.f, z, G);
    vsTanh(n * G, z, z);
    gates(n, H, z, c, cn);
    vsTanh(n * H, cn, tc);
    for (int64_t r = 0; r < n; ++r) {
      const float* o = z + r * G + 3 * H;
      for (int64_t j = 0; j < H; ++j) hn[r * H + j] = o[j] * tc[r * H + j];
    }
  }
}

// x [T,B,F], wi [F,4H], wh [H,4H], b [4H]; hs[0] = h0 and cs[0] = c0 set by the caller ->
// hs [T+1,B,H], cs [T+1,B,H], and for the backward pass xh [T,B,F+H+1] ([x_t | h_{t-1} | 1]),
// acts [T,B,4H] (gate activations), tcs [T,B,H] (tanh(c_t)).
static void lstm_forward(int64_t T, int64_t B, int64_t F, int64_t H, const float* x,
                         const float* wi, const float* wh, const float* bias, float* HS,
                         float* CS, float* XH, float* A, float* TC) {
  const std::vector<float> w = stacked_weights(F, H, wi, wh, bias);
  parallel(B, kMinRows, [&](int64_t lo, int64_t hi) {
    recurrence(T, B, F, H, lo, hi, x, w, HS, CS, nullptr, XH, A, TC);
  });
}

// Inference: as lstm_forward, but C [B,H] holds c0 on entry and c_T on return, and no
// gate activations or tanh(c_t) are kept.
static void lstm_infer(int64_t T, int64_t B, int64_t F, int64_t H, const float* x,
                       const float* wi, const float* wh, const float* bias, float* HS,
                       float* C) {
  const std::vector<float> w = stacked_weights(F, H, wi, wh, bias);
  parallel(B, kMinRows, [&](int64_t lo, int64_t hi) {
    recurrence(T, B, F, H, lo, hi, x, w, HS, nullptr, C, nullptr, nullptr, nullptr);
  });
}

// One backward time step for n rows: from the gate activations a [n,4H], c_{t-1} cp,
// tanh(c_t) tc and the cotangents of h_t (dh from the step after, dht from the outputs) and
// of c_t (dc) -> d [n,4H], the cotangent of the pre-activations z_t; dc <- that of c_{t-1}.
static void gate_gradients(int64_t n, int64_t H, const float* __restrict__ a,
                           const float* __restrict__ cp, const float* __restrict__ tc,
                           const float* __restrict__ dht, const float* __restrict__ dh,
                           float* __restrict__ dc, float* __restrict__ d) {
  for (int64_t b = 0; b < n; ++b) {
    const float* r = a + b * 4 * H;
    float* dr = d + b * 4 * H;
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
}

// wi, wh, XH, CS, A, TC (as lstm_forward gives them), DH [T,B,H] (cotangent of hs[1:]);
// DC0 holds the cotangent of c_T on entry -> dx [T,B,F], dwi [F,4H], dwh [H,4H], db [4H],
// DC0 [B,H], DH0 [B,H] (cotangents of c0 and of h0 through the recurrence).
static void lstm_backward(int64_t T, int64_t B, int64_t F, int64_t H, const float* wi,
                          const float* wh, const float* XH, const float* CS, const float* A,
                          const float* TC, const float* DH, float* DX, float* DWI, float* DWH,
                          float* DB, float* DC0, float* DH0) {
  const int64_t G = 4 * H, K = F + H + 1;
  // dz [T,B,4H]: the pre-activations' cotangents (every element written before it is read).
  std::unique_ptr<float[]> dz(new float[T * B * G]);
  std::vector<float> wht(G * H), wit(G * F), dw(K * G);
  mkl_somatcopy('R', 'T', H, G, 1.f, wh, G, wht.data(), H);  // wh^T [4H,H]
  mkl_somatcopy('R', 'T', F, G, 1.f, wi, G, wit.data(), F);  // wi^T [4H,F]
  std::memset(DH0, 0, B * H * sizeof(float));                 // dh, carried backwards
  parallel(B, kMinRows, [&](int64_t lo, int64_t hi) {
    const int64_t n = hi - lo;
    float* dc = DC0 + lo * H;
    float* dh = DH0 + lo * H;
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* a = A + (t * B + lo) * G;
      const float* cp = CS + (t * B + lo) * H;
      const float* dht = DH + (t * B + lo) * H;
      const float* tc = TC + (t * B + lo) * H;
      float* d = dz.get() + (t * B + lo) * G;
      gate_gradients(n, H, a, cp, tc, dht, dh, dc, d);
      sgemm(false, false, n, H, G, d, G, wht.data(), H, 0.f, dh, H);
    }
  });
  // [dwi; dwh; db] = XH^T dz: one matmul over all T*B rows, its columns split over the
  // threads; then dx = dz wi^T, rows split.
  parallel(G, 64, [&](int64_t lo, int64_t hi) {
    sgemm(true, false, K, hi - lo, T * B, XH, K, dz.get() + lo, G, 0.f, dw.data() + lo, G);
  });
  std::memcpy(DWI, dw.data(), F * G * sizeof(float));
  std::memcpy(DWH, dw.data() + F * G, H * G * sizeof(float));
  std::memcpy(DB, dw.data() + (F + H) * G, G * sizeof(float));
  parallel(T * B, kMinRows, [&](int64_t lo, int64_t hi) {
    sgemm(false, false, hi - lo, F, G, dz.get() + lo * G, G, wit.data(), F, 0.f, DX + lo * F,
          F);
  });
}

// The XLA FFI handlers: shapes from the buffers, then the functions above.
static ffi::Error Fwd(Buf x, Buf wi, Buf wh, Buf bias, Buf c0, Buf h0, Out hs, Out cs,
                      Out xh, Out acts, Out tcs) {
  const int64_t T = x.dimensions()[0], B = x.dimensions()[1], F = x.dimensions()[2];
  const int64_t H = wh.dimensions()[0];
  std::memcpy(hs->typed_data(), h0.typed_data(), B * H * sizeof(float));
  std::memcpy(cs->typed_data(), c0.typed_data(), B * H * sizeof(float));
  lstm_forward(T, B, F, H, x.typed_data(), wi.typed_data(), wh.typed_data(),
               bias.typed_data(), hs->typed_data(), cs->typed_data(), xh->typed_data(),
               acts->typed_data(), tcs->typed_data());
  return ffi::Error::Success();
}

// x, wi, wh, b, c0, h0 as Fwd -> hs [T+1,B,H], c_T [B,H].
static ffi::Error Infer(Buf x, Buf wi, Buf wh, Buf bias, Buf c0, Buf h0, Out hs, Out cT) {
  const int64_t T = x.dimensions()[0], B = x.dimensions()[1], F = x.dimensions()[2];
  const int64_t H = wh.dimensions()[0];
  std::memcpy(hs->typed_data(), h0.typed_data(), B * H * sizeof(float));
  std::memcpy(cT->typed_data(), c0.typed_data(), B * H * sizeof(float));
  lstm_infer(T, B, F, H, x.typed_data(), wi.typed_data(), wh.typed_data(), bias.typed_data(),
             hs->typed_data(), cT->typed_data());
  return ffi::Error::Success();
}

// wi, wh, xh, cs, acts, tcs (as Fwd gives them), dhs [T,B,H] (cotangent of hs[1:]),
// dcT [B,H] (of cs[T]) -> dx [T,B,F], dwi [F,4H], dwh [H,4H], db [4H], dc0 [B,H], dh0 [B,H].
static ffi::Error Bwd(Buf wi, Buf wh, Buf xh, Buf cs, Buf acts, Buf tcs, Buf dhs, Buf dcT,
                      Out dx, Out dwi, Out dwh, Out db, Out dc0, Out dh0) {
  const int64_t T = dhs.dimensions()[0], B = dhs.dimensions()[1], F = wi.dimensions()[0];
  const int64_t H = wh.dimensions()[0];
  std::memcpy(dc0->typed_data(), dcT.typed_data(), B * H * sizeof(float));
  lstm_backward(T, B, F, H, wi.typed_data(), wh.typed_data(), xh.typed_data(),
                cs.typed_data(), acts.typed_data(), tcs.typed_data(), dhs.typed_data(),
                dx->typed_data(), dwi->typed_data(), dwh->typed_data(), db->typed_data(),
                dc0->typed_data(), dh0->typed_data());
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmFwd, Fwd,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Arg<Buf>()
                                  .Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>());

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
