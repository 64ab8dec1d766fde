// One-pass Adam/AdamW and LAMB steps for XLA:CPU, called through jax.ffi.
//
// XLA:CPU emits one loop per output, so an AdamW leaf costs three passes over memory
// (40 bytes per parameter instead of 28). These handlers update parameters and both moments
// of a group of leaves in one pass, in place (the Python side aliases every output to its
// input buffer), and spread the work over XLA's intra-op thread pool.
//
// Operands of every handler: hyper (f32[11]), then for n leaves: n params, n grads, n mu,
// n nu (all f32, each group of four with equal sizes). Results: n outputs, n mu, n nu. The
// outputs are the new parameters (attribute apply=true) or the updates that optax's
// apply_updates adds to the parameters (apply=false).
//
// hyper = [neg_lr, b1, 1 - b1, b2, 1 - b2, eps, eps_root, weight_decay, correction1,
//          correction2, grad_scale]; 1 - b is passed rather than computed here so that it is
//          rounded to float32 exactly as the XLA path rounds it. grad_scale multiplies every
//          gradient first (a clipping factor; 1 otherwise), as a preceding transform would.
//
// Element by element the arithmetic follows the XLA path in transforms/ in the same order:
//   mu = a1 * g + b1 * mu;  nu = a2 * g * g + b2 * nu  (a = 1 - b)
//   u = (mu / c1) / (sqrt(nu / c2 + eps_root) + eps) [+ wd * p]
//   AdamW: out = neg_lr * u (+ p when applied)
//   LAMB:  out = neg_lr * (ratio * u) (+ p), ratio = |p| / |u| per leaf (1 if either is 0)

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per task: 128 KiB per stream

struct Hyper {
  float neg_lr, b1, a1, b2, a2, eps, eps_root, wd, c1, c2, gs;
};

struct Leaf {
  const float* p_in;
  const float* g;
  float* mu;
  float* nu;
  float* out;
  int64_t size;
};

struct Chunk {
  int64_t leaf;
  int64_t begin;
  int64_t end;
};

// Runs fn(0..count-1) on the calling thread and the pool's threads. The caller never waits
// for a task that has not started (a busy pool cannot deadlock it): it takes tasks itself
// until none are left, then waits only for tasks other threads are running.
void ParallelFor(ffi::ThreadPool& pool, int64_t count, const std::function<void(int64_t)>& fn) {
  if (count <= 0) return;
  struct Shared {
    std::function<void(int64_t)> fn;
    int64_t count;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> finished{0};
  };
  auto shared = std::make_shared<Shared>();
  shared->fn = fn;
  shared->count = count;
  auto drain = [](Shared& s) {
    for (int64_t i; (i = s.next.fetch_add(1, std::memory_order_relaxed)) < s.count;) {
      s.fn(i);
      s.finished.fetch_add(1, std::memory_order_release);
    }
  };
  // The caller works too: pool threads beyond num_threads - 1 would only oversubscribe.
  int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, count - 1);
  for (int64_t t = 0; t < helpers; ++t) {
    pool.Schedule([shared, drain]() { drain(*shared); });
  }
  drain(*shared);
  while (shared->finished.load(std::memory_order_acquire) < count) std::this_thread::yield();
}

inline float Direction(float m, float n, const Hyper& h) {
  return (m / h.c1) / (std::sqrt(n / h.c2 + h.eps_root) + h.eps);
}

// In apply mode `out` is the parameter buffer itself (DecodeLeaves makes it so) and the
// parameters are read through it, so every pointer below can be restrict: the loops
// vectorise without runtime alias checks.
template <bool kDecay, bool kApply>
void AdamChunk(const Leaf& leaf, int64_t begin, int64_t end, const Hyper& h) {
  const float* __restrict g = leaf.g;
  float* __restrict mu = leaf.mu;
  float* __restrict nu = leaf.nu;
  float* __restrict out = leaf.out;
  const float* __restrict p = leaf.p_in;  // read only in update mode
  const float a1 = h.a1, a2 = h.a2;
  for (int64_t i = begin; i < end; ++i) {
    const float gi = h.gs * g[i];
    const float pi = kApply ? out[i] : p[i];
    const float m = a1 * gi + h.b1 * mu[i];
    const float n = a2 * (gi * gi) + h.b2 * nu[i];
    mu[i] = m;
    nu[i] = n;
    float u = Direction(m, n, h);
    if (kDecay) u = u + h.wd * pi;
    const float step = h.neg_lr * u;
    out[i] = kApply ? pi + step : step;
  }
}

