#include "visionforge/decoder.hpp"

#include <algorithm>
#include <stdexcept>

namespace visionforge {
namespace {

// Descending score, then ascending flat index (see CenterNetDecoder::decode).
bool ranks_before(const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
  if (a.first != b.first) return a.first > b.first;
  return a.second < b.second;
}

// True when heatmap[y][x] equals the maximum of its 3x3 neighbourhood. This is
// F.max_pool2d(kernel 3, stride 1, padding 1) == heatmap: padding is -inf, so cells outside
// the map never win.
bool is_peak(const float* map, int height, int width, int y, int x) {
  const float v = map[static_cast<int64_t>(y) * width + x];
  const int y0 = std::max(y - 1, 0), y1 = std::min(y + 1, height - 1);
  const int x0 = std::max(x - 1, 0), x1 = std::min(x + 1, width - 1);
  for (int yy = y0; yy <= y1; ++yy) {
    const float* row = map + static_cast<int64_t>(yy) * width;
    for (int xx = x0; xx <= x1; ++xx) {
      if (row[xx] > v) return false;
    }
  }
  return true;
}

}  // namespace

CenterNetDecoder::CenterNetDecoder(int top_k, int stride) : top_k_(top_k), stride_(stride) {
  if (top_k <= 0) throw std::invalid_argument("top_k must be positive");
  if (stride <= 0) throw std::invalid_argument("stride must be positive");
}

std::vector<Detection> CenterNetDecoder::decode(const HeadOutputs& out) const {
  const int64_t plane = static_cast<int64_t>(out.height) * out.width;
  const int64_t total = plane * out.num_classes;
  const int64_t k = std::min<int64_t>(top_k_, total);

  candidates_.clear();
  for (int c = 0; c < out.num_classes; ++c) {
    const float* map = out.heatmap + c * plane;
    for (int y = 0; y < out.height; ++y) {
      for (int x = 0; x < out.width; ++x) {
        // Score-0 cells (suppressed ones, and peaks of value 0) all rank as 0: added below.
        const float v = map[static_cast<int64_t>(y) * out.width + x];
        if (v > 0.0f && is_peak(map, out.height, out.width, y, x)) {
          candidates_.emplace_back(v, c * plane + y * out.width + x);
        }
      }
    }
  }
  if (static_cast<int64_t>(candidates_.size()) > k) {
    std::partial_sort(candidates_.begin(), candidates_.begin() + k, candidates_.end(), ranks_before);
    candidates_.resize(static_cast<size_t>(k));
  } else {
    std::sort(candidates_.begin(), candidates_.end(), ranks_before);
  }
  // Fewer positive peaks than K: Python's top-K then returns cells whose masked score is 0.
  // They come after every peak (heatmap values are sigmoid outputs >= 0), in index order.
  if (static_cast<int64_t>(candidates_.size()) < k) {
    std::vector<char> taken(static_cast<size_t>(total), 0);
    for (const auto& cand : candidates_) taken[static_cast<size_t>(cand.second)] = 1;
    for (int64_t i = 0; i < total && static_cast<int64_t>(candidates_.size()) < k; ++i) {
      if (!taken[static_cast<size_t>(i)]) candidates_.emplace_back(0.0f, i);
    }
  }

  std::vector<Detection> detections;
  detections.reserve(candidates_.size());
  const float stride = static_cast<float>(stride_);
  for (const auto& [score, flat] : candidates_) {
    const int64_t position = flat % plane;
    const float ys = static_cast<float>(position / out.width);
    const float xs = static_cast<float>(position % out.width);
    // Same float32 operations, in the same order, as decode_detections.
    const float cx = xs + out.offset[position];
    const float cy = ys + out.offset[plane + position];
    const float half_w = out.wh[position] / 2.0f;
    const float half_h = out.wh[plane + position] / 2.0f;
    Detection det;
    det.x1 = (cx - half_w) * stride;
    det.y1 = (cy - half_h) * stride;
    det.x2 = (cx + half_w) * stride;
    det.y2 = (cy + half_h) * stride;
    det.score = score;
    det.class_index = static_cast<int>(flat / plane);
    det.flat_index = flat;
    detections.push_back(det);
  }
  return detections;
}

std::vector<ImageDetection> to_image(const std::vector<Detection>& detections, const Letterbox& box,
                                     float threshold) {
  std::vector<ImageDetection> mapped;
  const double width = box.width, height = box.height;
  auto clip = [](double v, double hi) { return std::min(std::max(v, 0.0), hi); };
  for (const Detection& det : detections) {
    if (!(det.score >= threshold)) continue;
    ImageDetection out;
    out.x1 = clip((static_cast<double>(det.x1) - box.tx) / box.scale, width);
    out.y1 = clip((static_cast<double>(det.y1) - box.ty) / box.scale, height);
    out.x2 = clip((static_cast<double>(det.x2) - box.tx) / box.scale, width);
    out.y2 = clip((static_cast<double>(det.y2) - box.ty) / box.scale, height);
    out.score = det.score;
    out.class_index = det.class_index;
    mapped.push_back(out);
  }
  return mapped;
}

}  // namespace visionforge
