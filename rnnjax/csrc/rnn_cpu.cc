// rnnjax's LSTM and LEM layers, and the LMU's hidden recurrence, for XLA's CPU backend:
// forward, inference and backward as XLA FFI handlers; matmuls by MKL's cblas_sgemm or
// oneDNN's dnnl_sgemm, whichever runs this CPU's shapes faster (rnnjax_pick_gemm, timed once
// per build); tanh by the rational approximation XLA's CPU backend uses (fast_tanh below).
// Built with -DRNNJAX_ONEDNN where oneDNN is installed.
// Built and loaded by rnnjax/cpu_kernel.py; the Flax layers that call it, with the equations
// and the layouts, are in rnnjax/kernel_layers.py and rnnjax/lmu.py.
//
// Time-major: x [T,B,F]; gates i, f, g, o (flax OptimizedLSTMCell's and PyTorch's order);
// wi [F,4H], wh [H,4H], b [4H] are the four gates' kernels and biases side by side.
// Threads split the batch rows, and each runs the whole recurrence for its rows: the rows
// of an LSTM are independent until the weight gradients, so no thread waits for another
// inside the time loop (inside XLA, the threads are those of XLA's own pool). Each thread
// calls the matmul engine single-threaded. A time step is one matmul,
// [x_t | h_{t-1} | 1] [wi; wh; b], and the training forward pass keeps those rows; a
// backward time step is one matmul for the cotangents of h_{t-1} (and x_t), and one that
// adds [x_t | h_{t-1} | 1]^T dz_t to the thread's share of the weight and bias gradients
// while dz_t is still in cache (the shares are summed at the end).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include <mkl.h>
#ifdef RNNJAX_ONEDNN
#include <omp.h>
#include <map>
#include <mutex>
#include <tuple>
#include "dnnl.hpp"
#endif
#include <xmmintrin.h>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using Buf = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;

static int g_threads = 1;   // set by rnnjax_kernel_init
enum Gemm { kMkl = 0, kOnednn = 1 };
static int g_gemm = kMkl;   // set by rnnjax_set_gemm
constexpr int64_t kMinRows = 16;  // fewer rows per thread than this: fewer threads
constexpr int64_t kChunkBytes = 512 * 1024;  // see recurrence

struct FlushDenormals {  // as XLA's CPU runtime does
  unsigned int saved;
  FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved); }
};

// How many parts `parallel` splits [0, total) into.
static int parts_of(int64_t total, int64_t min_part) {
  return (int)std::max<int64_t>(1, std::min<int64_t>(g_threads, total / min_part));
}

// XLA's intra-op thread pool, while one of the FFI handlers below runs (UsePool): the
// other parts of `parallel_parts` go there. Threads of our own would compete for the cores
// with XLA's pool threads, which spin for a while when they run out of work (inside the
// jitted training step they lost a fifth of their time that way; docs/performance.md).
static thread_local ffi::ThreadPool* t_pool = nullptr;
struct UsePool {
  explicit UsePool(ffi::ThreadPool& pool) : saved(t_pool) {
    if (pool.num_threads() > 0) t_pool = &pool;
  }
  ~UsePool() { t_pool = saved; }
  ffi::ThreadPool* saved;
};

// fn(k, lo, hi) for each part k of the parts_of(total, min_part) parts [lo, hi) of
// [0, total), in parallel; the calling thread takes the first. Inside an FFI handler the
// others are offered to XLA's pool, and the caller, done with its own part, runs any that
// no pool thread has started (so a busy pool delays nothing); elsewhere each gets a thread.
static void parallel_parts(int64_t total, int64_t min_part,
                           const std::function<void(int, int64_t, int64_t)>& fn) {
  const int n = parts_of(total, min_part);
  const std::function<void(int)> part = [&](int k) {
    FlushDenormals ftz;
    mkl_set_num_threads_local(1);
#ifdef RNNJAX_ONEDNN
    omp_set_num_threads(1);
#endif
    fn(k, total * k / n, total * (k + 1) / n);
  };
  if (t_pool && n > 1) {
    struct Claims { std::atomic<int> next{1}, done{0}; };
    // Shared: a pool task may start after this call has returned (and then claims nothing).
    auto claims = std::make_shared<Claims>();
    auto claim = [claims, n, run = &part] {
      for (int k; (k = claims->next.fetch_add(1)) < n;) {
        (*run)(k);
        claims->done.fetch_add(1, std::memory_order_release);
      }
    };
    for (int k = 1; k < n; ++k) t_pool->Schedule([claim] { claim(); });
    part(0);
    claim();
    while (claims->done.load(std::memory_order_acquire) < n - 1) std::this_thread::yield();
    return;
  }
  std::vector<std::thread> threads;
  for (int k = 1; k < n; ++k) threads.emplace_back(part, k);
  part(0);
  for (auto& t : threads) t.join();
}

// fn(lo, hi) for each part, as parallel_parts.
static void parallel(int64_t total, int64_t min_part,
                     const std::function<void(int64_t, int64_t)>& fn) {
  parallel_parts(total, min_part, [&](int, int64_t lo, int64_t hi) { fn(lo, hi); });
}

