// LARS and LAMB as two passes over memory: TensorFlow CPU kernels.
//
// TensorFlow has no kernel that fuses a layer's norms with its update, so the
// keras.ops path of LARS and LAMB reads and writes each tensor 12-14 times per
// step. These kernels take two passes:
//   pass 1 reads w and g (LAMB: also updates m and v) and sums the two squared
//          norms, in double, per fixed-size chunk;
//   pass 2 applies the update with the trust ratio of the summed norms
//          (LAMB: from the update direction that pass 1 kept in a scratch
//          array, see ScratchArray).
// The rules are those of tfopt/_lars.py and tfopt/_lamb.py (their keras.ops
// code is the spec; tests/tfopt/test_native.py checks one against the other).
//
// Deterministic: the chunk size is fixed, each chunk's partial sums are
// written to their own slot, and the slots are added in index order, so the
// result does not depend on the number of threads or on scheduling.
//
// The variables are locked as TensorFlow's own training ops lock them
// (training_op_helpers.h), so a concurrent read sees a whole step or none.

#define EIGEN_USE_THREADS

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/dense_update_functor.h"
#include "tensorflow/core/kernels/training_op_helpers.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tensorflow {
namespace {

using CPUDevice = Eigen::ThreadPoolDevice;

// Elements per chunk: 64 KiB of float32 per operand, large enough to amortize
// scheduling, small enough to balance two to a few dozen threads.
constexpr int64_t kChunk = 16384;
// Independent accumulators per chunk: lets the compiler vectorize the sums
// without -ffast-math (the order of the additions is still fixed).
constexpr int kLanes = 8;

struct Norms {
  double a = 0.0;  // sum of w^2
  double b = 0.0;  // sum of u^2
};

// Runs fn(chunk_begin, chunk_end) over [0, n) in chunks of kChunk elements on
// TF's CPU worker threads. Chunk boundaries depend on n only.
template <typename Fn>
void ForEachChunk(OpKernelContext* ctx, int64_t n, int64_t bytes_per_element,
                  const Fn& fn) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  workers->ParallelFor(chunks, kChunk * bytes_per_element,
                       [&](int64_t first, int64_t last) {
                         for (int64_t c = first; c < last; ++c) {
                           const int64_t begin = c * kChunk;
                           fn(c, begin, std::min(n, begin + kChunk));
                         }
                       });
}

Norms SumInOrder(const std::vector<Norms>& parts) {
  Norms total;
  for (const Norms& p : parts) {
    total.a += p.a;
    total.b += p.b;
  }
  return total;
}

// trust_coefficient * ||w|| / (||u|| + eps), 1 where a norm is 0
// (optax.scale_by_trust_ratio, tfopt/_trust_ratio.py).
double TrustRatio(const Norms& norms, double trust_coefficient, double eps) {
  const double w_norm = std::sqrt(norms.a);
  const double u_norm = std::sqrt(norms.b);
  if (w_norm == 0.0 || u_norm == 0.0) return 1.0;
  return trust_coefficient * w_norm / (u_norm + eps);
}

template <typename T>
T Scalar(OpKernelContext* ctx, int input) {
  return ctx->input(input).scalar<T>()();
}

// The tensors of the (locked) resource variables at `inputs`, checked
// against the gradient at input `inputs.size()`.
template <typename T>
absl::Status VariableTensors(OpKernelContext* ctx,
                             const std::vector<int>& inputs,
                             std::vector<Tensor>* tensors) {
  const Tensor& grad = ctx->input(inputs.size());
  for (int input : inputs) {
    Tensor t;
    TF_RETURN_IF_ERROR(GetInputTensorFromVariable<CPUDevice, T>(
        ctx, input, /*lock_held=*/true, /*sparse=*/false, &t));
    if (!t.IsInitialized()) {
      return errors::FailedPrecondition(
          "Attempting to use an uninitialized variable: input ", input);
    }
    if (!t.shape().IsSameSize(grad.shape())) {
      return errors::InvalidArgument(
          "variable and grad must have the same shape: ",
          t.shape().DebugString(), " vs ", grad.shape().DebugString());
    }
    tensors->push_back(t);
  }
  return absl::OkStatus();
}

