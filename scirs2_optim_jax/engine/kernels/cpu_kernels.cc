// One-pass Adam/AdamW and LAMB steps for XLA:CPU, called through jax.ffi.
//
// XLA:CPU emits one loop per output, so an AdamW leaf costs three passes over memory
// (40 bytes per parameter instead of 28). These handlers update parameters and both moments
// of a group of leaves in one pass, in place (the Python side aliases every output to its
// input buffer), and spread the work over XLA's intra-op thread pool.
//
// Operands of every handler: hyper (f32[11]), decay flags (u8[n], one per leaf), n params,
// n grads (f32), then the moments: n mu and n nu leaves (tree layout), or one flat mu and
// one flat nu buffer holding the group's leaves back to back (grouped layout, attribute
// grouped=true). Results: n outputs, then the moments in the same layout as given. The
// outputs are the new parameters (attribute apply=true) or the updates that optax's
// apply_updates adds to the parameters (apply=false).
//
// Master weights (Adam only, attribute master=true, with apply=true): the params are the f32
// master copy, and the n model parameters (bfloat16 or f32, leaf by leaf) follow the moments
// as operands and results; each is set to its new master value, rounded to bfloat16 (to
// nearest even) where it is bfloat16, in the same pass.
// Gradients may be f32 or bfloat16, leaf by leaf, in either mode.
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
//
// A third handler, scirs2_sum_squares, sums the squares of each leaf (global-norm clipping).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per task: 128 KiB per stream
// LAMB leaves up to this many elements run both passes in one task (p, g, mu, nu: 1 MiB).
constexpr int64_t kLocalLeaf = 1 << 16;

struct Hyper {
  float neg_lr, b1, a1, b2, a2, eps, eps_root, wd, c1, c2, gs;
};

struct Leaf {
  const float* p_in;
  const void* g;  // float, or bfloat16 bits when g_bf16
  float* mu;
  float* nu;
  float* out;
  int64_t size;
  bool decay;
  bool g_bf16;
  void* low;  // master mode: the model's parameter, set to the new master (rounded if bf16)
  bool low_f32;
};

inline float Load(float x) { return x; }

