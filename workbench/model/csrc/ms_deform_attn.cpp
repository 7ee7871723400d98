// Multi-scale deformable attention's sampling step on the CPU: forward and backward in one pass
// each, without the [B*H, D, Q, L*P] tensor of samples that grid_sample builds.
//
//   out[b, q, h, :] = sum_{l, p} a[b, q, h, l, p] * bilinear(value[b, level l, h, :], loc[b, q, h, l, p])
//
// value [B, H, T, D] (the levels' tokens one after another, level l starting at starts[l] with
// shape shapes[l] = (h_l, w_l)), loc [B, Q, H, L, P, 2] as (x, y) fractions of the level's map,
// a [B, Q, H, L, P]. Bilinear sampling follows grid_sample(align_corners=False,
// padding_mode="zeros"): pixel x = loc_x * w_l - 0.5, and corners outside the map read zero.
//
// Both passes split the (b, h) pairs over threads (at::parallel_for, hence the -fopenmp build
// flag): each works on its own contiguous [T, D] slice of value (small enough to stay in cache),
// and the backward's scatter into grad_value never has two threads on the same row. Each slice is
// computed the same way on any number of threads, so results do not depend on the thread count.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <type_traits>
#include <vector>

namespace {

// The in-map corners of the bilinear stencil at pixel (x, y) of an h x w map: token offsets,
// weights and the weights' derivatives in x and y; returns how many lie inside the map.
template <typename T>
inline int corners(T x, T y, int64_t h, int64_t w, int64_t* off, T* wt, T* dwdx, T* dwdy) {
  const T x0f = std::floor(x), y0f = std::floor(y);
  const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
  const T fx = x - x0f, fy = y - y0f;
  const int64_t xs[2] = {x0, x0 + 1}, ys[2] = {y0, y0 + 1};
  const T wx[2] = {T(1) - fx, fx}, wy[2] = {T(1) - fy, fy};
  int n = 0;
  for (int j = 0; j < 2; ++j) {
    if (ys[j] < 0 || ys[j] >= h) continue;
    for (int i = 0; i < 2; ++i) {
      if (xs[i] < 0 || xs[i] >= w) continue;
      off[n] = ys[j] * w + xs[i];
      wt[n] = wx[i] * wy[j];
      dwdx[n] = (i ? T(1) : T(-1)) * wy[j];
      dwdy[n] = (j ? T(1) : T(-1)) * wx[i];
      ++n;
    }
  }
  return n;
}

void check(const torch::Tensor& value, const torch::Tensor& shapes, const torch::Tensor& starts,
           const torch::Tensor& loc, const torch::Tensor& attn) {
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn: CPU tensors only");
  TORCH_CHECK(value.dim() == 4 && loc.dim() == 6 && attn.dim() == 5,
              "ms_deform_attn: value [B,H,T,D], loc [B,Q,H,L,P,2], attn [B,Q,H,L,P]");
  TORCH_CHECK(loc.scalar_type() == value.scalar_type() && attn.scalar_type() == value.scalar_type(),
              "ms_deform_attn: value, loc and attn need one dtype");
  TORCH_CHECK(shapes.scalar_type() == torch::kLong && starts.scalar_type() == torch::kLong,
              "ms_deform_attn: shapes and starts are int64");
}

// One (b, h) slice: value [T, D] contiguous; loc / attn / out strided by H over the queries.
template <typename T, int64_t DC>
void forward_slice(const T* __restrict__ v, const T* __restrict__ lc, const T* __restrict__ at,
                   T* __restrict__ o, const int64_t* shp, const int64_t* st, int64_t Q,
                   int64_t H, int64_t L, int64_t P, int64_t Drt) {
  const int64_t D = DC > 0 ? DC : Drt;
  int64_t off[4];
  T wt[4], dx[4], dy[4];
  for (int64_t q = 0; q < Q; ++q) {
    T* __restrict__ row = o + q * H * D;
    const int64_t k0 = q * H * L * P;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t hl = shp[2 * l], wl = shp[2 * l + 1];
      const T* __restrict__ base = v + st[l] * D;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t k = k0 + l * P + p;
        const T x = lc[2 * k] * T(wl) - T(0.5), y = lc[2 * k + 1] * T(hl) - T(0.5);
        const int n = corners<T>(x, y, hl, wl, off, wt, dx, dy);
        for (int c = 0; c < n; ++c) {
          const T coef = at[k] * wt[c];
          const T* __restrict__ src = base + off[c] * D;
          for (int64_t d = 0; d < D; ++d) row[d] += coef * src[d];
        }
      }
    }
  }
}