// LAMB, first pass: moments, and the sums of p^2 and u^2 over the chunk.
template <bool kDecay>
void LambNorms(const Leaf& leaf, int64_t begin, int64_t end, const Hyper& h, double* sums) {
  const float* __restrict p = leaf.p_in;
  const float* __restrict g = leaf.g;
  float* __restrict mu = leaf.mu;
  float* __restrict nu = leaf.nu;
  const float a1 = h.a1, a2 = h.a2;
  float pp = 0.0f, uu = 0.0f;
  double psum = 0.0, usum = 0.0;
  constexpr int64_t kBlock = 1024;  // float partial sums over short blocks, then double
  for (int64_t s = begin; s < end; s += kBlock) {
    const int64_t e = std::min(end, s + kBlock);
    pp = 0.0f;
    uu = 0.0f;
#pragma omp simd reduction(+ : pp, uu)
    for (int64_t i = s; i < e; ++i) {
      const float gi = h.gs * g[i];
      const float pi = p[i];
      const float m = a1 * gi + h.b1 * mu[i];
      const float n = a2 * (gi * gi) + h.b2 * nu[i];
      mu[i] = m;
      nu[i] = n;
      float u = Direction(m, n, h);
      if (kDecay) u = u + h.wd * pi;
      pp += pi * pi;
      uu += u * u;
    }
    psum += pp;
    usum += uu;
  }
  sums[0] = psum;
  sums[1] = usum;
}

// LAMB, second pass: recompute the direction from the new moments and scale it.
template <bool kDecay, bool kApply>
void LambApply(const Leaf& leaf, int64_t begin, int64_t end, const Hyper& h, float ratio) {
  const float* __restrict mu = leaf.mu;
  const float* __restrict nu = leaf.nu;
  float* __restrict out = leaf.out;
  const float* __restrict p = leaf.p_in;  // read only in update mode
  for (int64_t i = begin; i < end; ++i) {
    const float pi = kApply ? out[i] : p[i];
    float u = Direction(mu[i], nu[i], h);
    if (kDecay) u = u + h.wd * pi;
    const float step = h.neg_lr * (ratio * u);
    out[i] = kApply ? pi + step : step;
  }
}

// Decodes the operands into leaves. Moments (and, in apply mode, parameters) whose output
// XLA did not alias to the input are copied to the output first, then updated there.
ffi::ErrorOr<std::vector<Leaf>> DecodeLeaves(ffi::RemainingArgs args, ffi::RemainingRets rets,
                                            bool apply) {
  if (args.size() % 4 != 0 || rets.size() * 4 != args.size() * 3) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "scirs2 kernels: expected 4n operands after hyper and 3n results"));
  }
  const size_t n = args.size() / 4;
  std::vector<Leaf> leaves(n);
  for (size_t i = 0; i < n; ++i) {
    ffi::AnyBuffer in[4] = {args.get<ffi::AnyBuffer>(i).value(),
                            args.get<ffi::AnyBuffer>(n + i).value(),
                            args.get<ffi::AnyBuffer>(2 * n + i).value(),
                            args.get<ffi::AnyBuffer>(3 * n + i).value()};
    ffi::Result<ffi::AnyBuffer> out[3] = {rets.get<ffi::AnyBuffer>(i).value(),
                                          rets.get<ffi::AnyBuffer>(n + i).value(),
                                          rets.get<ffi::AnyBuffer>(2 * n + i).value()};
    const int64_t size = static_cast<int64_t>(in[0].element_count());
    for (const auto& b : in) {
      if (b.element_type() != ffi::DataType::F32 ||
          static_cast<int64_t>(b.element_count()) != size) {
        return ffi::Unexpected(ffi::Error::InvalidArgument(
            "scirs2 kernels: every operand of a leaf must be f32 of the same size"));
      }
    }
    float* mu = out[1]->typed_data<float>();
    float* nu = out[2]->typed_data<float>();
    // The moments are updated in place: start from the inputs if XLA gave other buffers.
    if (mu != in[2].typed_data<float>()) std::memcpy(mu, in[2].typed_data<float>(), 4 * size);
    if (nu != in[3].typed_data<float>()) std::memcpy(nu, in[3].typed_data<float>(), 4 * size);
    float* params_out = out[0]->typed_data<float>();
    const float* params_in = in[0].typed_data<float>();
    if (apply && params_out != params_in) {
      std::memcpy(params_out, params_in, 4 * size);  // then update in place
      params_in = params_out;
    }
    leaves[i] = {params_in, in[1].typed_data<float>(), mu, nu, params_out, size};
  }
  return leaves;
}