inline float Load(uint16_t bf16) {
  const uint32_t bits = static_cast<uint32_t>(bf16) << 16;
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// float -> bfloat16, rounding to nearest even as XLA's convert does; NaN stays a quiet NaN.
inline uint16_t ToBf16(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<uint16_t>(nan ? ((bits >> 16) | 0x0040u) : rounded);
}

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

// Both moments of one element, updated in place; returns Adam's direction (before decay).
inline float UpdateMoments(float g, float& mu, float& nu, const Hyper& h) {
  const float m = h.a1 * g + h.b1 * mu;
  const float n = h.a2 * (g * g) + h.b2 * nu;
  mu = m;
  nu = n;
  return Direction(m, n, h);
}

// In apply mode `out` is the parameter buffer itself (DecodeLeaves makes it so) and the
// parameters are read through it, so every pointer below can be restrict: the loops
// vectorise without runtime alias checks.
// The hyperparameters are copied to a local first: read through the reference, they could
// alias the float stores, and the compiler would reload them (or version the loop).
inline void Store(uint16_t* low, int64_t i, float x) { low[i] = ToBf16(x); }

inline void Store(float* low, int64_t i, float x) { low[i] = x; }

// L is the model parameters' type in master mode (uint16_t: bfloat16 bits, or float); void
// outside it.
template <bool kDecay, bool kApply, typename G, typename L>
void AdamChunk(const Leaf& leaf, int64_t begin, int64_t end, const Hyper& hyper) {
  const Hyper h = hyper;
  const G* __restrict g = static_cast<const G*>(leaf.g);
  float* __restrict mu = leaf.mu;
  float* __restrict nu = leaf.nu;
  float* __restrict out = leaf.out;
  const float* __restrict p = leaf.p_in;  // read only in update mode
  L* __restrict low = static_cast<L*>(leaf.low);  // written only in master mode
  for (int64_t i = begin; i < end; ++i) {
    const float gi = h.gs * Load(g[i]);
    const float pi = kApply ? out[i] : p[i];
    float u = UpdateMoments(gi, mu[i], nu[i], h);
    if (kDecay) u = u + h.wd * pi;
    const float step = h.neg_lr * u;
    const float result = kApply ? pi + step : step;
    out[i] = result;
    if constexpr (!std::is_void_v<L>) Store(low, i, result);
  }
}

using AdamKernel = void (*)(const Leaf&, int64_t, int64_t, const Hyper&);

template <typename G, typename L>
AdamKernel PickAdam(bool decay, bool apply) {
  if (apply) return decay ? AdamChunk<true, true, G, L> : AdamChunk<false, true, G, L>;
  return decay ? AdamChunk<true, false, G, void> : AdamChunk<false, false, G, void>;
}

template <typename G>
AdamKernel PickAdam(const Leaf& leaf, bool apply) {
  if (leaf.low == nullptr) return PickAdam<G, void>(leaf.decay, apply);
  return leaf.low_f32 ? PickAdam<G, float>(leaf.decay, apply)
                      : PickAdam<G, uint16_t>(leaf.decay, apply);
}

AdamKernel PickAdam(const Leaf& leaf, bool apply) {
  return leaf.g_bf16 ? PickAdam<uint16_t>(leaf, apply) : PickAdam<float>(leaf, apply);
}

// LAMB, first pass: moments, and the sums of p^2 and u^2 over the chunk.
template <bool kDecay, typename G>
void LambNorms(const Leaf& leaf, int64_t begin, int64_t end, const Hyper& hyper, double* sums) {
  const Hyper h = hyper;
  const float* __restrict p = leaf.p_in;
  const G* __restrict g = static_cast<const G*>(leaf.g);
  float* __restrict mu = leaf.mu;
  float* __restrict nu = leaf.nu;
  float pp = 0.0f, uu = 0.0f;
  double psum = 0.0, usum = 0.0;
  constexpr int64_t kBlock = 1024;  // float partial sums over short blocks, then double
  for (int64_t s = begin; s < end; s += kBlock) {
    const int64_t e = std::min(end, s + kBlock);
    pp = 0.0f;
    uu = 0.0f;
#pragma omp simd reduction(+ : pp, uu)
    for (int64_t i = s; i < e; ++i) {
      const float gi = h.gs * Load(g[i]);
      const float pi = p[i];
      float u = UpdateMoments(gi, mu[i], nu[i], h);
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
void LambApply(const Leaf& leaf, int64_t begin, int64_t end, const Hyper& hyper, float ratio) {
  const Hyper h = hyper;
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
// In master mode the n bfloat16 parameters follow the moments, as operands and as results.
ffi::ErrorOr<std::vector<Leaf>> DecodeLeaves(ffi::RemainingArgs args, ffi::RemainingRets rets,
                                            bool apply, bool grouped, bool master) {
  const size_t total = args.size();
  const size_t extra = master ? 1 : 0;
  size_t n = 0;
  if (grouped && total >= 3) n = (total - 3) / (2 + extra);
  if (!grouped && total >= 1) n = (total - 1) / (4 + extra);
  const bool counts_ok = grouped
                             ? (total == (2 + extra) * n + 3 && rets.size() == (1 + extra) * n + 2)
                             : (total == (4 + extra) * n + 1 && rets.size() == (3 + extra) * n);
  if (!counts_ok || (master && !apply)) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "scirs2 kernels: operands must be flags, n params, n grads and the moments "
        "(then n bf16 params with master=true, which needs apply=true)"));
  }
  // Where the bf16 parameters start among the operands and among the results.
  const size_t low_arg = grouped ? 2 * n + 3 : 4 * n + 1;
  const size_t low_ret = grouped ? n + 2 : 3 * n;
  auto flags_or = args.get<ffi::AnyBuffer>(0);
  if (flags_or.has_error() || flags_or.value().element_type() != ffi::DataType::U8 ||
      flags_or.value().element_count() != n) {
    return ffi::Unexpected(ffi::Error::InvalidArgument("scirs2 kernels: flags must be u8[n]"));
  }
  const uint8_t* flags = flags_or.value().typed_data<uint8_t>();
  auto f32 = [](const ffi::AnyBuffer& b) { return b.element_type() == ffi::DataType::F32; };
  auto bf16 = [](const ffi::AnyBuffer& b) { return b.element_type() == ffi::DataType::BF16; };
  float* mu_flat = nullptr;
  float* nu_flat = nullptr;
  int64_t flat_size = 0;
  if (grouped) {
    ffi::AnyBuffer mu_in = args.get<ffi::AnyBuffer>(2 * n + 1).value();
    ffi::AnyBuffer nu_in = args.get<ffi::AnyBuffer>(2 * n + 2).value();
    flat_size = static_cast<int64_t>(mu_in.element_count());
    if (!f32(mu_in) || !f32(nu_in) || static_cast<int64_t>(nu_in.element_count()) != flat_size) {
      return ffi::Unexpected(ffi::Error::InvalidArgument(
          "scirs2 kernels: grouped moments must be two f32 buffers of equal size"));
    }
    mu_flat = rets.get<ffi::AnyBuffer>(n).value()->typed_data<float>();
    nu_flat = rets.get<ffi::AnyBuffer>(n + 1).value()->typed_data<float>();
    if (mu_flat != mu_in.typed_data<float>()) {
      std::memcpy(mu_flat, mu_in.typed_data<float>(), 4 * flat_size);
    }
    if (nu_flat != nu_in.typed_data<float>()) {
      std::memcpy(nu_flat, nu_in.typed_data<float>(), 4 * flat_size);
    }
  }
  std::vector<Leaf> leaves(n);
  int64_t offset = 0;
  for (size_t i = 0; i < n; ++i) {
    ffi::AnyBuffer p = args.get<ffi::AnyBuffer>(1 + i).value();
    ffi::AnyBuffer g = args.get<ffi::AnyBuffer>(1 + n + i).value();
    const int64_t size = static_cast<int64_t>(p.element_count());
    if (!f32(p) || !(f32(g) || bf16(g)) || static_cast<int64_t>(g.element_count()) != size) {
      return ffi::Unexpected(ffi::Error::InvalidArgument(
          "scirs2 kernels: params (f32) and grads (f32 or bf16) of a leaf must be the same size"));
    }
    void* low = nullptr;
    bool low_f32 = false;
    if (master) {
      ffi::AnyBuffer low_in = args.get<ffi::AnyBuffer>(low_arg + i).value();
      if (!(bf16(low_in) || f32(low_in)) ||
          static_cast<int64_t>(low_in.element_count()) != size) {
        return ffi::Unexpected(ffi::Error::InvalidArgument(
            "scirs2 kernels: master=true needs bf16 or f32 params of the master's size (leaf " +
            std::to_string(i) + " of the call)"));
      }
      // Every element is written, so an unaliased output needs no copy of the input.
      low = rets.get<ffi::AnyBuffer>(low_ret + i).value()->untyped_data();
      low_f32 = f32(low_in);
    }
    float* mu = nullptr;
    float* nu = nullptr;
    if (grouped) {
      mu = mu_flat + offset;
      nu = nu_flat + offset;
    } else {
      ffi::AnyBuffer mu_in = args.get<ffi::AnyBuffer>(1 + 2 * n + i).value();
      ffi::AnyBuffer nu_in = args.get<ffi::AnyBuffer>(1 + 3 * n + i).value();
      if (!f32(mu_in) || !f32(nu_in) || static_cast<int64_t>(mu_in.element_count()) != size ||
          static_cast<int64_t>(nu_in.element_count()) != size) {
        return ffi::Unexpected(ffi::Error::InvalidArgument(
            "scirs2 kernels: the moments of a leaf must be f32 of the leaf's size"));
      }
      mu = rets.get<ffi::AnyBuffer>(n + i).value()->typed_data<float>();
      nu = rets.get<ffi::AnyBuffer>(2 * n + i).value()->typed_data<float>();
      if (mu != mu_in.typed_data<float>()) std::memcpy(mu, mu_in.typed_data<float>(), 4 * size);
      if (nu != nu_in.typed_data<float>()) std::memcpy(nu, nu_in.typed_data<float>(), 4 * size);
    }
    offset += size;
    float* params_out = rets.get<ffi::AnyBuffer>(i).value()->typed_data<float>();
    const float* params_in = p.typed_data<float>();
    if (apply && params_out != params_in) {
      std::memcpy(params_out, params_in, 4 * size);  // then update in place
      params_in = params_out;
    }
    leaves[i] = {params_in, g.untyped_data(), mu,  nu,
                 params_out, size,            flags[i] != 0, bf16(g), low,
                 low_f32};
  }
  if (grouped && offset != flat_size) {
    return ffi::Unexpected(ffi::Error::InvalidArgument(
        "scirs2 kernels: grouped moments must hold exactly the group's leaves"));
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

struct Prepared {
  std::vector<Leaf> leaves;
  std::vector<Chunk> chunks;
  Hyper hyper;
};

// What both handlers start from: the hyperparameters, the leaves and the work split.
ffi::ErrorOr<Prepared> Prepare(const ffi::Buffer<ffi::F32>& hyper, ffi::RemainingArgs args,
                               ffi::RemainingRets rets, bool apply, bool grouped, bool master) {
  if (hyper.element_count() != sizeof(Hyper) / sizeof(float)) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("scirs2 kernels: hyper must hold 11 floats"));
  }
  auto decoded = DecodeLeaves(args, rets, apply, grouped, master);
  if (decoded.has_error()) return ffi::Unexpected(decoded.error());
  Prepared prepared{std::move(decoded.value()), {}, ReadHyper(hyper)};
  prepared.chunks = MakeChunks(prepared.leaves);
  return prepared;
}

ffi::Error AdamStepImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::RemainingArgs args,
                        ffi::RemainingRets rets, bool apply, bool grouped, bool master) {
  auto prepared = Prepare(hyper, args, rets, apply, grouped, master);
  if (prepared.has_error()) return prepared.error();
  const std::vector<Leaf>& leaves = prepared.value().leaves;
  const std::vector<Chunk>& chunks = prepared.value().chunks;
  const Hyper& h = prepared.value().hyper;
  ParallelFor(pool, static_cast<int64_t>(chunks.size()), [&](int64_t k) {
    const Chunk& c = chunks[k];
    const Leaf& leaf = leaves[c.leaf];
    PickAdam(leaf, apply)(leaf, c.begin, c.end, h);
  });
  return ffi::Error::Success();
}

ffi::Error LambStepImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::RemainingArgs args,
                        ffi::RemainingRets rets, bool apply, bool grouped, bool master) {
  if (master) return ffi::Error::InvalidArgument("scirs2 kernels: LAMB has no master=true mode");
  auto prepared = Prepare(hyper, args, rets, apply, grouped, false);
  if (prepared.has_error()) return prepared.error();
  const std::vector<Leaf>& leaves = prepared.value().leaves;
  const std::vector<Chunk>& chunks = prepared.value().chunks;
  const Hyper& h = prepared.value().hyper;
  std::vector<double> sums(2 * chunks.size());
  auto norms_of = [&](int64_t k) {
    const Chunk& c = chunks[k];
    const Leaf& leaf = leaves[c.leaf];
    auto norms = leaf.g_bf16 ? (leaf.decay ? LambNorms<true, uint16_t> : LambNorms<false, uint16_t>)
                             : (leaf.decay ? LambNorms<true, float> : LambNorms<false, float>);
    norms(leaf, c.begin, c.end, h, &sums[2 * k]);
  };
  auto apply_of = [&](int64_t k, float ratio) {
    const Chunk& c = chunks[k];
    const Leaf& leaf = leaves[c.leaf];
    auto step = apply ? (leaf.decay ? LambApply<true, true> : LambApply<false, true>)
                      : (leaf.decay ? LambApply<true, false> : LambApply<false, false>);
    step(leaf, c.begin, c.end, h, ratio);
  };
  // Chunks are made leaf by leaf: leaf i owns chunks [first[i], first[i + 1]).
  std::vector<int64_t> first(leaves.size() + 1, static_cast<int64_t>(chunks.size()));
  for (int64_t k = static_cast<int64_t>(chunks.size()) - 1; k >= 0; --k) first[chunks[k].leaf] = k;
  for (int64_t i = static_cast<int64_t>(leaves.size()) - 1; i >= 0; --i) {
    first[i] = std::min(first[i], first[i + 1]);
  }
  // Per-leaf norms, summed in chunk order so the result does not depend on scheduling.
  auto ratio_of = [&](size_t i) {
    double p2 = 0.0, u2 = 0.0;
    for (int64_t k = first[i]; k < first[i + 1]; ++k) {
      p2 += sums[2 * k];
      u2 += sums[2 * k + 1];
    }
    const float pn = static_cast<float>(std::sqrt(p2));
    const float un = static_cast<float>(std::sqrt(u2));
    return (pn > 0.0f && un > 0.0f) ? pn / un : 1.0f;
  };
  // A leaf that fits in a core's cache runs both passes in one task, so the second pass
  // reads it from the cache instead of memory: 16 of the 40 bytes per element that the two
  // passes move. A larger leaf is split into chunks over the pool for each pass.
  std::vector<int64_t> local, wide;
  for (size_t i = 0; i < leaves.size(); ++i) {
    if (leaves[i].size <= kLocalLeaf) {
      local.push_back(static_cast<int64_t>(i));
    } else {
      for (int64_t k = first[i]; k < first[i + 1]; ++k) wide.push_back(k);
    }
  }
  const int64_t num_local = static_cast<int64_t>(local.size());
  ParallelFor(pool, num_local + static_cast<int64_t>(wide.size()), [&](int64_t t) {
    if (t >= num_local) return norms_of(wide[t - num_local]);
    const size_t i = static_cast<size_t>(local[t]);
    for (int64_t k = first[i]; k < first[i + 1]; ++k) norms_of(k);
    const float ratio = ratio_of(i);
    for (int64_t k = first[i]; k < first[i + 1]; ++k) apply_of(k, ratio);
  });
  if (!wide.empty()) {
    std::vector<float> ratio(leaves.size(), 1.0f);
    for (size_t i = 0; i < leaves.size(); ++i) {
      if (leaves[i].size > kLocalLeaf) ratio[i] = ratio_of(i);
    }
    ParallelFor(pool, static_cast<int64_t>(wide.size()), [&](int64_t t) {
      apply_of(wide[t], ratio[chunks[wide[t]].leaf]);
    });
  }
  return ffi::Error::Success();
}