// --- The element loops, one chunk at a time -----------------------------
//
// Restrict-qualified, branch-free loops that the compiler vectorizes. Each is
// compiled twice: for the baseline ISA and for AVX2, chosen at run time. Both
// give the same bits: vector and scalar IEEE operations round alike, no
// -ffast-math, no FMA contraction (ISO C++ mode), and the sums' order is set
// by the kLanes accumulators, not by the vector width.

// The squared norms, in double, in kLanes = 8 lanes: element i of a chunk goes
// to lane i % 8, and each lane adds its elements in increasing i. The lanes
// are GCC generic vectors of 4 doubles (one ymm register with AVX2, two SSE2
// registers for the baseline), written out because GCC's own vectorization
// of 8 scalar accumulators shuffled single elements in and out of registers
// (profile in docs/benchmarks/index.md, item 5). Element-wise IEEE operations
// round as scalar code does.
typedef double V4d __attribute__((vector_size(32)));

// Four consecutive elements as doubles (built element-wise: GCC 12 turns this
// into one vcvtps2pd ymm, where __builtin_convertvector took two and a shuffle).
template <typename T>
inline __attribute__((always_inline)) V4d Load4(const T* p) {
  return V4d{static_cast<double>(p[0]), static_cast<double>(p[1]),
             static_cast<double>(p[2]), static_cast<double>(p[3])};
}

struct Lanes {
  V4d a[2] = {};  // sum of x^2: lane j is a[j / 4][j % 4]
  V4d b[2] = {};  // sum of y^2

  // The lanes added in lane order.
  Norms Sum() const {
    Norms total;
    for (int j = 0; j < kLanes; ++j) {
      total.a += a[j / 4][j % 4];
      total.b += b[j / 4][j % 4];
    }
    return total;
  }
};

// Adds x[i]^2 and y[i]^2 to `lanes`, i in [0, n). n is a multiple of kLanes
// except at a chunk's end, so a chunk may come in pieces. The last partial
// round is zero-padded and goes through the same body: a lane's sum is >= +0,
// and adding +0 to it changes no bit.
template <typename T>
inline __attribute__((always_inline)) void AddSquares(const T* __restrict x,
                                                      const T* __restrict y,
                                                      int64_t n, Lanes* lanes) {
  V4d a0 = lanes->a[0], a1 = lanes->a[1], b0 = lanes->b[0], b1 = lanes->b[1];
  auto round = [&](const T* xr, const T* yr) {
    const V4d x0 = Load4(xr), x1 = Load4(xr + 4);
    const V4d y0 = Load4(yr), y1 = Load4(yr + 4);
    a0 += x0 * x0;
    a1 += x1 * x1;
    b0 += y0 * y0;
    b1 += y1 * y1;
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) round(x + i, y + i);
  if (i < n) {
    T xr[kLanes] = {}, yr[kLanes] = {};
    std::copy(x + i, x + n, xr);
    std::copy(y + i, y + n, yr);
    round(xr, yr);
  }
  lanes->a[0] = a0;
  lanes->a[1] = a1;
  lanes->b[0] = b0;
  lanes->b[1] = b1;
}

// The norms' passes go kBlock elements at a time: a plain loop (which GCC
// vectorizes along i) writes the block's update direction u (LARS: to a
// buffer; LAMB: to its scratch array), then AddSquares reads it back from L1.
// One loop doing both left GCC vectorizing across the 8 lanes instead: scalar
// moment updates, spilled to the stack and reloaded as vectors, which made
// LAMB's pass 1 take 5x its pass 2.
constexpr int64_t kBlock = 512;  // A multiple of kLanes: lanes stay i % kLanes.

template <typename T>
inline __attribute__((always_inline)) Norms LarsNormsChunk(
    const T* __restrict w, const T* __restrict g, T decay, int64_t n) {
  static_assert(kBlock % kLanes == 0, "a block must hold whole lane rounds");
  alignas(64) T u[kBlock];
  Lanes lanes;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    const T* __restrict wb = w + b;
    const T* __restrict gb = g + b;
    for (int64_t i = 0; i < len; ++i) u[i] = gb[i] + decay * wb[i];
    AddSquares(wb, u, len, &lanes);
  }
  return lanes.Sum();
}

template <typename T, bool kNesterov>
inline __attribute__((always_inline)) void LarsApplyChunk(
    T* __restrict w, T* __restrict m, const T* __restrict g, T step,
    T momentum, T decay, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T u = -step * (g[i] + decay * w[i]);
    const T m_new = momentum * m[i] + u;
    m[i] = m_new;
    w[i] += kNesterov ? u + momentum * m_new : m_new;
  }
}