std::vector<Chunk> MakeChunks(const std::vector<Leaf>& leaves) {
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < leaves.size(); ++i) {
    for (int64_t s = 0; s < leaves[i].size; s += kChunk) {
      chunks.push_back({static_cast<int64_t>(i), s, std::min(leaves[i].size, s + kChunk)});
    }
  }
  return chunks;
}

Hyper ReadHyper(const ffi::Buffer<ffi::F32>& hyper) {
  Hyper h;
  std::memcpy(&h, hyper.typed_data(), sizeof(Hyper));
  return h;
}

ffi::Error AdamStepImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::RemainingArgs args,
                        ffi::RemainingRets rets, bool apply, bool decay) {
  if (hyper.element_count() != 11) {
    return ffi::Error::InvalidArgument("scirs2_adam_step: hyper must hold 11 floats");
  }
  auto decoded = DecodeLeaves(args, rets, apply);
  if (decoded.has_error()) return decoded.error();
  const std::vector<Leaf>& leaves = decoded.value();
  const std::vector<Chunk> chunks = MakeChunks(leaves);
  const Hyper h = ReadHyper(hyper);
  auto kernel = apply ? (decay ? AdamChunk<true, true> : AdamChunk<false, true>)
                      : (decay ? AdamChunk<true, false> : AdamChunk<false, false>);
  ParallelFor(pool, static_cast<int64_t>(chunks.size()), [&](int64_t k) {
    const Chunk& c = chunks[k];
    kernel(leaves[c.leaf], c.begin, c.end, h);
  });
  return ffi::Error::Success();
}

ffi::Error LambStepImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::RemainingArgs args,
                        ffi::RemainingRets rets, bool apply, bool decay) {
  if (hyper.element_count() != 11) {
    return ffi::Error::InvalidArgument("scirs2_lamb_step: hyper must hold 11 floats");
  }
  auto decoded = DecodeLeaves(args, rets, apply);
  if (decoded.has_error()) return decoded.error();
  const std::vector<Leaf>& leaves = decoded.value();
  const std::vector<Chunk> chunks = MakeChunks(leaves);
  const Hyper h = ReadHyper(hyper);
  std::vector<double> sums(2 * chunks.size());
  auto norms = decay ? LambNorms<true> : LambNorms<false>;
  ParallelFor(pool, static_cast<int64_t>(chunks.size()), [&](int64_t k) {
    const Chunk& c = chunks[k];
    norms(leaves[c.leaf], c.begin, c.end, h, &sums[2 * k]);
  });
  // Per-leaf norms, summed in chunk order so the result does not depend on scheduling.
  std::vector<double> p2(leaves.size(), 0.0), u2(leaves.size(), 0.0);
  for (size_t k = 0; k < chunks.size(); ++k) {
    p2[chunks[k].leaf] += sums[2 * k];
    u2[chunks[k].leaf] += sums[2 * k + 1];
  }
  std::vector<float> ratio(leaves.size());
  for (size_t i = 0; i < leaves.size(); ++i) {
    const float pn = static_cast<float>(std::sqrt(p2[i]));
    const float un = static_cast<float>(std::sqrt(u2[i]));
    ratio[i] = (pn > 0.0f && un > 0.0f) ? pn / un : 1.0f;
  }
  auto step = apply ? (decay ? LambApply<true, true> : LambApply<false, true>)
                    : (decay ? LambApply<true, false> : LambApply<false, false>);
  ParallelFor(pool, static_cast<int64_t>(chunks.size()), [&](int64_t k) {
    const Chunk& c = chunks[k];
    step(leaves[c.leaf], c.begin, c.end, h, ratio[c.leaf]);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Scirs2AdamStep, AdamStepImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<bool>("apply")
                                  .Attr<bool>("decay"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(Scirs2LambStep, LambStepImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<bool>("apply")
                                  .Attr<bool>("decay"));
