#include "visionforge/preprocess.hpp"

#include <algorithm>

#include "letterbox_warp.hpp"
#include "visionforge/errors.hpp"

namespace visionforge {

Letterbox Letterbox::fit(int width, int height, int input_size) {
  Letterbox box;
  box.width = width;
  box.height = height;
  box.scale = static_cast<double>(input_size) / std::max(width, height);
  box.tx = (input_size - width * box.scale) / 2;
  box.ty = (input_size - height * box.scale) / 2;
  return box;
}

cv::Mat Letterbox::matrix() const {
  return (cv::Mat_<double>(2, 3) << scale, 0.0, tx, 0.0, scale, ty);
}

Preprocessor::Preprocessor(const ModelInfo& info) : input_size_(info.input_size) {
  const bool rgb = info.color_order == "RGB";
  for (int c = 0; c < 3; ++c) source_channel_[c] = rgb ? 2 - c : c;
  // pad_value is given in the model's channel order; the warp runs on BGR frames.
  const auto& pad = info.pad_value;
  border_bgr_ = rgb ? cv::Scalar(pad[2], pad[1], pad[0]) : cv::Scalar(pad[0], pad[1], pad[2]);
  // The Python normaliser computes (v - mean * 255) / (std * 255) on float32 tensors; with
  // pixel_scale 1/255 the factor below is exactly 255.0f and every step rounds the same way.
  const float factor = static_cast<float>(1.0 / info.pixel_scale);
  for (int c = 0; c < 3; ++c) {
    const float mean = info.mean[c] * factor;
    const float std = info.std[c] * factor;
    for (int v = 0; v < 256; ++v) table_[c][v] = (static_cast<float>(v) - mean) / std;
  }
}

Letterbox Preprocessor::operator()(const cv::Mat& bgr, float* out) {
  if (bgr.empty() || bgr.type() != CV_8UC3) {
    throw Error("pre-processing expects a non-empty 8-bit, 3-channel image");
  }
  const Letterbox box = Letterbox::fit(bgr.cols, bgr.rows, input_size_);
  detail::WarpJob job;
  job.bgr = &bgr;
  job.scale = box.scale;
  job.tx = box.warp_tx();
  job.ty = box.warp_ty();
  job.size = input_size_;
  // Pad values are whole numbers in 0..255 (checked when the metadata is read).
  for (int c = 0; c < 3; ++c) job.pad_bgr[c] = static_cast<float>(border_bgr_[c]);
  job.source_channel = source_channel_;
  job.table = &table_;
  job.out = out;
  detail::letterbox_warp(job);
  return box;
}

}  // namespace visionforge