// sum_d g[d] * src[d], and dst[d] += coef * g[d]. For the common head widths the sum keeps
// eight partial sums, one per SIMD lane, so the compiler vectorises it (a single running sum is a
// serial chain of float additions that it must keep in order).
template <typename T, int64_t DC>
inline T dot_and_scatter(const T* __restrict__ g, const T* __restrict__ src, T* __restrict__ dst,
                         T coef, int64_t Drt) {
  constexpr int64_t W = 8;
  if constexpr (DC > 0 && DC % W == 0) {
    T acc[W] = {};
    for (int64_t d0 = 0; d0 < DC; d0 += W) {
      for (int64_t j = 0; j < W; ++j) {
        acc[j] += g[d0 + j] * src[d0 + j];
        dst[d0 + j] += coef * g[d0 + j];
      }
    }
    T dot = 0;
    for (int64_t j = 0; j < W; ++j) dot += acc[j];
    return dot;
  } else {
    T dot = 0;
    for (int64_t d = 0; d < Drt; ++d) {
      dot += g[d] * src[d];
      dst[d] += coef * g[d];
    }
    return dot;
  }
}

template <typename T, int64_t DC>
void backward_slice(const T* __restrict__ v, const T* __restrict__ lc, const T* __restrict__ at,
                    const T* __restrict__ go, T* __restrict__ gv, T* __restrict__ gl,
                    T* __restrict__ ga, const int64_t* shp, const int64_t* st, int64_t Q,
                    int64_t H, int64_t L, int64_t P, int64_t Drt) {
  const int64_t D = DC > 0 ? DC : Drt;
  int64_t off[4];
  T wt[4], dx[4], dy[4];
  for (int64_t q = 0; q < Q; ++q) {
    const T* __restrict__ g = go + q * H * D;
    const int64_t k0 = q * H * L * P;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t hl = shp[2 * l], wl = shp[2 * l + 1];
      const T* __restrict__ base = v + st[l] * D;
      T* __restrict__ gbase = gv + st[l] * D;
      for (int64_t p = 0; p < P; ++p) {
        const int64_t k = k0 + l * P + p;
        const T x = lc[2 * k] * T(wl) - T(0.5), y = lc[2 * k + 1] * T(hl) - T(0.5);
        const int n = corners<T>(x, y, hl, wl, off, wt, dx, dy);
        const T a = at[k];
        T g_attn = 0, g_x = 0, g_y = 0;
        for (int c = 0; c < n; ++c) {
          const T* __restrict__ src = base + off[c] * D;
          T* __restrict__ dst = gbase + off[c] * D;
          const T dot = dot_and_scatter<T, DC>(g, src, dst, a * wt[c], D);
          g_attn += wt[c] * dot;
          g_x += dx[c] * dot;
          g_y += dy[c] * dot;
        }
        ga[k] = g_attn;
        gl[2 * k] = a * g_x * T(wl);
        gl[2 * k + 1] = a * g_y * T(hl);
      }
    }
  }
}

// Calls f.template operator()<DC>() with DC = D for the common head widths, 0 otherwise.
template <typename F>
void dispatch_width(int64_t D, F&& f) {
  switch (D) {
    case 8: f(std::integral_constant<int64_t, 8>{}); break;
    case 16: f(std::integral_constant<int64_t, 16>{}); break;
    case 32: f(std::integral_constant<int64_t, 32>{}); break;
    default: f(std::integral_constant<int64_t, 0>{});
  }
}

}  // namespace

