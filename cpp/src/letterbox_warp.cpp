#include "letterbox_warp.hpp"

#define VF_WARP_FUNCTION letterbox_warp_portable
#include "letterbox_warp_kernel.inc"

namespace visionforge::detail {

void letterbox_warp(const WarpJob& job) {
#if defined(__x86_64__) && defined(VISIONFORGE_HAVE_FMA_KERNEL)
  static const bool has_fma = __builtin_cpu_supports("fma");
  if (has_fma) return letterbox_warp_fma(job);
#endif
  letterbox_warp_portable(job);
}

}  // namespace visionforge::detail