template <typename T>
struct LambScalars {
  T one_minus_beta_1, one_minus_beta_2, inv_bias_1, inv_bias_2, epsilon, decay;
};

// (m / bias_1) / (sqrt(v / bias_2) + epsilon) + decay * w, with the bias
// corrections as products by their reciprocals: one division per element
// instead of three (the divider bounds this loop on one core); within an ulp
// of the quotients.
template <typename T>
inline __attribute__((always_inline)) T LambUpdate(T m, T v, T w,
                                                   const LambScalars<T>& s) {
  return (m * s.inv_bias_1) / (std::sqrt(v * s.inv_bias_2) + s.epsilon) +
         s.decay * w;
}

template <typename T>
inline __attribute__((always_inline)) void LambMomentsBlock(
    const T* __restrict w, T* __restrict m, T* __restrict v,
    const T* __restrict g, const LambScalars<T>& s, T* __restrict u,
    int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T m_new = m[i] + (g[i] - m[i]) * s.one_minus_beta_1;
    const T v_new = v[i] + (g[i] * g[i] - v[i]) * s.one_minus_beta_2;
    m[i] = m_new;
    v[i] = v_new;
    u[i] = LambUpdate(m_new, v_new, w[i], s);
  }
}

// Pass 1 of LAMB: the moments, u into the scratch array (ScratchArray), and
// the norms from the block of u just written (still in L1).
template <typename T>
inline __attribute__((always_inline)) Norms LambMomentsChunk(
    const T* __restrict w, T* __restrict m, T* __restrict v,
    const T* __restrict g, const LambScalars<T> s, T* __restrict u,
    int64_t n) {
  Lanes lanes;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    LambMomentsBlock(w + b, m + b, v + b, g + b, s, u + b, len);
    AddSquares(w + b, u + b, len, &lanes);
  }
  return lanes.Sum();
}

// Pass 2 of LAMB: w -= step * u, u from pass 1.
template <typename T>
inline __attribute__((always_inline)) void LambApplyChunk(T* __restrict w,
                                                          const T* __restrict u,
                                                          T step, int64_t n) {
  for (int64_t i = 0; i < n; ++i) w[i] -= step * u[i];
}

// One set of the loops above, compiled for one ISA.
#define TFOPT_CHUNK_KERNELS(NS, ATTR)                                          \
  namespace NS {                                                               \
  template <typename T>                                                        \
  ATTR Norms LarsNorms(const T* w, const T* g, T decay, int64_t n) {           \
    return LarsNormsChunk<T>(w, g, decay, n);                                  \
  }                                                                            \
  template <typename T>                                                        \
  ATTR void LarsApply(T* w, T* m, const T* g, T step, T momentum, T decay,     \
                      bool nesterov, int64_t n) {                              \
    if (nesterov) {                                                            \
      LarsApplyChunk<T, true>(w, m, g, step, momentum, decay, n);              \
    } else {                                                                   \
      LarsApplyChunk<T, false>(w, m, g, step, momentum, decay, n);             \
    }                                                                          \
  }                                                                            \
  template <typename T>                                                        \
  ATTR Norms LambMoments(const T* w, T* m, T* v, const T* g,                   \
                         const LambScalars<T> s, T* u, int64_t n) {            \
    return LambMomentsChunk<T>(w, m, v, g, s, u, n);                           \
  }                                                                            \
  template <typename T>                                                        \
  ATTR void LambApply(T* w, const T* u, T step, int64_t n) {                   \
    LambApplyChunk<T>(w, u, step, n);                                          \
  }                                                                            \
  }  // namespace NS

TFOPT_CHUNK_KERNELS(baseline, )
#if defined(__x86_64__)
TFOPT_CHUNK_KERNELS(avx2, __attribute__((target("avx2"))))
// __builtin_cpu_init first: this runs in a static initializer, possibly
// before libgcc's own, and __builtin_cpu_supports reads its CPU model.
bool HasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}
const bool kAvx2 = HasAvx2();
#define TFOPT_DISPATCH(FN, ...) \
  (kAvx2 ? avx2::FN(__VA_ARGS__) : baseline::FN(__VA_ARGS__))
