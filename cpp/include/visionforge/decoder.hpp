// CenterNet decoding, the same arithmetic as ops/centernet.py decode_detections followed by
// ops/evaluate.py decode_to_image: 3x3 max-pool peaks, the top-K over all classes, boxes from
// the peak cell plus its offset, sized by wh, times the stride (float32), then mapped back
// through the frame's letterbox into its pixels (float64) and clipped to the frame.
#pragma once

#include <cstdint>
#include <vector>

#include "visionforge/preprocess.hpp"

namespace visionforge {

// One image's raw outputs, NCHW float32 without the batch axis: heatmap (C, H, W) after the
// sigmoid, wh (2, H, W) and offset (2, H, W) in output-map cells.
struct HeadOutputs {
  const float* heatmap = nullptr;
  const float* wh = nullptr;
  const float* offset = nullptr;
  int num_classes = 0;
  int height = 0;
  int width = 0;
};

// A detection in network-input pixels.
struct Detection {
  float x1 = 0, y1 = 0, x2 = 0, y2 = 0;
  float score = 0;
  int class_index = 0;
  int64_t flat_index = 0;  // class * H * W + y * W + x, the position top-K ranked
};

// A detection in the original frame's pixels.
struct ImageDetection {
  double x1 = 0, y1 = 0, x2 = 0, y2 = 0;
  float score = 0;
  int class_index = 0;
};

class CenterNetDecoder {
 public:
  CenterNetDecoder(int top_k, int stride);

  // The min(top_k, C*H*W) best positions after peak suppression, by descending score.
  //
  // Tie rule: equal scores are ordered by ascending flat index. torch.topk leaves the order
  // of equal values unspecified (its CPU kernel is not stable), so this is the documented
  // deterministic choice; it agrees with Python whenever scores differ. Non-peak positions
  // count as score 0, as in Python (heatmap * keep), and only fill the list (by index) when
  // there are fewer than K positive peaks.
  std::vector<Detection> decode(const HeadOutputs& outputs) const;

  int top_k() const { return top_k_; }
  int stride() const { return stride_; }

 private:
  int top_k_;
  int stride_;
  mutable std::vector<std::pair<float, int64_t>> candidates_;  // reused between calls
};

// Keep score >= threshold (compared in float32, as torch compares a float32 tensor with a
// Python float) and map boxes into the frame through `box`, clipped to [0, width] x [0, height].
std::vector<ImageDetection> to_image(const std::vector<Detection>& detections, const Letterbox& box,
                                     float threshold);

}  // namespace visionforge
