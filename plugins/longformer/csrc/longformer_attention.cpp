// Longformer self-attention as Hugging Face's LongformerSelfAttention computes it, as one torch op.
//
// tfopt_longformer::attention(input, weight, bias, mask, global_weight, global_bias, global,
//                             num_heads, window, impl) -> Tensor
//
// The arguments follow ONNX Runtime's com.microsoft::LongformerAttention (weight layout "format 1"):
//   input          (B, S, E)   hidden states
//   weight, bias   (E, 3E), (3E)  [Wq^T | Wk^T | Wv^T] and [bq | bk | bv], the local projections
//   mask           (B, S)      float, < 0 for padding (ORT uses -10000), 0 otherwise
//   global_weight, global_bias   the same for the global projections (query_global, key_global, value_global)
//   global         (B, S)      int, != 0 for tokens with global attention
//   window         one-sided window w (the config's attention_window is 2w)
// Unlike ORT's kernel, S need not be a multiple of 2w: the kernel pads internally.
//
// Semantics (HF, transformers 5): a token that is neither padding nor global attends to the
// unpadded, non-global keys j with |i - j| <= w and to every global token (with the local q/k/v);
// a global token attends to every unpadded token with the global q/k/v; padding gets zeros.
// Time and memory are O(S * w) (plus O(S * G) for G global tokens).
//
// impl: 1 (the default: measured faster, docs/benchmark-longformer.md) = hand-written loops over queries with
//       at::parallel_for (exact 2w+1 window, no score tensor, AVX-512/AVX2/x86-64 clones picked at run time);
//       0 = ATen blocked form (chunks of w queries against their 3w keys, batched GEMMs).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

#ifdef TFOPT_WITH_CUDA
// longformer_attention_cuda.cu: the local + global-key part on the GPU (untested: no GPU in this project)
at::Tensor tfopt_local_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_ok,
                            const at::Tensor& gidx, const at::Tensor& gval, int64_t w);
#endif

namespace {

using at::Tensor;

struct Globals {
  Tensor index;   // (B, G) int64 positions, filler 0 where a row has fewer than G
  Tensor valid;   // (B, G) bool
  std::vector<int64_t> flat_pos;   // b * S + position, one per real global token
  std::vector<int64_t> flat_slot;  // b * G + slot, same order
  int64_t count = 0;               // G
};

Globals find_globals(const Tensor& is_global) {
  auto flags = is_global.to(at::kCPU).to(at::kBool).contiguous();  // (B, S): small, read on the host
  const int64_t B = flags.size(0), S = flags.size(1);
  const bool* p = flags.data_ptr<bool>();
  std::vector<std::vector<int64_t>> rows(B);
  int64_t G = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t s = 0; s < S; ++s) if (p[b * S + s]) rows[b].push_back(s);
    G = std::max<int64_t>(G, rows[b].size());
  }
  Globals out;
  out.count = G;
  out.index = at::zeros({B, G}, at::kLong);
  out.valid = at::zeros({B, G}, at::kBool);
  auto idx = out.index.accessor<int64_t, 2>();
  auto ok = out.valid.accessor<bool, 2>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < (int64_t)rows[b].size(); ++g) {
      idx[b][g] = rows[b][g];
      ok[b][g] = true;
      out.flat_pos.push_back(b * S + rows[b][g]);
      out.flat_slot.push_back(b * G + g);
    }
  }
  out.index = out.index.to(is_global.device());
  out.valid = out.valid.to(is_global.device());
  return out;
}

void check_inputs(const Tensor& input, const Tensor& weight, const Tensor& bias, const Tensor& mask,
                  const Tensor& global_weight, const Tensor& global_bias, const Tensor& global,
                  int64_t num_heads, int64_t window) {
  TORCH_CHECK(input.dim() == 3, "input must be (batch, sequence, hidden), got ", input.sizes());
  const int64_t B = input.size(0), S = input.size(1), E = input.size(2);
  TORCH_CHECK(num_heads > 0 && E % num_heads == 0, "num_heads=", num_heads, " does not divide hidden size ", E);
  TORCH_CHECK(window > 0, "window must be positive, got ", window);
  for (const Tensor* w : {&weight, &global_weight})
    TORCH_CHECK(w->dim() == 2 && w->size(0) == E && w->size(1) == 3 * E, "weights must be (E, 3E) = (", E, ", ", 3 * E, "), got ", w->sizes());
  for (const Tensor* b : {&bias, &global_bias})
    TORCH_CHECK(b->dim() == 1 && b->size(0) == 3 * E, "biases must be (3E,), got ", b->sizes());
  for (const Tensor* m : {&mask, &global})
    TORCH_CHECK(m->dim() == 2 && m->size(0) == B && m->size(1) == S, "mask and global must be (batch, sequence) = (", B, ", ", S, "), got ", m->sizes());
}

