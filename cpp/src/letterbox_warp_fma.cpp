// Compiled with -mfma (see CMakeLists.txt): the same kernel with fused multiply-adds in
// hardware. Only called after checking that the CPU has them.
#include "letterbox_warp.hpp"

#define VF_WARP_FUNCTION letterbox_warp_fma
#include "letterbox_warp_kernel.inc"