// tanh(x) for float32 as XLA's CPU backend computes it (Eigen's and XLA's rational
// approximation: odd degree-13 polynomial over even degree-6, input clamped to +-7.9053; x
// itself below 0.0004). Absolute error under 3e-7 against float64 tanh. Written branch-free,
// so that the compiler vectorises the loops for the instruction set it finds (-march=native):
// about ten times faster than MKL's vsTanh (docs/performance.md).
static inline float fast_tanh(float x) {
  const float c = 7.90531110763549805f;
  const float v = x > c ? c : (x < -c ? -c : x);
  const float v2 = v * v;
  float p = -2.76076847742355e-16f;
  p = p * v2 + 2.00018790482477e-13f;
  p = p * v2 + -8.60467152213735e-11f;
  p = p * v2 + 5.12229709037114e-08f;
  p = p * v2 + 1.48572235717979e-05f;
  p = p * v2 + 6.37261928875436e-04f;
  p = p * v2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * v2 + 1.18534705686654e-04f;
  q = q * v2 + 2.26843463243900e-03f;
  q = q * v2 + 4.89352518554385e-03f;
  const float r = v * p / q;
  return std::fabs(x) < 0.0004f ? x : r;
}

// out[i] = tanh(in[i]) for i < n (out may be in).
static void tanh_n(int64_t n, const float* in, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = fast_tanh(in[i]);
}

// The n rows [x_r | h_r | 1] (F + H + 1 wide) of one time step's matmul input, into out.
static void stack_rows(int64_t n, int64_t F, int64_t H, const float* x, const float* h,
                       float* out) {
  const int64_t K = F + H + 1;
  for (int64_t r = 0; r < n; ++r) {
    std::memcpy(out + r * K, x + r * F, F * sizeof(float));
    std::memcpy(out + r * K + F, h + r * H, H * sizeof(float));
    out[r * K + F + H] = 1.f;
  }
}

// c = op(a) op(b) + beta c, row-major, on one thread, by the engine g_gemm names.
static void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
#ifdef RNNJAX_ONEDNN
  if (g_gemm == kOnednn) {
    dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, 1.f, a, lda, b, ldb, beta, c, ldc);
    return;
  }
#endif
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              m, n, k, 1.f, a, lda, b, ldb, beta, c, ldc);
}

// c [m,n] = a [m,k] w [k,n] (c += a w with `accumulate`), a and c row-major and contiguous,
// on the calling thread, for a w that stays the same over many calls: the time steps of one
// layer call. With the oneDNN engine, oneDNN's matmul primitive with w laid out once, in the
// primitive's own blocked format, when the StepMatmul is made (dnnl_sgemm lays w out again
// on every call, which costs time at every step: docs/performance.md); the primitives are
// made once per shape and kept, and each StepMatmul has its own scratchpad, so that any
// thread may run them. Otherwise, or where oneDNN cannot make the primitive, sgemm.
class StepMatmul {
 public:
  StepMatmul(int64_t m, int64_t n, int64_t k, const float* w, bool accumulate)
      : m_(m), n_(n), k_(k), w_(w), beta_(accumulate ? 1.f : 0.f) {
#ifdef RNNJAX_ONEDNN
    if (g_gemm != kOnednn) return;
    made_ = made(m, n, k, accumulate);
    if (!made_) return;
    using dnnl::memory;
    const dnnl::engine& cpu = engine();
    stream_ = dnnl::stream(cpu);
    memory plain({{k, n}, memory::data_type::f32, memory::format_tag::ab}, cpu,
                 const_cast<float*>(w));
    packed_ = memory(made_->pd.weights_desc(), cpu);
    made_->pack.execute(stream_, plain, packed_);
    a_ = memory(made_->pd.src_desc(), cpu, DNNL_MEMORY_NONE);
    c_ = memory(made_->pd.dst_desc(), cpu, DNNL_MEMORY_NONE);
    scratch_ = memory(made_->pd.scratchpad_desc(), cpu);
    stream_.wait();
#endif
  }

  void operator()(const float* a, float* c) {
#ifdef RNNJAX_ONEDNN
    if (made_) {
      a_.set_data_handle(const_cast<float*>(a));
      c_.set_data_handle(c);
      made_->matmul.execute(stream_, {{DNNL_ARG_SRC, a_}, {DNNL_ARG_WEIGHTS, packed_},
                                      {DNNL_ARG_DST, c_}, {DNNL_ARG_SCRATCHPAD, scratch_}});
      stream_.wait();
      return;
    }
#endif
    sgemm(false, false, m_, n_, k_, a, k_, w_, n_, beta_, c, n_);
  }

 private:
  int64_t m_, n_, k_;
  const float* w_;
  float beta_;
#ifdef RNNJAX_ONEDNN
  struct Made {
    dnnl::matmul::primitive_desc pd;
    dnnl::matmul matmul;
    dnnl::reorder pack;  // plain w [k,n] -> the primitive's layout
  };
  static const dnnl::engine& engine() {
    static const dnnl::engine cpu(dnnl::engine::kind::cpu, 0);
    return cpu;
  }
  // The primitive for this shape, made on first use and kept; null where oneDNN has none.
  static const Made* made(int64_t m, int64_t n, int64_t k, bool accumulate) {
    static std::mutex mutex;
    static std::map<std::tuple<int64_t, int64_t, int64_t, bool>, std::unique_ptr<Made>> all;
    std::lock_guard<std::mutex> lock(mutex);
    auto& slot = all[{m, n, k, accumulate}];
    if (slot) return slot.get();
    using dnnl::memory;
    try {
      auto md = [](int64_t r, int64_t c, memory::format_tag tag) {
        return memory::desc({r, c}, memory::data_type::f32, tag);
      };
      dnnl::primitive_attr attr;
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      if (accumulate) {
        dnnl::post_ops ops;
        ops.append_sum(1.f);
        attr.set_post_ops(ops);
      }
      const auto ab = memory::format_tag::ab;
      auto pd = dnnl::matmul::primitive_desc(engine(), md(m, k, ab),
                                             md(k, n, memory::format_tag::any), md(m, n, ab),
                                             attr);
      auto pack = dnnl::reorder(dnnl::reorder::primitive_desc(
          engine(), md(k, n, ab), engine(), pd.weights_desc()));
      slot.reset(new Made{pd, dnnl::matmul(pd), pack});
    } catch (const dnnl::error&) {
      return nullptr;  // (and asked again next time: rare, and cheap next to sgemm)
    }
    return slot.get();
  }
  const Made* made_ = nullptr;
  dnnl::stream stream_;
  dnnl::memory packed_, a_, c_, scratch_;
#endif
};