#else
#define TFOPT_DISPATCH(FN, ...) baseline::FN(__VA_ARGS__)
#endif
#undef TFOPT_CHUNK_KERNELS

// LARS (tfopt/_lars.py):
//   g = grad + weight_decay * w
//   r = trust_coefficient * ||w|| / (||g|| + eps)   (1 on a zero norm, or if
//                                                    adapt is false)
//   m = momentum * m - lr * r * g
//   w = w + (momentum * m - lr * r * g  if nesterov else  m)
template <typename T>
class LarsUpdateOp : public OpKernel {
 public:
  explicit LarsUpdateOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("use_nesterov", &nesterov_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("adapt", &adapt_));
  }

  void Compute(OpKernelContext* ctx) override {
    auto lock = MaybeLockVariableInputMutexesInOrder<CPUDevice, T>(
        ctx, /*do_lock=*/true, /*sparse=*/false, {0, 1});
    std::vector<Tensor> vars;
    OP_REQUIRES_OK(ctx, VariableTensors<T>(ctx, {0, 1}, &vars));
    T* w = vars[0].flat<T>().data();
    T* m = vars[1].flat<T>().data();
    const T* g = ctx->input(2).flat<T>().data();
    const int64_t n = ctx->input(2).NumElements();
    const double lr = Scalar<T>(ctx, 3);
    const T momentum = Scalar<T>(ctx, 4);
    const T decay = Scalar<T>(ctx, 5);
    const double trust_coefficient = Scalar<T>(ctx, 6);
    const double eps = Scalar<T>(ctx, 7);

    double ratio = 1.0;
    if (adapt_) {
      // Pass 1: ||w||^2 and ||g + decay * w||^2, directly (the expansion
      // ||g||^2 + 2 decay <g, w> + decay^2 ||w||^2 cancels).
      std::vector<Norms> parts((n + kChunk - 1) / kChunk);
      ForEachChunk(ctx, n, 2 * sizeof(T), [&](int64_t c, int64_t b, int64_t e) {
        parts[c] = TFOPT_DISPATCH(LarsNorms<T>, w + b, g + b, decay, e - b);
      });
      ratio = TrustRatio(SumInOrder(parts), trust_coefficient, eps);
    }
    const T step = static_cast<T>(lr * ratio);
    // Pass 2: the momentum update (ResourceApplyKerasMomentum's rule).
    const bool nesterov = nesterov_;
    ForEachChunk(ctx, n, 5 * sizeof(T), [&](int64_t, int64_t b, int64_t e) {
      TFOPT_DISPATCH(LarsApply<T>, w + b, m + b, g + b, step, momentum, decay,
                     nesterov, e - b);
    });
  }

 private:
  bool nesterov_;
  bool adapt_;
};

// A scratch array of n elements for LAMB's update direction u between its two
// passes, leased for one op call from a process-wide free list. Reading u in
// pass 2, instead of computing it again from m and v, saves a division and a
// square root per element, which bound the loop on two cores (profile in
// docs/benchmarks/index.md, item 5); the bytes moved stay 40 per parameter.
// The arrays are kept between steps, because an allocation of that size is
// page-faulted in (and zeroed by the kernel) on every step: the memory held is
// at most (LAMB ops running at once) x (the largest variable updated).
template <typename T>
class ScratchArray {
 public:
  explicit ScratchArray(int64_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        array_ = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (array_.size < n) {
      array_.data.reset(new (std::nothrow) T[n]);
      array_.size = array_.data ? n : 0;
    }
  }
  ~ScratchArray() {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(array_));
  }
  ScratchArray(const ScratchArray&) = delete;
  ScratchArray& operator=(const ScratchArray&) = delete;

  // Null if the allocation failed.
  T* data() { return array_.data.get(); }

 private:
  struct Array {
    std::unique_ptr<T[]> data;
    int64_t size = 0;
  };
  static inline std::mutex mu_;
  static inline std::vector<Array> free_;
  Array array_;
};

