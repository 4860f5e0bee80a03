// The whole per-frame pipeline: pre-processing -> inference -> decoding, each stage timed so
// the benchmark can report them separately.
#pragma once

#include <memory>
#include <vector>

#include <opencv2/core.hpp>

#include "visionforge/backend.hpp"
#include "visionforge/decoder.hpp"
#include "visionforge/preprocess.hpp"

namespace visionforge {

struct StageTimes {
  double preprocess_ms = 0;
  double inference_ms = 0;
  double decode_ms = 0;
};

class Detector {
 public:
  Detector(std::unique_ptr<InferenceBackend> backend, int top_k, float threshold);

  // Detections in the frame's pixels, score >= threshold, by descending score.
  std::vector<ImageDetection> detect(const cv::Mat& bgr, StageTimes* times = nullptr);

  const ModelInfo& model_info() const { return backend_->model_info(); }
  const InferenceBackend& backend() const { return *backend_; }
  float threshold() const { return threshold_; }

 private:
  std::unique_ptr<InferenceBackend> backend_;
  Preprocessor preprocess_;
  CenterNetDecoder decoder_;
  float threshold_;
};

// Latency samples in milliseconds; percentiles interpolate linearly between the closest ranks,
// as numpy.percentile does, so C++ and Python tables read the same way.
class LatencyStats {
 public:
  void add(double ms) { samples_.push_back(ms); }
  size_t count() const { return samples_.size(); }
  double percentile(double p) const;
  double mean() const;

 private:
  std::vector<double> samples_;
};

}  // namespace visionforge