// (B, S, E) -> (B, H, S, D), contiguous
Tensor heads(const Tensor& x, int64_t H) {
  const int64_t B = x.size(0), S = x.size(1), E = x.size(2);
  return x.reshape({B, S, H, E / H}).permute({0, 2, 1, 3}).contiguous();
}

// Local + global-key attention of the non-global queries, ATen blocked form. Returns (B, H, S, D).
Tensor local_aten(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_ok,
                  const Globals& g, int64_t w) {
  const int64_t B = q.size(0), H = q.size(1), S = q.size(2), D = q.size(3);
  const int64_t nc = (S + w - 1) / w, Sp = nc * w, L = Sp + 2 * w;
  const float lowest = std::numeric_limits<float>::lowest();
  auto qc = at::constant_pad_nd(q, {0, 0, 0, Sp - S}).view({B, H, nc, w, D});
  auto kp = at::constant_pad_nd(k, {0, 0, w, Sp - S + w});  // (B, H, L, D)
  auto vp = at::constant_pad_nd(v, {0, 0, w, Sp - S + w});
  auto kwin = kp.as_strided({B, H, nc, 3 * w, D}, {H * L * D, L * D, w * D, D, 1});
  auto vwin = vp.as_strided({B, H, nc, 3 * w, D}, {H * L * D, L * D, w * D, D, 1});
  auto scores = at::matmul(qc, kwin.transpose(-1, -2));  // (B, H, nc, w, 3w)
  // key j = c*w - w + t is in query i = c*w + r's window iff r <= t <= r + 2w
  auto r = at::arange(w, q.options().dtype(at::kLong)).view({w, 1});
  auto t = at::arange(3 * w, q.options().dtype(at::kLong)).view({1, 3 * w});
  auto band = t.ge(r).logical_and(t.le(r + 2 * w));  // (w, 3w)
  auto okp = at::constant_pad_nd(key_ok.to(at::kFloat), {w, Sp - S + w}).to(at::kBool);  // (B, L)
  auto okwin = okp.as_strided({B, nc, 3 * w}, {L, w, 1});
  auto allowed = band.view({1, 1, w, 3 * w}).logical_and(okwin.unsqueeze(2)).unsqueeze(1);  // (B,1,nc,w,3w)
  scores.masked_fill_(allowed.logical_not(), lowest);
  Tensor out;
  if (g.count > 0) {
    const int64_t G = g.count;
    auto gi = g.index.view({B, 1, G, 1}).expand({B, H, G, D});
    auto kg = at::gather(k, 2, gi), vg = at::gather(v, 2, gi);  // (B, H, G, D)
    auto gs = at::matmul(qc.view({B, H, Sp, D}), kg.transpose(-1, -2)).view({B, H, nc, w, G});
    gs.masked_fill_(g.valid.logical_not().view({B, 1, 1, 1, G}), lowest);
    auto probs = at::softmax(at::cat({gs, scores}, -1), -1);
    out = at::matmul(probs.narrow(-1, G, 3 * w), vwin) +
          at::matmul(probs.narrow(-1, 0, G).reshape({B, H, Sp, G}), vg).view({B, H, nc, w, D});
  } else {
    out = at::matmul(at::softmax(scores, -1), vwin);
  }
  return out.view({B, H, Sp, D}).narrow(2, 0, S);
}

// exp for the softmax, vectorizable (std::exp is not without -ffast-math): Cody-Waite range
// reduction and a degree-6 polynomial, relative error ~2e-7 over the range softmax uses (x <= 0).
// x is clamped to [-87, 0]: a masked slot (padding) may score above the row's best unmasked one,
// and exp of that would overflow to inf, and inf * 0 (its mask weight) to NaN.
#pragma omp declare simd
static inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.0f), 0.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { int32_t i; float f; } scale;
  scale.i = (static_cast<int32_t>(n) + 127) << 23;
  return p * scale.f;
}

