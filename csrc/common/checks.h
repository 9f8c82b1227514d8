// Argument checks of the native kernels: a header-only C++ mirror of cgh_ops/_checks.py.
//
// Same rules and same wording ("cgh.<op>: argument '<name>' ..."), and the same Python
// exception types: TORCH_CHECK_TYPE raises TypeError, TORCH_CHECK_VALUE raises ValueError.
// Every kernel runs all of its checks before it writes anything. Shapes, dtypes and devices
// are printed as Python prints them ((3, 4), torch.float32, cuda:0), so that a message is
// the same whichever kernel (reference, CPU, CUDA) raised it.
//
// Usable from .cpp and .cu files (host code only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <sstream>
#include <string>

namespace cgh {

enum class Reduce { None, Median, Mean };

namespace detail {

inline bool is_float(c10::ScalarType s) {
  return s == c10::kHalf || s == c10::kBFloat16 || s == c10::kFloat || s == c10::kDouble;
}

// torch.dtype's repr: "torch.float32", ...
inline std::string dtype_str(c10::ScalarType s) {
  switch (s) {
    case c10::kHalf: return "torch.float16";
    case c10::kBFloat16: return "torch.bfloat16";
    case c10::kFloat: return "torch.float32";
    case c10::kDouble: return "torch.float64";
    case c10::kByte: return "torch.uint8";
    case c10::kChar: return "torch.int8";
    case c10::kShort: return "torch.int16";
    case c10::kInt: return "torch.int32";
    case c10::kLong: return "torch.int64";
    case c10::kBool: return "torch.bool";
    case c10::kComplexHalf: return "torch.complex32";
    case c10::kComplexFloat: return "torch.complex64";
    case c10::kComplexDouble: return "torch.complex128";
    case c10::ScalarType::Float8_e4m3fn: return "torch.float8_e4m3fn";
    case c10::ScalarType::Float8_e5m2: return "torch.float8_e5m2";
    default: return std::string("torch.") + c10::toString(s);
  }
}

// A Python tuple: (), (3,), (3, 4).
inline std::string shape_str(c10::IntArrayRef shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) os << ", ";
    os << shape[i];
  }
  if (shape.size() == 1) os << ",";
  os << ")";
  return os.str();
}

// Python's repr() of a str (enough for ASCII; as Python, single quotes unless the text
// holds a single quote and no double quote).
inline std::string py_repr(c10::string_view s) {
  const bool has_single = s.find('\'') != c10::string_view::npos;
  const bool has_double = s.find('"') != c10::string_view::npos;
  const char q = (has_single && !has_double) ? '"' : '\'';
  std::string r(1, q);
  for (char ch : s) {
    if (ch == '\\') r += "\\\\";
    else if (ch == q) { r += '\\'; r += ch; }
    else if (ch == '\n') r += "\\n";
    else if (ch == '\t') r += "\\t";
    else if (ch == '\r') r += "\\r";
    else r += ch;
  }
  r += q;
  return r;
}

inline std::string indexed(const char* arg, int64_t i) {
  return std::string(arg) + "[" + std::to_string(i) + "]";
}

}  // namespace detail

// `t` is a defined float16/bfloat16/float32/float64 tensor.
inline void check_float(const at::Tensor& t, const char* arg, const char* op) {
  TORCH_CHECK_TYPE(t.defined(), "cgh.", op, ": argument '", arg, "' must be a Tensor, got NoneType");
  TORCH_CHECK_TYPE(detail::is_float(t.scalar_type()), "cgh.", op, ": argument '", arg,
                   "' must be float16, bfloat16, float32 or float64, got ", detail::dtype_str(t.scalar_type()));
}

// `t` has the shape, dtype and device of `ref`.
inline void check_like(const at::Tensor& t, const char* arg, const at::Tensor& ref, const char* ref_arg,
                       const char* op) {
  check_float(t, arg, op);
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), "cgh.", op, ": argument '", arg, "' has shape ",
                    detail::shape_str(t.sizes()), ", expected ", detail::shape_str(ref.sizes()), " (the shape of '",
                    ref_arg, "')");
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "cgh.", op, ": argument '", arg, "' has dtype ",
                   detail::dtype_str(t.scalar_type()), ", expected ", detail::dtype_str(ref.scalar_type()),
                   " (the dtype of '", ref_arg, "')");
  TORCH_CHECK_VALUE(t.device() == ref.device(), "cgh.", op, ": argument '", arg, "' is on ", t.device().str(),
                    ", expected ", ref.device().str(), " (the device of '", ref_arg, "')");
}

// median3's a, b, c: floats of one shape, dtype and device.
inline void check_same_floats3(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, const char* op) {
  check_float(a, "a", op);
  check_like(b, "b", a, "a", op);
  check_like(c, "c", a, "a", op);
}

// `x` is [m, *S] with m >= 1; returns m.
inline int64_t check_rows(const at::Tensor& x, const char* arg, const char* op) {
  check_float(x, arg, op);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(0) >= 1, "cgh.", op, ": argument '", arg,
                    "' must have shape [m, *S] with m >= 1, got ", detail::shape_str(x.sizes()));
  return x.size(0);
}

// `x` is [m, *S] with 1 <= groups <= m; returns m.
inline int64_t check_median_of_means(const at::Tensor& x, int64_t groups, const char* arg, const char* op) {
  const int64_t m = check_rows(x, arg, op);
  TORCH_CHECK_VALUE(groups >= 1 && groups <= m, "cgh.", op, ": argument 'groups' must be in [1, m] with m = ", m,
                    " rows of '", arg, "', got ", groups);
  return m;
}