// value [B, H, T, D] (heads before tokens: each (b, h) slice is contiguous), loc [B, Q, H, L, P,
// 2], attn [B, Q, H, L, P] -> out [B, Q, H, D].
torch::Tensor forward(torch::Tensor value, torch::Tensor shapes, torch::Tensor starts,
                      torch::Tensor loc, torch::Tensor attn) {
  check(value, shapes, starts, loc, attn);
  value = value.contiguous(), loc = loc.contiguous(), attn = attn.contiguous();
  shapes = shapes.contiguous(), starts = starts.contiguous();
  const int64_t B = value.size(0), H = value.size(1), T = value.size(2), D = value.size(3);
  const int64_t Q = loc.size(1), L = loc.size(3), P = loc.size(4);
  auto out = torch::zeros({B, Q, H, D}, value.options());
  const int64_t* shp = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward", [&] {
    const scalar_t* v = value.data_ptr<scalar_t>();
    const scalar_t* lc = loc.data_ptr<scalar_t>();
    const scalar_t* at = attn.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    dispatch_width(D, [&](auto dc) {
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        for (int64_t bh = begin; bh < end; ++bh) {
          const int64_t b = bh / H, h = bh % H;
          forward_slice<scalar_t, decltype(dc)::value>(
              v + bh * T * D, lc + (b * Q * H + h) * L * P * 2, at + (b * Q * H + h) * L * P,
              o + (b * Q * H + h) * D, shp, st, Q, H, L, P, D);
        }
      });
    });
  });
  return out;
}

std::vector<torch::Tensor> backward(torch::Tensor value, torch::Tensor shapes, torch::Tensor starts,
                                    torch::Tensor loc, torch::Tensor attn, torch::Tensor grad_out) {
  check(value, shapes, starts, loc, attn);
  value = value.contiguous(), loc = loc.contiguous(), attn = attn.contiguous();
  shapes = shapes.contiguous(), starts = starts.contiguous(), grad_out = grad_out.contiguous();
  const int64_t B = value.size(0), H = value.size(1), T = value.size(2), D = value.size(3);
  const int64_t Q = loc.size(1), L = loc.size(3), P = loc.size(4);
  auto grad_value = torch::zeros_like(value);
  auto grad_loc = torch::empty_like(loc);
  auto grad_attn = torch::empty_like(attn);
  const int64_t* shp = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward", [&] {
    const scalar_t* v = value.data_ptr<scalar_t>();
    const scalar_t* lc = loc.data_ptr<scalar_t>();
    const scalar_t* at = attn.data_ptr<scalar_t>();
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    scalar_t* gv = grad_value.data_ptr<scalar_t>();
    scalar_t* gl = grad_loc.data_ptr<scalar_t>();
    scalar_t* ga = grad_attn.data_ptr<scalar_t>();
    dispatch_width(D, [&](auto dc) {
      at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        for (int64_t bh = begin; bh < end; ++bh) {
          const int64_t b = bh / H, h = bh % H;
          const int64_t qh = b * Q * H + h;
          backward_slice<scalar_t, decltype(dc)::value>(
              v + bh * T * D, lc + qh * L * P * 2, at + qh * L * P, go + qh * D, gv + bh * T * D,
              gl + qh * L * P * 2, ga + qh * L * P, shp, st, Q, H, L, P, D);
        }
      });
    });
  });
  return {grad_value, grad_loc, grad_attn};
}

// How many threads at::parallel_for runs n single-item tasks on: torch's thread count when the
// build has OpenMP, 1 when it does not (tests/test_deformable.py checks the build).
int64_t parallel_threads(int64_t n) {
  std::vector<char> seen(static_cast<size_t>(at::get_num_threads()), 0);
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    const int t = at::get_thread_num();
    if (t >= 0 && t < static_cast<int>(seen.size())) seen[t] = 1;
  });
  int64_t used = 0;
  for (char s : seen) used += s;
  return used;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "multi-scale deformable attention sampling, forward (CPU)");
  m.def("backward", &backward, "multi-scale deformable attention sampling, backward (CPU)");
  m.def("parallel_threads", &parallel_threads, "threads at::parallel_for uses for n tasks");
}