struct LoopArgs {
  const float *q, *kt, *k, *v;  // kt: keys transposed, (B, H, D, S), so a query's window scores are axpys
  float* out;
  const bool* key_ok;
  const int64_t* gidx;
  const bool* gval;
  int64_t B, H, S, D, G, w;
};

// Rows [begin, end) of (batch, head, query); compiled for AVX-512, AVX2 and plain x86-64, picked at run time.
// Window scores: for each feature d, score[lo..hi] += q[d] * K^T[d][lo..hi] (contiguous, no horizontal sums).
__attribute__((target_clones("avx512f", "avx2", "default")))
static void local_rows(const LoopArgs& a, int64_t begin, int64_t end) {
  const int64_t S = a.S, D = a.D, G = a.G, w = a.w, H = a.H;
  const int64_t width = 2 * w + 1;
  std::vector<float> score(width + G), keep(width + G);
  std::vector<int64_t> gkey(G);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / (H * S), h = (row / S) % H, i = row % S;
    const float* qi = a.q + row * D;
    const float* ktbase = a.kt + (b * H + h) * D * S;
    const float* kbase = a.k + (b * H + h) * S * D;
    const float* vbase = a.v + (b * H + h) * S * D;
    const int64_t lo = std::max<int64_t>(0, i - w), hi = std::min<int64_t>(S - 1, i + w), n = hi - lo + 1;
    float* sc = score.data();
    float* kp = keep.data();
    std::fill(sc, sc + n, 0.f);
    for (int64_t d = 0; d < D; ++d) {
      const float qd = qi[d];
      const float* kt = ktbase + d * S + lo;
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) sc[t] += qd * kt[t];
    }
    int64_t any = 0;
    for (int64_t t = 0; t < n; ++t) any += (kp[t] = a.key_ok[b * S + lo + t] ? 1.f : 0.f) > 0.f;
    int64_t ng = 0;
    for (int64_t s = 0; s < G; ++s) {
      if (!a.gval[b * G + s]) continue;
      const float* kj = kbase + a.gidx[b * G + s] * D;
      float acc = 0.f;
#pragma omp simd reduction(+ : acc)
      for (int64_t d = 0; d < D; ++d) acc += qi[d] * kj[d];
      gkey[ng] = a.gidx[b * G + s];
      sc[n + ng] = acc;
      kp[n + ng] = 1.f;
      ++ng;
    }
    const int64_t total_slots = n + ng;
    if (any + ng == 0) continue;
    float best = std::numeric_limits<float>::lowest();
    for (int64_t m = 0; m < total_slots; ++m)
      if (kp[m] > 0.f) best = std::max(best, sc[m]);
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t m = 0; m < total_slots; ++m) {
      sc[m] = exp_approx(sc[m] - best) * kp[m];
      total += sc[m];
    }
    const float inv = 1.f / total;
    float* oi = a.out + row * D;
    for (int64_t m = 0; m < total_slots; ++m) {
      const float p = sc[m] * inv;
      if (p == 0.f) continue;
      const float* vj = vbase + (m < n ? lo + m : gkey[m - n]) * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) oi[d] += p * vj[d];
    }
  }
}

// The same with loops: exact 2w+1 window, scores of one query at a time, no (S, 3w) tensor.
Tensor local_loops(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_ok,
                   const Globals& g, int64_t w) {
  const int64_t B = q.size(0), H = q.size(1), S = q.size(2), D = q.size(3);
  auto out = at::zeros_like(q);
  auto kt = k.transpose(-1, -2).contiguous();
  auto ok_c = key_ok.to(at::kBool).contiguous();
  auto gidx_c = g.index.contiguous();
  auto gval_c = g.valid.contiguous();
  LoopArgs args{q.data_ptr<float>(), kt.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), out.data_ptr<float>(),
                ok_c.data_ptr<bool>(), gidx_c.data_ptr<int64_t>(), gval_c.data_ptr<bool>(),
                B, H, S, D, g.count, w};
  at::parallel_for(0, B * H * S, 64, [&](int64_t begin, int64_t end) { local_rows(args, begin, end); });
  return out;
}