// b [cols, rows] = a [rows, cols] transposed (row-major).
static void transpose(int64_t rows, int64_t cols, const float* a, float* b) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) b[j * rows + r] = a[r * cols + j];
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
// (training), [x_t | h_{t-1} | 1] to XH and the gate activations to A, at t. (tanh(c_t) is
// not kept: the backward pass recomputes it from c_t, which costs less than the memory
// traffic of keeping it.)
static void recurrence(int64_t T, int64_t B, int64_t F, int64_t H, int64_t lo, int64_t hi,
                       const float* x, const std::vector<float>& w, float* HS, float* CS,
                       float* C, float* XH, float* A) {
  const int64_t n = hi - lo, G = 4 * H, K = F + H + 1;
  // Rows per matmul: at most about kChunkBytes of pre-activations, so that the gate loops
  // after the matmul find them in the core's L2 cache (evaluation's 500 rows per thread of
  // an LSTM 256 are 2 MB; the presets' training batches are one chunk).
  const int64_t chunks = std::max<int64_t>(1, n * G * 4 / kChunkBytes);
  const int64_t most = (n + chunks - 1) / chunks;
  std::vector<float> xh_scratch(XH ? 0 : most * K), scratch(A ? 0 : most * G), tc(most * H);
  StepMatmul wide(most, G, K, w.data(), false);
  std::unique_ptr<StepMatmul> narrow;  // the chunks one row short, where n does not divide
  if (n % chunks) narrow.reset(new StepMatmul(n / chunks, G, K, w.data(), false));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t part = 0; part < chunks; ++part) {
      const int64_t r0 = n * part / chunks, m = n * (part + 1) / chunks - r0;
      const int64_t row = t * B + lo + r0, next = row + B;
      const float* h = HS + row * H;
      const float* c = CS ? CS + row * H : C + (lo + r0) * H;
      float* cn = CS ? CS + next * H : C + (lo + r0) * H;
      float* hn = HS + next * H;
      float* z = A ? A + row * G : scratch.data();
      float* xh = XH ? XH + row * K : xh_scratch.data();
      stack_rows(m, F, H, x + row * F, h, xh);
      (m == most ? wide : *narrow)(xh, z);
      tanh_n(m * G, z, z);
      gates(m, H, z, c, cn);
      tanh_n(m * H, cn, tc.data());
      for (int64_t r = 0; r < m; ++r) {
        const float* o = z + r * G + 3 * H;
        for (int64_t j = 0; j < H; ++j) hn[r * H + j] = o[j] * tc[r * H + j];
      }
    }
}

// x [T,B,F], wi [F,4H], wh [H,4H], b [4H]; hs[0] = h0 and cs[0] = c0 set by the caller ->
// hs [T+1,B,H], cs [T+1,B,H], and for the backward pass xh [T,B,F+H+1] ([x_t | h_{t-1} | 1]),
// acts [T,B,4H] (gate activations).
static void lstm_forward(int64_t T, int64_t B, int64_t F, int64_t H, const float* x,
                         const float* wi, const float* wh, const float* bias, float* HS,
                         float* CS, float* XH, float* A) {
  const std::vector<float> w = stacked_weights(F, H, wi, wh, bias);
  parallel(B, kMinRows, [&](int64_t lo, int64_t hi) {
    recurrence(T, B, F, H, lo, hi, x, w, HS, CS, nullptr, XH, A);
  });
}

