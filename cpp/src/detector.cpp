#include "visionforge/detector.hpp"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "visionforge/errors.hpp"

namespace visionforge {
namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

Detector::Detector(std::unique_ptr<InferenceBackend> backend, int top_k, float threshold)
    : backend_(std::move(backend)),
      preprocess_(backend_->model_info()),
      decoder_(top_k, backend_->model_info().output_stride),
      threshold_(threshold) {}

std::vector<ImageDetection> Detector::detect(const cv::Mat& bgr, StageTimes* times) {
  const auto t0 = Clock::now();
  const Letterbox box = preprocess_(bgr, backend_->input_buffer());
  const auto t1 = Clock::now();
  const HeadOutputs heads = backend_->infer();
  const auto t2 = Clock::now();
  // ops/evaluate.py takes the stride from the output map (input_size // width); the metadata
  // says the same for every model the pipeline exports, checked here so a mismatch is loud.
  if (heads.width * decoder_.stride() != model_info().input_size) {
    throw Error("the output map is " + std::to_string(heads.width) + " cells wide but input_size " +
                std::to_string(model_info().input_size) + " / output_stride " + std::to_string(decoder_.stride()) +
                " says otherwise");
  }
  std::vector<ImageDetection> detections = to_image(decoder_.decode(heads), box, threshold_);
  const auto t3 = Clock::now();
  if (times) {
    times->preprocess_ms = ms_between(t0, t1);
    times->inference_ms = ms_between(t1, t2);
    times->decode_ms = ms_between(t2, t3);
  }
  return detections;
}

double LatencyStats::percentile(double p) const {
  if (samples_.empty()) return 0.0;
  std::vector<double> sorted = samples_;
  std::sort(sorted.begin(), sorted.end());
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - static_cast<double>(lo));
}

double LatencyStats::mean() const {
  if (samples_.empty()) return 0.0;
  return std::accumulate(samples_.begin(), samples_.end(), 0.0) / static_cast<double>(samples_.size());
}

}  // namespace visionforge