Tensor attention_cpu(const Tensor& input, const Tensor& weight, const Tensor& bias, const Tensor& mask,
                     const Tensor& global_weight, const Tensor& global_bias, const Tensor& global,
                     int64_t num_heads, int64_t window, int64_t impl) {
  check_inputs(input, weight, bias, mask, global_weight, global_bias, global, num_heads, window);
  TORCH_CHECK(impl == 0 || impl == 1, "impl must be 0 (aten) or 1 (loops), got ", impl);
  const auto dtype = input.scalar_type();
  auto x = input.to(at::kFloat).contiguous();
  const int64_t B = x.size(0), S = x.size(1), E = x.size(2), H = num_heads, D = E / H;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto x2 = x.view({B * S, E});
  auto qkv = at::addmm(bias.to(at::kFloat), x2, weight.to(at::kFloat)).view({B, S, 3 * E});
  auto q = heads(qkv.narrow(2, 0, E), H).mul_(scale);
  auto k = heads(qkv.narrow(2, E, E), H);
  auto v = heads(qkv.narrow(2, 2 * E, E), H);
  auto padded = mask.lt(0);                                  // (B, S)
  auto is_global = global.ne(0).logical_and(padded.logical_not());
  auto key_ok = padded.logical_or(is_global).logical_not();  // keys of the sliding window
  Globals g = find_globals(is_global);
  Tensor local;
#ifdef TFOPT_WITH_CUDA
  if (x.is_cuda()) local = tfopt_local_cuda(q, k, v, key_ok, g.index, g.valid, window);
#endif
  if (!local.defined())
    local = impl == 0 || x.is_cuda() ? local_aten(q, k, v, key_ok, g, window) : local_loops(q, k, v, key_ok, g, window);
  // padding queries get zeros (HF masks their probabilities to 0)
  local = local.masked_fill(padded.view({B, 1, S, 1}), 0.0);
  auto out = local.permute({0, 2, 1, 3}).reshape({B, S, E}).contiguous();
  if (g.count > 0) {
    const int64_t G = g.count;
    auto gw = global_weight.to(at::kFloat), gb = global_bias.to(at::kFloat);
    auto hg = at::gather(x, 1, g.index.view({B, G, 1}).expand({B, G, E}));  // (B, G, E)
    auto gq = heads(at::addmm(gb.narrow(0, 0, E), hg.view({B * G, E}), gw.narrow(1, 0, E)).view({B, G, E}), H).mul_(scale);
    auto gkv = at::addmm(gb.narrow(0, E, 2 * E), x2, gw.narrow(1, E, 2 * E)).view({B, S, 2 * E});
    auto gk = heads(gkv.narrow(2, 0, E), H), gv = heads(gkv.narrow(2, E, E), H);
    auto sc = at::matmul(gq, gk.transpose(-1, -2));  // (B, H, G, S)
    sc.masked_fill_(padded.view({B, 1, 1, S}), std::numeric_limits<float>::lowest());
    auto res = at::matmul(at::softmax(sc, -1), gv).permute({0, 2, 1, 3}).reshape({B * G, E});
    auto pos = at::tensor(g.flat_pos, at::kLong).to(x.device()), slot = at::tensor(g.flat_slot, at::kLong).to(x.device());
    out.view({B * S, E}).index_copy_(0, pos, res.index_select(0, slot));
  }
  return out.to(dtype);
}

}  // namespace

TORCH_LIBRARY(tfopt_longformer, m) {
  m.def(
      "attention(Tensor input, Tensor weight, Tensor bias, Tensor mask, Tensor global_weight, "
      "Tensor global_bias, Tensor global_, int num_heads, int window, int impl=1) -> Tensor");
}

TORCH_LIBRARY_IMPL(tfopt_longformer, CPU, m) {
  m.impl("attention", &attention_cpu);
}

#ifdef TFOPT_WITH_CUDA
TORCH_LIBRARY_IMPL(tfopt_longformer, CUDA, m) {
  m.impl("attention", &attention_cpu);  // the same driver: ATen ops run on the device, the local part in the .cu kernel
}
#endif