// Inference: as lstm_forward, but C [B,H] holds c0 on entry and c_T on return, and no
// gate activations or tanh(c_t) are kept.
static void lstm_infer(int64_t T, int64_t B, int64_t F, int64_t H, const float* x,
                       const float* wi, const float* wh, const float* bias, float* HS,
                       float* C) {
  const std::vector<float> w = stacked_weights(F, H, wi, wh, bias);
  parallel(B, kMinRows, [&](int64_t lo, int64_t hi) {
    recurrence(T, B, F, H, lo, hi, x, w, HS, nullptr, C, nullptr, nullptr);
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

// wi, wh, XH, CS, A (as lstm_forward gives them), DH [T,B,H] (cotangent of hs[1:]);
// DC0 holds the cotangent of c_T on entry -> dx [T,B,F] (unless DX is null: an input
// that is not differentiated), dwi [F,4H], dwh [H,4H], db [4H], DC0 [B,H], DH0 [B,H]
// (cotangents of c0 and of h0 through the recurrence).
static void lstm_backward(int64_t T, int64_t B, int64_t F, int64_t H, const float* wi,
                          const float* wh, const float* XH, const float* CS, const float* A,
                          const float* DH, float* DX, float* DWI, float* DWH, float* DB,
                          float* DC0, float* DH0) {
  const int64_t G = 4 * H, K = F + H + 1, N = DX ? H + F : H;
  // [wh^T | wi^T] [4H, H+F] (wh^T alone without DX): one matmul per step gives the
  // cotangents of h_{t-1} and of x_t.
  std::vector<float> wt(G * N);
  for (int64_t r = 0; r < H; ++r)
    for (int64_t j = 0; j < G; ++j) wt[j * N + r] = wh[r * G + j];
  if (DX)
    for (int64_t r = 0; r < F; ++r)
      for (int64_t j = 0; j < G; ++j) wt[j * N + H + r] = wi[r * G + j];
  std::memset(DH0, 0, B * H * sizeof(float));                 // dh, carried backwards
  // Each thread adds its rows' share of [dwi; dwh; db] = sum_t [x_t | h_{t-1} | 1]^T dz_t
  // step by step, while dz_t is in cache; the shares are summed at the end.
  const int parts = parts_of(B, kMinRows);
  std::vector<std::vector<float>> dw(parts);
  parallel_parts(B, kMinRows, [&](int part, int64_t lo, int64_t hi) {
    const int64_t n = hi - lo;
    std::vector<float>& share = dw[part];
    share.assign(K * G, 0.f);
    std::vector<float> d(n * G), out(DX ? n * N : 0), tc(n * H);
    float* dc = DC0 + lo * H;
    float* dh = DH0 + lo * H;
    StepMatmul back(n, N, G, wt.data(), false);
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t row = t * B + lo;
      tanh_n(n * H, CS + (row + B) * H, tc.data());  // tanh(c_t), as the forward pass had it
      gate_gradients(n, H, A + row * G, CS + row * H, tc.data(), DH + row * H, dh, dc,
                     d.data());
      if (DX) {
        back(d.data(), out.data());
        for (int64_t r = 0; r < n; ++r) {
          std::memcpy(dh + r * H, &out[r * N], H * sizeof(float));
          std::memcpy(DX + (row + r) * F, &out[r * N + H], F * sizeof(float));
        }
      } else {
        back(d.data(), dh);
      }
      sgemm(true, false, K, G, n, XH + row * K, K, d.data(), G, 1.f, share.data(), G);
    }
  });
  for (int k = 1; k < parts; ++k)
    for (int64_t e = 0; e < K * G; ++e) dw[0][e] += dw[k][e];
  std::memcpy(DWI, dw[0].data(), F * G * sizeof(float));
  std::memcpy(DWH, dw[0].data() + F * G, H * G * sizeof(float));
  std::memcpy(DB, dw[0].data() + (F + H) * G, G * sizeof(float));
}

// The XLA FFI handlers: shapes from the buffers, then the functions above.
static ffi::Error Fwd(Buf x, Buf wi, Buf wh, Buf bias, Buf c0, Buf h0, Out hs, Out cs,
                      Out xh, Out acts, ffi::ThreadPool pool) {
  UsePool use(pool);
  const int64_t T = x.dimensions()[0], B = x.dimensions()[1], F = x.dimensions()[2];
  const int64_t H = wh.dimensions()[0];
  std::memcpy(hs->typed_data(), h0.typed_data(), B * H * sizeof(float));
  std::memcpy(cs->typed_data(), c0.typed_data(), B * H * sizeof(float));
  lstm_forward(T, B, F, H, x.typed_data(), wi.typed_data(), wh.typed_data(),
               bias.typed_data(), hs->typed_data(), cs->typed_data(), xh->typed_data(),
               acts->typed_data());
  return ffi::Error::Success();
}

// x, wi, wh, b, c0, h0 as Fwd -> hs [T+1,B,H], c_T [B,H].
static ffi::Error Infer(Buf x, Buf wi, Buf wh, Buf bias, Buf c0, Buf h0, Out hs, Out cT,
                        ffi::ThreadPool pool) {
  UsePool use(pool);
  const int64_t T = x.dimensions()[0], B = x.dimensions()[1], F = x.dimensions()[2];
  const int64_t H = wh.dimensions()[0];
  std::memcpy(hs->typed_data(), h0.typed_data(), B * H * sizeof(float));
  std::memcpy(cT->typed_data(), c0.typed_data(), B * H * sizeof(float));
  lstm_infer(T, B, F, H, x.typed_data(), wi.typed_data(), wh.typed_data(), bias.typed_data(),
             hs->typed_data(), cT->typed_data());
  return ffi::Error::Success();
}

// wi, wh, xh, cs, acts (as Fwd gives them), dhs [T,B,H] (cotangent of hs[1:]), dcT [B,H]
// (of cs[T]) -> dx [T,B,F] (or [0,B,F]: not wanted), dwi [F,4H], dwh [H,4H], db [4H],
// dc0 [B,H], dh0 [B,H].
static ffi::Error Bwd(Buf wi, Buf wh, Buf xh, Buf cs, Buf acts, Buf dhs, Buf dcT, Out dx,
                      Out dwi, Out dwh, Out db, Out dc0, Out dh0, ffi::ThreadPool pool) {
  UsePool use(pool);
  const int64_t T = dhs.dimensions()[0], B = dhs.dimensions()[1], F = wi.dimensions()[0];
  const int64_t H = wh.dimensions()[0];
  std::memcpy(dc0->typed_data(), dcT.typed_data(), B * H * sizeof(float));
  lstm_backward(T, B, F, H, wi.typed_data(), wh.typed_data(), xh.typed_data(),
                cs.typed_data(), acts.typed_data(), dhs.typed_data(),
                dx->dimensions()[0] ? dx->typed_data() : nullptr, dwi->typed_data(),
                dwh->typed_data(), db->typed_data(), dc0->typed_data(), dh0->typed_data());
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmFwd, Fwd,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Arg<Buf>()
                                  .Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmBwd, Bwd,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Arg<Buf>().Arg<Buf>()
                                  .Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>()
                                  .Ret<Buf>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmInfer, Infer,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Arg<Buf>()
                                  .Ret<Buf>().Ret<Buf>()
                                  .Ctx<ffi::ThreadPool>());

// ---------------------------------------------------------------------------------------
// LEM, Long Expressive Memory (rnnjax/cells.py's LEMCell), the same way: threads split the
// batch rows; per time step two matmuls (z' needs the first's gates, y' needs z').
//
// x [T,B,F]; wx [F,4H] (blocks dt_bar, dt_z, z, y), bx [4H]; wh [H,3H] (dt_bar, dt_z, z),
// bh [3H]; wz [H,H], bz [H]; dt. Per step and row:
//   p = [x_t | y | 1] W1,  W1 = [wx[:, :3H]; wh; bx[:3H] + bh]   (columns 0..2H halved, so
//       that one tanh gives both sigmoids: sigma(v) = tanh(v/2)/2 + 1/2)
//   s1 = sigmoid(p_1), s2 = sigmoid(p_2), c = tanh(p_3)       (dt_bar = dt s1, dt_z = dt s2)
//   z' = (1 - dt s2) z + dt s2 c
//   q = z' wz + u_t,  u_t = x_t wx[:, 3H:] + bx[3H:] + bz   (all t in one matmul, first)
//   s = tanh(q),  y' = (1 - dt s1) y + dt s1 s
// Kept for the backward pass (training): XY [T,B,F+H+1] = [x_t | y_{t-1} | 1],
// P [T,B,3H] = (s1, s2, c), S [T,B,H] = s, and every z in ZS [T+1,B,H].

static std::vector<float> lem_w1(int64_t F, int64_t H, const float* wx, const float* bx,
                                 const float* wh, const float* bh) {
  const int64_t G = 3 * H, K = F + H + 1;
  std::vector<float> w(K * G);
  for (int64_t r = 0; r < F; ++r) std::memcpy(&w[r * G], wx + r * 4 * H, G * sizeof(float));
  std::memcpy(&w[F * G], wh, H * G * sizeof(float));
  for (int64_t j = 0; j < G; ++j) w[(F + H) * G + j] = bx[j] + bh[j];
  for (int64_t r = 0; r < K; ++r)
    for (int64_t j = 0; j < 2 * H; ++j) w[r * G + j] *= 0.5f;
  return w;
}

// U [T*B,H] = x wx[:, 3H:] + bx[3H:] + bz, rows split over the threads.
static std::vector<float> lem_u(int64_t TB, int64_t F, int64_t H, const float* x,
                                const float* wx, const float* bx, const float* bz) {
  std::vector<float> u(TB * H);
  parallel(TB, kMinRows, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r)
      for (int64_t j = 0; j < H; ++j) u[r * H + j] = bx[3 * H + j] + bz[j];
    sgemm(false, false, hi - lo, H, F, x + lo * F, F, wx + 3 * H, 4 * H, 1.f, &u[lo * H], H);
  });
  return u;
}

