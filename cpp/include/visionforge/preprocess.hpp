// Frame -> network input, exactly as ops/data/detection.py prepares images: a letterbox
// affine map (scale the longer side to the input size, centre on a square canvas), a bilinear
// warp with a constant border in the model's pad colour (the arithmetic of the opencv-python
// wheel's cv2.warpAffine, reimplemented in src/letterbox_warp.hpp because Debian's OpenCV 4.6
// rounds differently), then uint8 * pixel_scale normalised by mean/std in float32, channels in
// the model's colour order, NCHW.
#pragma once

#include <array>
#include <vector>

#include <opencv2/core.hpp>

#include "visionforge/model_info.hpp"

namespace visionforge {

// Original image pixels -> network input pixels: x' = scale * x + tx, y' = scale * y + ty.
struct Letterbox {
  double scale = 1.0;
  double tx = 0.0;
  double ty = 0.0;
  int width = 0;   // original image size, for clipping boxes mapped back
  int height = 0;

  // ops/data/detection.py letterbox_matrix, in the same double arithmetic. Boxes map back
  // through this continuous-coordinate form (pixel i spans [i, i + 1)).
  static Letterbox fit(int width, int height, int input_size);
  cv::Mat matrix() const;  // 2x3 CV_64F

  // The translation the warp uses: ops/data/detection.py pixel_index_matrix expresses the same
  // map for pixel indices (pixel centres at integers), shifting by 0.5 * scale - 0.5. Without it
  // the picture would sit half a pixel off its boxes.
  double warp_tx() const { return tx + (0.5 * (scale + 0.0) - 0.5); }
  double warp_ty() const { return ty + (0.5 * (0.0 + scale) - 0.5); }
};

class Preprocessor {
 public:
  explicit Preprocessor(const ModelInfo& info);

  // Warp and normalise a BGR uint8 frame (OpenCV's order) into `out`, which holds
  // 3 * input_size * input_size floats (one CHW image). Returns the frame's letterbox.
  Letterbox operator()(const cv::Mat& bgr, float* out);

  int input_size() const { return input_size_; }
  size_t input_elements() const { return 3u * static_cast<size_t>(input_size_) * input_size_; }

 private:
  int input_size_;
  cv::Scalar border_bgr_;  // pad colour in the frame's BGR order
  // Network channel c reads BGR channel source_channel_[c].
  std::array<int, 3> source_channel_{};
  // (v - mean) / std for every uint8 value v, per network channel: the same float32 maths as
  // the Python normaliser, computed once instead of per pixel.
  std::array<std::array<float, 256>, 3> table_{};
};

}  // namespace visionforge
