// The letterbox warp of ops/data/detection.py warp_image, pixel for pixel.
//
// Python warps with the opencv-python wheel (OpenCV >= 4.11), whose INTER_LINEAR warpAffine
// interpolates in float32 with fused multiply-adds and rounds to nearest-even. Debian's
// OpenCV 4.6 interpolates in 1/32-pixel fixed point instead, and its results differ by up to
// 4 grey levels at edges (measured on the test images), which moves the network's outputs by
// far more than the 1e-4 the C++ program must match. This kernel therefore implements the
// float32 arithmetic itself:
//
//   inverse map in double (as warpAffine inverts the matrix), cast to float;
//   per row  r_x = float(y) * m1 + m2,  r_y = float(y) * m4 + m5     (two roundings each)
//   per col  sx = fma(m0, x, r_x),      sy = fma(m3, x, r_y)
//   ix = floor(sx), ax = sx - ix (likewise y); taps outside the image read the pad value
//   v0 = fma(ax, p01 - p00, p00), v1 = fma(ax, p11 - p10, p10), v = fma(ay, v1 - v0, v0)
//   pixel = clamp(round_half_even(v), 0, 255)
//
// which reproduces the wheel's vector path exactly (checked on 60 random image and input
// sizes). That path covers every column when the input size is a multiple of 16 (all the
// pipeline's sizes); OpenCV computes the columns beyond the last multiple of 16 with a scalar
// formula that may differ by one grey level.
//
// The warped pixel is normalised on the spot (a 256-entry table per channel) and written in
// CHW order, so no intermediate image is stored.
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>

#include <opencv2/core.hpp>

namespace visionforge::detail {

struct WarpJob {
  const cv::Mat* bgr = nullptr;           // CV_8UC3 source frame
  double scale = 1.0, tx = 0.0, ty = 0.0;  // forward map of pixel indices, source -> network
  int size = 0;                           // network input side
  std::array<float, 3> pad_bgr{};         // border value per BGR channel
  std::array<int, 3> source_channel{};    // network channel c reads BGR channel source_channel[c]
  const std::array<std::array<float, 256>, 3>* table = nullptr;  // normalisation per network channel
  float* out = nullptr;                   // 3 * size * size floats, CHW
};

// Same results; the first uses the CPU's FMA instructions, the second the C library's
// correctly rounded fmaf. letterbox_warp picks the first when the CPU has FMA.
void letterbox_warp_fma(const WarpJob& job);
void letterbox_warp_portable(const WarpJob& job);
void letterbox_warp(const WarpJob& job);

}  // namespace visionforge::detail