// One thread's rows [lo, hi): YS [T+1,B,H] (y_0 set) gets every y; z from ZS[0] (training:
// every z kept in ZS) or, without ZS, from Z [B,H], which ends holding z_T.
static void lem_recurrence(int64_t T, int64_t B, int64_t F, int64_t H, int64_t lo,
                           int64_t hi, float dt, const float* x, const std::vector<float>& w1,
                           const float* wz, const float* U, float* YS, float* ZS, float* Z,
                           float* XY, float* P, float* S) {
  const int64_t n = hi - lo, G = 3 * H, K = F + H + 1;
  std::vector<float> xy_scratch(XY ? 0 : n * K), p_scratch(P ? 0 : n * G),
      s_scratch(S ? 0 : n * H);
  StepMatmul gates_step(n, G, K, w1.data(), false), out_step(n, H, H, wz, true);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t row = t * B + lo, next = row + B;
    const float* y = YS + row * H;
    float* yn = YS + next * H;
    const float* z = ZS ? ZS + row * H : Z + lo * H;
    float* zn = ZS ? ZS + next * H : Z + lo * H;
    float* xy = XY ? XY + row * K : xy_scratch.data();
    float* p = P ? P + row * G : p_scratch.data();
    float* s = S ? S + row * H : s_scratch.data();
    stack_rows(n, F, H, x + row * F, y, xy);
    gates_step(xy, p);
    tanh_n(n * G, p, p);
    for (int64_t r = 0; r < n; ++r) {
      float* a = p + r * G;
      for (int64_t j = 0; j < H; ++j) {
        const float s1 = 0.5f * a[j] + 0.5f, s2 = 0.5f * a[H + j] + 0.5f;
        a[j] = s1;
        a[H + j] = s2;
        const float dz = dt * s2;
        zn[r * H + j] = (1.f - dz) * z[r * H + j] + dz * a[2 * H + j];
      }
    }
    std::memcpy(s, U + row * H, n * H * sizeof(float));
    out_step(zn, s);
    tanh_n(n * H, s, s);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < H; ++j) {
        const float db = dt * p[r * G + j];
        yn[r * H + j] = (1.f - db) * y[r * H + j] + db * s[r * H + j];
      }
  }
}