// `x` is [m, *S] with 0 <= 2*trim < m.
inline void check_trim(const at::Tensor& x, int64_t trim, const char* op) {
  const int64_t m = check_rows(x, "x", op);
  TORCH_CHECK_VALUE(trim >= 0 && trim < m && 2 * trim < m, "cgh.", op,
                    ": argument 'trim' must satisfy 0 <= 2*trim < m = ", m, ", got ", trim);
}

// An out= tensor: shape `shape`, dtype and device of `like`.
inline void check_out(const at::Tensor& out, at::IntArrayRef shape, const at::Tensor& like, const char* op,
                      const char* arg = "out") {
  TORCH_CHECK_TYPE(out.defined(), "cgh.", op, ": argument '", arg, "' must be a Tensor, got NoneType");
  TORCH_CHECK_VALUE(out.sizes() == shape, "cgh.", op, ": argument '", arg, "' has shape ",
                    detail::shape_str(out.sizes()), ", expected ", detail::shape_str(shape));
  TORCH_CHECK_TYPE(out.scalar_type() == like.scalar_type(), "cgh.", op, ": argument '", arg, "' has dtype ",
                   detail::dtype_str(out.scalar_type()), ", expected ", detail::dtype_str(like.scalar_type()));
  TORCH_CHECK_VALUE(out.device() == like.device(), "cgh.", op, ": argument '", arg, "' is on ", out.device().str(),
                    ", expected ", like.device().str());
}

// foreach_median_of_means.out: every xs[i] passes check_median_of_means, one out[i] per
// input with shape xs[i].shape[1:].
inline void check_foreach_out(at::TensorList xs, int64_t groups, at::TensorList out,
                              const char* op = "foreach_median_of_means") {
  for (size_t i = 0; i < xs.size(); ++i)
    check_median_of_means(xs[i], groups, detail::indexed("xs", i).c_str(), op);
  TORCH_CHECK_VALUE(out.size() == xs.size(), "cgh.", op, ": argument 'out' must hold one tensor per input (",
                    xs.size(), "), got ", out.size());
  for (size_t i = 0; i < xs.size(); ++i)
    check_out(out[i], xs[i].sizes().slice(1), xs[i], op, detail::indexed("out", i).c_str());
}

// Number R of history slots per gradient (history[i * R + j] is slot j of grads[i]).
inline int64_t history_size(at::TensorList grads, at::TensorList history, const char* op) {
  const int64_t n = static_cast<int64_t>(grads.size());
  const int64_t h = static_cast<int64_t>(history.size());
  if (n == 0) {
    TORCH_CHECK_VALUE(h == 0, "cgh.", op,
                      ": argument 'history' must be empty when there are no gradients, got ", h, " tensors");
    return 0;
  }
  TORCH_CHECK_VALUE(h % n == 0, "cgh.", op, ": argument 'history' must hold R tensors per gradient (", n,
                    " gradients), got ", h, " tensors");
  return h / n;
}

// The history layout, the slot, and that every history[i * R + j] is like grads[i];
// returns R.
// indexed: grads_arg names a list (errors say grads[i]); false: the op's one tensor.
inline int64_t check_history(at::TensorList grads, at::TensorList history, int64_t slot, const char* op,
                             const char* grads_arg, bool indexed = true) {
  const int64_t R = history_size(grads, history, op);
  TORCH_CHECK_VALUE(grads.empty() || (slot >= -1 && slot < R), "cgh.", op,
                    ": argument 'slot' must be -1 (no write) or in [0, ", R, "), got ", slot);
  for (size_t i = 0; i < grads.size(); ++i) {
    const std::string g_arg = indexed ? detail::indexed(grads_arg, i) : std::string(grads_arg);
    check_float(grads[i], g_arg.c_str(), op);
    for (int64_t j = 0; j < R; ++j) {
      const int64_t k = static_cast<int64_t>(i) * R + j;
      check_like(history[k], detail::indexed("history", k).c_str(), grads[i], g_arg.c_str(), op);
    }
  }
  return R;
}

inline Reduce parse_reduce(c10::string_view reduce) {
  if (reduce == "none") return Reduce::None;
  if (reduce == "median") return Reduce::Median;
  if (reduce == "mean") return Reduce::Mean;
  TORCH_CHECK_VALUE(false, "cgh.ring_step_: argument 'reduce' must be one of ('none', 'median', 'mean'), got ",
                    detail::py_repr(reduce));
  return Reduce::None;  // unreachable
}

// ring_step_'s arguments; returns R.
inline int64_t check_ring_step(at::TensorList params, at::TensorList grads, at::TensorList history, int64_t slot,
                               c10::string_view reduce) {
  const char* op = "ring_step_";
  const Reduce r = parse_reduce(reduce);
  TORCH_CHECK_VALUE(params.size() == grads.size(), "cgh.", op,
                    ": arguments 'params' and 'grads' must have the same length, got ", params.size(), " and ",
                    grads.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string p_arg = detail::indexed("params", i);
    check_float(params[i], p_arg.c_str(), op);
    check_like(grads[i], detail::indexed("grads", i).c_str(), params[i], p_arg.c_str(), op);
  }
  const int64_t R = check_history(params, history, slot, op, "params");
  TORCH_CHECK_VALUE(!(r == Reduce::None && !params.empty() && slot < 0), "cgh.", op,
                    ": argument 'slot' must be a history slot when reduce='none' (the step only stores)");
  return R;
}

}  // namespace cgh