// Sum of squares of each of n f32 leaves, for global-norm clipping: XLA:CPU reduces every
// leaf in its own single-threaded loop (a tree of 10M parameters: 3.4 ms, where one read at
// the measured bandwidth takes 1 ms). Here the leaves are split into the same chunks as the
// steps and spread over the pool; each chunk sums float partials over short blocks into a
// double, and the chunks of a leaf are added in order, so the result does not depend on
// scheduling. Operands: the n leaves. Result: f32[n], the sums.
ffi::Error SumSquaresImpl(ffi::ThreadPool pool, ffi::RemainingArgs args,
                          ffi::Result<ffi::Buffer<ffi::F32>> sums_out) {
  const size_t n = args.size();
  if (sums_out->element_count() != n) {
    return ffi::Error::InvalidArgument("scirs2 kernels: sum of squares needs f32[n] for n leaves");
  }
  std::vector<Leaf> leaves(n);
  for (size_t i = 0; i < n; ++i) {
    auto x = args.get<ffi::AnyBuffer>(i);
    if (x.has_error() || x.value().element_type() != ffi::DataType::F32) {
      return ffi::Error::InvalidArgument("scirs2 kernels: sum of squares takes f32 leaves");
    }
    leaves[i] = {nullptr, x.value().typed_data<float>(), nullptr, nullptr, nullptr,
                 static_cast<int64_t>(x.value().element_count()), false};
  }
  const std::vector<Chunk> chunks = MakeChunks(leaves);
  std::vector<double> partial(chunks.size());
  ParallelFor(pool, static_cast<int64_t>(chunks.size()), [&](int64_t k) {
    const Chunk& c = chunks[k];
    const float* __restrict x = static_cast<const float*>(leaves[c.leaf].g);
    // 32 independent float lanes (four vector accumulators), so the adds do not wait on
    // one another; every 1024 elements the lanes are added into a double.
    constexpr int64_t kLanes = 32, kBlock = 1024;
    double total = 0.0;
    int64_t i = c.begin;
    for (; i + kBlock <= c.end; i += kBlock) {
      float lanes[kLanes] = {};
      for (int64_t j = 0; j < kBlock; j += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) lanes[l] += x[i + j + l] * x[i + j + l];
      }
      float block = 0.0f;
      for (int64_t l = 0; l < kLanes; ++l) block += lanes[l];
      total += block;
    }
    for (; i < c.end; ++i) total += static_cast<double>(x[i]) * x[i];
    partial[k] = total;
  });
  std::vector<double> per_leaf(n, 0.0);
  for (size_t k = 0; k < chunks.size(); ++k) per_leaf[chunks[k].leaf] += partial[k];
  float* out = sums_out->typed_data();
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(per_leaf[i]);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Scirs2SumSquares, SumSquaresImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .RemainingArgs()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// Both step handlers take the same operands and attributes.
static auto StepBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .RemainingArgs()
      .RemainingRets()
      .Attr<bool>("apply")
      .Attr<bool>("grouped")
      .Attr<bool>("master");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(Scirs2AdamStep, AdamStepImpl, StepBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(Scirs2LambStep, LambStepImpl, StepBinding());