// Backward: from XY, ZS, P, S (the forward pass's), DY [T,B,H] (cotangent of YS[1:]) and
// DZ0 holding that of z_T on entry -> DX [T,B,F] (unless null), DW1 [F+H+1,3H] (the
// cotangent of W1 before halving: rows of wx[:, :3H], wh, and the bias row, which both
// bx[:3H] and bh receive), DWXY [F,H] (of wx[:, 3H:]), DBU [H] (of bx[3H:] and of bz),
// DWZ [H,H], DZ0 and DY0 [B,H]. As the LSTM's: each thread adds its rows' share of the
// weight gradients step by step, while the step's cotangents are in cache.
static void lem_backward(int64_t T, int64_t B, int64_t F, int64_t H, float dt,
                         const float* wx, const float* wh, const float* wz,
                         const float* XY, const float* ZS, const float* P, const float* S,
                         const float* DY, float* DX, float* DW1, float* DWXY, float* DBU,
                         float* DWZ, float* DZ0, float* DY0) {
  const int64_t G = 3 * H, K = F + H + 1;
  std::vector<float> wht(G * H), wzt(H * H);
  transpose(H, G, wh, wht.data());  // wh^T [3H,H]
  transpose(H, H, wz, wzt.data());  // wz^T
  std::memset(DY0, 0, B * H * sizeof(float));                 // dy, carried backwards
  struct Share { std::vector<float> w1, wz, wxy; std::vector<double> bu; };
  const int parts = parts_of(B, kMinRows);
  std::vector<Share> shares(parts);
  parallel_parts(B, kMinRows, [&](int part, int64_t lo, int64_t hi) {
    const int64_t n = hi - lo;
    Share& sh = shares[part];
    sh.w1.assign(K * G, 0.f);
    sh.wz.assign(H * H, 0.f);
    sh.wxy.assign(F * H, 0.f);
    sh.bu.assign(H, 0.0);
    float* dz = DZ0 + lo * H;
    float* dy = DY0 + lo * H;
    std::vector<float> gz(n * H), dpt(n * G), dqt(n * H);
    StepMatmul back_z(n, H, H, wzt.data(), true), back_y(n, H, G, wht.data(), true);
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t row = t * B + lo;
      const float* a = P + row * G;
      const float* s = S + row * H;
      const float* xy = XY + row * K;
      const float* zp = ZS + row * H;  // z_{t-1}
      const float* dyt = DY + row * H;
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < H; ++j) {
          const int64_t k = r * H + j;
          const float s1 = a[r * G + j], sv = s[k], yp = xy[r * K + F + j];
          const float gy = dy[k] + dyt[k];
          dqt[k] = gy * dt * s1 * (1.f - sv * sv);
          dpt[r * G + j] = gy * (sv - yp) * dt * s1 * (1.f - s1);
          dy[k] = gy * (1.f - dt * s1);
        }
      std::memcpy(gz.data(), dz, n * H * sizeof(float));
      back_z(dqt.data(), gz.data());
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < H; ++j) {
          const int64_t k = r * H + j;
          const float s2 = a[r * G + H + j], c = a[r * G + 2 * H + j], g = gz[k];
          dpt[r * G + H + j] = g * (c - zp[k]) * dt * s2 * (1.f - s2);
          dpt[r * G + 2 * H + j] = g * dt * s2 * (1.f - c * c);
          dz[k] = g * (1.f - dt * s2);
        }
      back_y(dpt.data(), dy);
      // This step's share of the weight gradients: [x_t | y_{t-1} | 1]^T dp_t,
      // z_t^T dq_t, x_t^T dq_t and the column sums of dq_t.
      sgemm(true, false, K, G, n, xy, K, dpt.data(), G, 1.f, sh.w1.data(), G);
      sgemm(true, false, H, H, n, ZS + (row + B) * H, H, dqt.data(), H, 1.f, sh.wz.data(), H);
      sgemm(true, false, F, H, n, xy, K, dqt.data(), H, 1.f, sh.wxy.data(), H);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < H; ++j) sh.bu[j] += dqt[r * H + j];
      if (DX) {  // dx_t = dp_t wx[:, :3H]^T + dq_t wx[:, 3H:]^T
        sgemm(false, true, n, F, G, dpt.data(), G, wx, 4 * H, 0.f, DX + row * F, F);
        sgemm(false, true, n, F, H, dqt.data(), H, wx + 3 * H, 4 * H, 1.f, DX + row * F, F);
      }
    }
  });
  for (int k = 1; k < parts; ++k) {
    for (int64_t e = 0; e < K * G; ++e) shares[0].w1[e] += shares[k].w1[e];
    for (int64_t e = 0; e < H * H; ++e) shares[0].wz[e] += shares[k].wz[e];
    for (int64_t e = 0; e < F * H; ++e) shares[0].wxy[e] += shares[k].wxy[e];
    for (int64_t j = 0; j < H; ++j) shares[0].bu[j] += shares[k].bu[j];
  }
  std::memcpy(DW1, shares[0].w1.data(), K * G * sizeof(float));
  std::memcpy(DWZ, shares[0].wz.data(), H * H * sizeof(float));
  std::memcpy(DWXY, shares[0].wxy.data(), F * H * sizeof(float));
  for (int64_t j = 0; j < H; ++j) DBU[j] = (float)shares[0].bu[j];
}