// LAMB (tfopt/_lamb.py), with one_minus_beta_* = 1 - beta_* and
// bias_* = 1 - beta_*^t computed by the caller:
//   m = m + (g - m) * one_minus_beta_1;  v = v + (g^2 - v) * one_minus_beta_2
//   u = (m / bias_1) / (sqrt(v / bias_2) + epsilon) + weight_decay * w
//   r = ||w|| / ||u||    (1 on a zero norm, or if adapt is false)
//   w = w - lr * r * u
template <typename T>
class LambUpdateOp : public OpKernel {
 public:
  explicit LambUpdateOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("adapt", &adapt_));
  }

  void Compute(OpKernelContext* ctx) override {
    auto lock = MaybeLockVariableInputMutexesInOrder<CPUDevice, T>(
        ctx, /*do_lock=*/true, /*sparse=*/false, {0, 1, 2});
    std::vector<Tensor> vars;
    OP_REQUIRES_OK(ctx, VariableTensors<T>(ctx, {0, 1, 2}, &vars));
    T* w = vars[0].flat<T>().data();
    T* m = vars[1].flat<T>().data();
    T* v = vars[2].flat<T>().data();
    const T* g = ctx->input(3).flat<T>().data();
    const int64_t n = ctx->input(3).NumElements();
    const double lr = Scalar<T>(ctx, 4);
    const LambScalars<T> s{Scalar<T>(ctx, 5),     Scalar<T>(ctx, 6),
                           T(1) / Scalar<T>(ctx, 7), T(1) / Scalar<T>(ctx, 8),
                           Scalar<T>(ctx, 9),     Scalar<T>(ctx, 10)};

    // Pass 1: the moments, and ||w||^2 and ||u||^2 with the new moments
    // (summed even when adapt is false: one code path, and the pass must read
    // and write the moments anyway).
    // u goes to a scratch array, so that pass 2 reads it instead of computing
    // it again from m and v.
    ScratchArray<T> scratch(n);
    T* u = scratch.data();
    OP_REQUIRES(ctx, u != nullptr || n == 0,
                errors::ResourceExhausted("TfoptLambUpdate: no memory for a ",
                                          n, "-element scratch array"));
    std::vector<Norms> parts((n + kChunk - 1) / kChunk);
    ForEachChunk(ctx, n, 7 * sizeof(T), [&](int64_t c, int64_t b, int64_t e) {
      parts[c] = TFOPT_DISPATCH(LambMoments<T>, w + b, m + b, v + b, g + b, s,
                                u + b, e - b);
    });
    const double ratio = adapt_ ? TrustRatio(SumInOrder(parts), 1.0, 0.0) : 1.0;
    const T step = static_cast<T>(lr * ratio);
    // Pass 2: the update.
    ForEachChunk(ctx, n, 3 * sizeof(T), [&](int64_t, int64_t b, int64_t e) {
      TFOPT_DISPATCH(LambApply<T>, w + b, u + b, step, e - b);
    });
  }

 private:
  bool adapt_;
};

}  // namespace

REGISTER_OP("TfoptLarsUpdate")
    .Input("var: resource")
    .Input("accum: resource")
    .Input("grad: T")
    .Input("lr: T")
    .Input("momentum: T")
    .Input("weight_decay: T")
    .Input("trust_coefficient: T")
    .Input("eps: T")
    .Attr("T: {float, double}")
    .Attr("use_nesterov: bool = false")
    .Attr("adapt: bool = true")
    .SetShapeFn([](shape_inference::InferenceContext*) {
      return absl::OkStatus();
    });

REGISTER_OP("TfoptLambUpdate")
    .Input("var: resource")
    .Input("m: resource")
    .Input("v: resource")
    .Input("grad: T")
    .Input("lr: T")
    .Input("one_minus_beta_1: T")
    .Input("one_minus_beta_2: T")
    .Input("bias_1: T")
    .Input("bias_2: T")
    .Input("epsilon: T")
    .Input("weight_decay: T")
    .Attr("T: {float, double}")
    .Attr("adapt: bool = true")
    .SetShapeFn([](shape_inference::InferenceContext*) {
      return absl::OkStatus();
    });

#define REGISTER_KERNELS(T)                                                   \
  REGISTER_KERNEL_BUILDER(                                                    \
      Name("TfoptLarsUpdate").Device(DEVICE_CPU).TypeConstraint<T>("T"),      \
      LarsUpdateOp<T>);                                                       \
  REGISTER_KERNEL_BUILDER(                                                    \
      Name("TfoptLambUpdate").Device(DEVICE_CPU).TypeConstraint<T>("T"),      \
      LambUpdateOp<T>);

REGISTER_KERNELS(float);
REGISTER_KERNELS(double);
#undef REGISTER_KERNELS

}  // namespace tensorflow
