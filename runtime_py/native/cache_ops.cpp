// The two KV-cache kernels our programs call outside XNNPACK, registered under ExecuTorch's names.
//
// `llama::update_cache.out` and `llama::update_cache_with_indices.out` are defined by ExecuTorch's
// extension/llm/custom_ops, but its wheel ships their kernels only inside a library linked against libtorch
// and the Python extension (libcustom_ops_aot_lib.so), which a native host cannot load. They are plain
// in-place row copies along the sequence dimension, so the native runner carries its own:
//   update_cache(value [B, T, H, D], cache [B, S, H, D], start_pos)   cache[:, start_pos + t] = value[:, t]
//   update_cache_with_indices(value, cache, start_pos, indices [B, T]) cache[b, indices[b, t]] = value[b, t]
// The output tensor is a placeholder the program never reads (the cache is the mutated buffer).
// They are registered boxed by hand, checking each argument's type first: ExecuTorch's generated unboxing
// (EXECUTORCH_LIBRARY) aborts the process when a program passes an argument of another type.
#include <executorch/runtime/core/exec_aten/util/dim_order_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/operator_registry.h>

#include <cstring>

namespace gemma_edge {
namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

bool contiguous(const Tensor& t) {
  return executorch::runtime::is_contiguous_dim_order(t.dim_order().data(), t.dim());
}

// Checks shared by both ops; false (with a log line) fails the kernel with InvalidArgument.
bool check(const Tensor& value, const Tensor& cache) {
  ET_CHECK_OR_RETURN_FALSE(value.dim() == 4 && cache.dim() == 4, "update_cache: value and cache must be 4-D");
  ET_CHECK_OR_RETURN_FALSE(value.size(0) == cache.size(0) && value.size(2) == cache.size(2) &&
                               value.size(3) == cache.size(3),
                           "update_cache: value [B, T, H, D] and cache [B, S, H, D] disagree on B, H or D");
  ET_CHECK_OR_RETURN_FALSE(value.scalar_type() == cache.scalar_type(), "update_cache: value and cache dtypes differ");
  ET_CHECK_OR_RETURN_FALSE(contiguous(value) && contiguous(cache), "update_cache: tensors must be contiguous");
  return true;
}

// Copies value[b, t] (one token's H·D values) to cache[b, slot(b, t)].
template <typename Slot>
void copy_rows(const Tensor& value, Tensor& cache, Slot slot) {
  const size_t token_bytes = size_t(value.size(2)) * value.size(3) * value.element_size();
  const auto* src = static_cast<const uint8_t*>(value.const_data_ptr());
  auto* dst = static_cast<uint8_t*>(cache.mutable_data_ptr());
  for (int64_t b = 0; b < value.size(0); ++b)
    for (int64_t t = 0; t < value.size(1); ++t)
      std::memcpy(dst + (size_t(b) * cache.size(1) + size_t(slot(b, t))) * token_bytes,
                  src + (size_t(b) * value.size(1) + size_t(t)) * token_bytes, token_bytes);
}

Tensor& update_cache_out(KernelRuntimeContext& ctx, const Tensor& value, Tensor& cache, const int64_t start_pos,
                         Tensor& out) {
  ET_KERNEL_CHECK(ctx, check(value, cache), InvalidArgument, out);
  ET_KERNEL_CHECK_MSG(ctx, start_pos >= 0 && start_pos + value.size(1) <= cache.size(1), InvalidArgument, out,
                      "update_cache: start_pos %" PRId64 " + %zd tokens past the cache's %zd slots", start_pos,
                      ssize_t(value.size(1)), ssize_t(cache.size(1)));
  copy_rows(value, cache, [&](int64_t, int64_t t) { return start_pos + t; });
  return out;
}

Tensor& update_cache_with_indices_out(KernelRuntimeContext& ctx, const Tensor& value, Tensor& cache,
                                      const int64_t /*start_pos*/, const Tensor& indices, Tensor& out) {
  ET_KERNEL_CHECK(ctx, check(value, cache), InvalidArgument, out);
  ET_KERNEL_CHECK_MSG(ctx, indices.dim() == 2 && indices.size(0) == value.size(0) &&
                               indices.size(1) == value.size(1) && indices.scalar_type() == ScalarType::Long &&
                               contiguous(indices),
                      InvalidArgument, out, "update_cache_with_indices: indices must be int64 [B, T], contiguous");
  const int64_t* idx = indices.const_data_ptr<int64_t>();
  const int64_t slots = cache.size(1), T = value.size(1);
  for (int64_t i = 0; i < indices.numel(); ++i)
    ET_KERNEL_CHECK_MSG(ctx, idx[i] >= 0 && idx[i] < slots, InvalidArgument, out,
                        "update_cache_with_indices: index %" PRId64 " not in [0, %" PRId64 ")", idx[i], slots);
  copy_rows(value, cache, [&](int64_t b, int64_t t) { return idx[b * T + t]; });
  return out;
}

using executorch::runtime::EValue;
using executorch::runtime::Span;

// The boxed call's arguments have the tags `tags` ('T' tensor, 'I' int), or the kernel fails. The stack holds
// the schema's arguments, `out` last, then the returned value (the same tensor as `out`).
bool arguments_are(KernelRuntimeContext& ctx, const char* op, Span<EValue*> stack, const char* tags) {
  const size_t n = std::strlen(tags);
  bool ok = stack.size() == n;
  for (size_t i = 0; ok && i < n; ++i) ok = stack[i] && (tags[i] == 'T' ? stack[i]->isTensor() : stack[i]->isInt());
  if (!ok) {
    ET_LOG(Error, "%s: the program passes arguments of other types or number than (%s)", op, tags);
    ctx.fail(Error::InvalidProgram);
  }
  return ok;
}

void update_cache_boxed(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  if (!arguments_are(ctx, "llama::update_cache.out", stack, "TTITT")) return;
  update_cache_out(ctx, stack[0]->toTensor(), stack[1]->toTensor(), stack[2]->toInt(), stack[3]->toTensor());
}

void update_cache_with_indices_boxed(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  if (!arguments_are(ctx, "llama::update_cache_with_indices.out", stack, "TTITTT")) return;
  update_cache_with_indices_out(ctx, stack[0]->toTensor(), stack[1]->toTensor(), stack[2]->toInt(),
                                stack[3]->toTensor(), stack[4]->toTensor());
}

const executorch::runtime::Kernel kKernels[] = {
    executorch::runtime::Kernel("llama::update_cache.out", update_cache_boxed),
    executorch::runtime::Kernel("llama::update_cache_with_indices.out", update_cache_with_indices_boxed),
};
const auto kRegistered = executorch::runtime::register_kernels({kKernels, 2});

}  // namespace

// Referenced by Program: a static library's object that nothing references is left out of the link, and
// with it this registration.
bool cache_kernels_registered() { return kRegistered == Error::Ok; }

}  // namespace gemma_edge