// x, wx, bx, wh, bh, wz, bz, z0, y0; dt -> ys [T+1,B,H], zs [T+1,B,H], xy, p, s.
static ffi::Error LemFwd(Buf x, Buf wx, Buf bx, Buf wh, Buf bh, Buf wz, Buf bz, Buf z0,
                         Buf y0, float dt, Out ys, Out zs, Out xy, Out p, Out s,
                         ffi::ThreadPool pool) {
  UsePool use(pool);
  const int64_t T = x.dimensions()[0], B = x.dimensions()[1], F = x.dimensions()[2];
  const int64_t H = wz.dimensions()[0];
  std::memcpy(ys->typed_data(), y0.typed_data(), B * H * sizeof(float));
  std::memcpy(zs->typed_data(), z0.typed_data(), B * H * sizeof(float));
  const auto w1 = lem_w1(F, H, wx.typed_data(), bx.typed_data(), wh.typed_data(),
                         bh.typed_data());
  const auto u = lem_u(T * B, F, H, x.typed_data(), wx.typed_data(), bx.typed_data(),
                       bz.typed_data());
  parallel(B, kMinRows, [&](int64_t lo, int64_t hi) {
    lem_recurrence(T, B, F, H, lo, hi, dt, x.typed_data(), w1, wz.typed_data(), u.data(),
                   ys->typed_data(), zs->typed_data(), nullptr, xy->typed_data(),
                   p->typed_data(), s->typed_data());
  });
  return ffi::Error::Success();
}

// As LemFwd, keeping nothing for a backward pass -> ys [T+1,B,H], z_T [B,H].
static ffi::Error LemInfer(Buf x, Buf wx, Buf bx, Buf wh, Buf bh, Buf wz, Buf bz, Buf z0,
                           Buf y0, float dt, Out ys, Out zT,
                           ffi::ThreadPool pool) {
  UsePool use(pool);
  const int64_t T = x.dimensions()[0], B = x.dimensions()[1], F = x.dimensions()[2];
  const int64_t H = wz.dimensions()[0];
  std::memcpy(ys->typed_data(), y0.typed_data(), B * H * sizeof(float));
  std::memcpy(zT->typed_data(), z0.typed_data(), B * H * sizeof(float));
  const auto w1 = lem_w1(F, H, wx.typed_data(), bx.typed_data(), wh.typed_data(),
                         bh.typed_data());
  const auto u = lem_u(T * B, F, H, x.typed_data(), wx.typed_data(), bx.typed_data(),
                       bz.typed_data());
  parallel(B, kMinRows, [&](int64_t lo, int64_t hi) {
    lem_recurrence(T, B, F, H, lo, hi, dt, x.typed_data(), w1, wz.typed_data(), u.data(),
                   ys->typed_data(), nullptr, zT->typed_data(), nullptr, nullptr, nullptr);
  });
  return ffi::Error::Success();
}

// x, wx, wh, wz, xy, zs, p, s (LemFwd's), dys [T,B,H], dzT [B,H]; dt -> dx [T,B,F] (or
// [0,B,F]: not wanted), dw1 [F+H+1,3H], dwxy [F,H], dbu [H], dwz [H,H], dz0 [B,H], dy0 [B,H].
static ffi::Error LemBwd(Buf x, Buf wx, Buf wh, Buf wz, Buf xy, Buf zs, Buf p, Buf s,
                         Buf dys, Buf dzT, float dt, Out dx, Out dw1, Out dwxy, Out dbu,
                         Out dwz, Out dz0, Out dy0, ffi::ThreadPool pool) {
  UsePool use(pool);
  const int64_t T = x.dimensions()[0], B = x.dimensions()[1], F = x.dimensions()[2];
  const int64_t H = wz.dimensions()[0];
  std::memcpy(dz0->typed_data(), dzT.typed_data(), B * H * sizeof(float));
  lem_backward(T, B, F, H, dt, wx.typed_data(), wh.typed_data(),
               wz.typed_data(), xy.typed_data(), zs.typed_data(), p.typed_data(),
               s.typed_data(), dys.typed_data(),
               dx->dimensions()[0] ? dx->typed_data() : nullptr, dw1->typed_data(),
               dwxy->typed_data(), dbu->typed_data(), dwz->typed_data(), dz0->typed_data(),
               dy0->typed_data());
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLemFwd, LemFwd,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Attr<float>("dt")
                                  .Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLemInfer, LemInfer,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Attr<float>("dt")
                                  .Ret<Buf>().Ret<Buf>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLemBwd, LemBwd,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Attr<float>("dt")
                                  .Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>().Ret<Buf>()
                                  .Ret<Buf>().Ret<Buf>()
                                  .Ctx<ffi::ThreadPool>());

// ---------------------------------------------------------------------------------------
// A tanh recurrence whose input term is precomputed for every step (rnnjax/lmu.py's
// tanh_recurrence, the LMU's hidden state once its memory is computed in parallel):
//   h_t = tanh(d_t + h_{t-1} w),   d [T,B,H], w [H,H], h_0 [B,H]
// As above, threads split the batch rows; one matmul per step forward, and backward one for
// the cotangent of h_{t-1} and one adding h_{t-1}^T dd_t to the thread's share of dw.

// d, w, h0 -> hs [T+1,B,H] (hs[0] = h0): every h, all the backward pass needs.
static ffi::Error TanhFwd(Buf d, Buf w, Buf h0, Out hs, ffi::ThreadPool pool) {
  UsePool use(pool);
  const int64_t T = d.dimensions()[0], B = d.dimensions()[1], H = d.dimensions()[2];
  float* HS = hs->typed_data();
  std::memcpy(HS, h0.typed_data(), B * H * sizeof(float));
  parallel(B, kMinRows, [&](int64_t lo, int64_t hi) {
    const int64_t n = hi - lo;
    StepMatmul step(n, H, H, w.typed_data(), true);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t row = t * B + lo;
      float* hn = HS + (row + B) * H;
      std::memcpy(hn, d.typed_data() + row * H, n * H * sizeof(float));
      step(HS + row * H, hn);
      tanh_n(n * H, hn, hn);
    }
  });
  return ffi::Error::Success();
}

// w, hs (TanhFwd's), dhs [T,B,H] (cotangent of hs[1:]) -> dd [T,B,H], dw [H,H], dh0 [B,H].
static ffi::Error TanhBwd(Buf w, Buf hs, Buf dhs, Out dd, Out dw, Out dh0,
                          ffi::ThreadPool pool) {
  UsePool use(pool);
  const int64_t T = dhs.dimensions()[0], B = dhs.dimensions()[1], H = dhs.dimensions()[2];
  const float* HS = hs.typed_data();
  std::vector<float> wt(H * H);
  transpose(H, H, w.typed_data(), wt.data());
  float* G = dh0->typed_data();  // the cotangent of h_t, carried backwards
  std::memset(G, 0, B * H * sizeof(float));
  const int parts = parts_of(B, kMinRows);
  std::vector<std::vector<float>> shares(parts);
  parallel_parts(B, kMinRows, [&](int part, int64_t lo, int64_t hi) {
    const int64_t n = hi - lo;
    std::vector<float>& share = shares[part];
    share.assign(H * H, 0.f);
    float* g = G + lo * H;
    StepMatmul back(n, H, H, wt.data(), false);
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t row = t * B + lo;
      const float* h = HS + (row + B) * H;
      const float* dh = dhs.typed_data() + row * H;
      float* ddt = dd->typed_data() + row * H;
      for (int64_t k = 0; k < n * H; ++k) ddt[k] = (dh[k] + g[k]) * (1.f - h[k] * h[k]);
      back(ddt, g);
      sgemm(true, false, H, H, n, HS + row * H, H, ddt, H, 1.f, share.data(), H);
    }
  });
  for (int k = 1; k < parts; ++k)
    for (int64_t e = 0; e < H * H; ++e) shares[0][e] += shares[k][e];
  std::memcpy(dw->typed_data(), shares[0].data(), H * H * sizeof(float));
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxTanhFwd, TanhFwd,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Ret<Buf>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxTanhBwd, TanhBwd,
                              ffi::Ffi::Bind()
                                  .Arg<Buf>().Arg<Buf>().Arg<Buf>()
                                  .Ret<Buf>().Ret<Buf>().Ret<Buf>()
                                  .Ctx<ffi::ThreadPool>());

// Threads per call (the cores this process may use), and MKL without its own threads.
extern "C" void rnnjax_kernel_init(int threads) {
  g_threads = std::max(1, threads);
  mkl_set_threading_layer(MKL_THREADING_SEQUENTIAL);
}

// The matmul engines this build has: bit k set for engine k (kMkl, kOnednn).
extern "C" int rnnjax_gemm_engines() {
#ifdef RNNJAX_ONEDNN
  return (1 << kMkl) | (1 << kOnednn);
#else
  return 1 << kMkl;
#endif
}

extern "C" int rnnjax_set_gemm(int engine) {
  if (!(rnnjax_gemm_engines() & (1 << engine))) return -1;
  g_gemm = engine;
  return engine;
}

// Times each engine this build has on the kernels' typical matmuls (one time step of the
// tutorial LSTM forward and backward, and of an LSTM 128 on 784 steps; half a batch per
// thread, all threads at once, as the kernels run them), best of 5 rounds taken in turn, and
// selects the fastest. Returns its number.
extern "C" int rnnjax_pick_gemm() {
  struct Shape { bool ta; int64_t m, n, k; };
  const Shape shapes[] = {{false, 50, 1024, 285}, {false, 50, 256, 1024},
                          {false, 50, 512, 129}, {true, 285, 512, 1400}};
  const int engines = rnnjax_gemm_engines();
  double best[2] = {1e30, 1e30};
  for (int round = 0; round < 5; ++round)
    for (int e = 0; e < 2; ++e) {
      if (!(engines & (1 << e))) continue;
      g_gemm = e;
      const auto t0 = std::chrono::steady_clock::now();
      parallel(g_threads, 1, [&](int64_t, int64_t) {
        for (const Shape& sh : shapes) {
          std::vector<float> a(sh.m * sh.k, 0.01f), b(sh.k * sh.n, 0.02f), c(sh.m * sh.n);
          if (sh.ta) {
            for (int rep = 0; rep < 20; ++rep)
              sgemm(true, false, sh.m, sh.n, sh.k, a.data(), sh.m, b.data(), sh.n, 0.f,
                    c.data(), sh.n);
          } else {  // as the recurrences run them
            StepMatmul step(sh.m, sh.n, sh.k, b.data(), false);
            for (int rep = 0; rep < 20; ++rep) step(a.data(), c.data());
          }
        }
      });
      best[e] = std::min(best[e], std::chrono::duration<double>(
                                      std::chrono::steady_clock::now() - t0).count());
    }
  g_gemm = best[kOnednn] < best[kMkl] ? kOnednn : kMkl;
  return g_gemm;
}
