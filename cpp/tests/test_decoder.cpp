// The C++ decoder against the Python decoder on the shared vectors, and its rules on small
// hand-made maps (peaks, ties, fewer peaks than K, clipping).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "vectors.hpp"
#include "visionforge/decoder.hpp"
#include "visionforge/preprocess.hpp"

namespace visionforge {
namespace {

using testing::manifest;
using testing::read_floats;

constexpr double kBoxTolerance = 1e-3;  // pixels

struct Heads {
  std::vector<float> heatmap, wh, offset;
  HeadOutputs view() const {
    HeadOutputs out;
    out.heatmap = heatmap.data();
    out.wh = wh.data();
    out.offset = offset.data();
    return out;
  }
};

Heads load_heads(const nlohmann::json& record, HeadOutputs& view) {
  const auto shape = record["heatmap"]["shape"].get<std::vector<int64_t>>();
  const size_t plane = static_cast<size_t>(shape[2] * shape[3]);
  Heads heads;
  heads.heatmap = read_floats(record["heatmap"]["file"], static_cast<size_t>(shape[1]) * plane);
  heads.wh = read_floats(record["wh"]["file"], 2 * plane);
  heads.offset = read_floats(record["offset"]["file"], 2 * plane);
  view = heads.view();
  view.num_classes = static_cast<int>(shape[1]);
  view.height = static_cast<int>(shape[2]);
  view.width = static_cast<int>(shape[3]);
  return heads;
}

int stride_of(const HeadOutputs& view) { return manifest()["input_size"].get<int>() / view.width; }

TEST(DecoderVectors, TopKMatchesPython) {
  for (const auto& record : manifest()["images"]) {
    SCOPED_TRACE(record["image"].get<std::string>());
    HeadOutputs view;
    const Heads heads = load_heads(record, view);
    (void)heads;
    const CenterNetDecoder decoder(manifest()["top_k"].get<int>(), stride_of(view));
    const std::vector<Detection> got = decoder.decode(view);
    const auto& want = record["raw_detections"];
    ASSERT_EQ(got.size(), want.size());

    double worst = 0;
    size_t i = 0;
    while (i < want.size()) {
      // A run of exactly equal scores: torch.topk orders it arbitrarily, the C++ decoder by
      // index, so the run is compared as a set; everything else position by position.
      const float score = want[i]["score"].get<float>();
      size_t j = i + 1;
      while (j < want.size() && want[j]["score"].get<float>() == score) ++j;
      std::map<int64_t, const nlohmann::json*> expected;
      for (size_t k = i; k < j; ++k) expected[want[k]["index"].get<int64_t>()] = &want[k];
      for (size_t k = i; k < j; ++k) {
        ASSERT_EQ(got[k].score, score) << "rank " << k;
        if (j == want.size() && j - i > 1) continue;  // a tie cut by K: members may differ
        const auto it = expected.find(got[k].flat_index);
        ASSERT_NE(it, expected.end()) << "rank " << k << ": C++ picked cell " << got[k].flat_index;
        const auto& w = *it->second;
        EXPECT_EQ(got[k].class_index, w["class"].get<int>()) << "rank " << k;
        const float box[4] = {got[k].x1, got[k].y1, got[k].x2, got[k].y2};
        for (int c = 0; c < 4; ++c) {
          const double diff = std::abs(box[c] - w["box"][c].get<double>());
          worst = std::max(worst, diff);
          EXPECT_LE(diff, kBoxTolerance) << "rank " << k << " coordinate " << c;
        }
      }
      i = j;
    }
    RecordProperty("max_box_diff_px_" + std::to_string(&record - &manifest()["images"][0]), std::to_string(worst));
  }
}

TEST(DecoderVectors, ImageDetectionsMatchPython) {
  const float threshold = manifest()["threshold"].get<float>();
  for (const auto& record : manifest()["images"]) {
    SCOPED_TRACE(record["image"].get<std::string>());
    HeadOutputs view;
    const Heads heads = load_heads(record, view);
    (void)heads;
    const CenterNetDecoder decoder(manifest()["top_k"].get<int>(), stride_of(view));
    const Letterbox box = Letterbox::fit(record["width"], record["height"], manifest()["input_size"]);
    EXPECT_EQ(box.scale, record["letterbox"][0].get<double>());
    EXPECT_EQ(box.tx, record["letterbox"][1].get<double>());
    EXPECT_EQ(box.ty, record["letterbox"][2].get<double>());

    const std::vector<ImageDetection> got = to_image(decoder.decode(view), box, threshold);
    const auto& want = record["detections"];
    ASSERT_EQ(got.size(), want.size());
    for (size_t k = 0; k < got.size(); ++k) {
      EXPECT_EQ(got[k].score, want[k]["score"].get<float>()) << "rank " << k;
      EXPECT_EQ(got[k].class_index, want[k]["class"].get<int>()) << "rank " << k;
      const double coords[4] = {got[k].x1, got[k].y1, got[k].x2, got[k].y2};
      for (int c = 0; c < 4; ++c) {
        EXPECT_NEAR(coords[c], want[k]["box"][c].get<double>(), kBoxTolerance) << "rank " << k << " coordinate " << c;
      }
    }
  }
}

// ---------------------------------------------------------------------------- hand-made maps

struct Maps {
  int classes, height, width;
  std::vector<float> heatmap, wh, offset;
  Maps(int c, int h, int w)
      : classes(c), height(h), width(w), heatmap(static_cast<size_t>(c * h * w), 0.0f),
        wh(static_cast<size_t>(2 * h * w), 2.0f), offset(static_cast<size_t>(2 * h * w), 0.5f) {}
  float& at(int c, int y, int x) { return heatmap[static_cast<size_t>((c * height + y) * width + x)]; }
  HeadOutputs view() const {
    HeadOutputs out;
    out.heatmap = heatmap.data();
    out.wh = wh.data();
    out.offset = offset.data();
    out.num_classes = classes;
    out.height = height;
    out.width = width;
    return out;
  }
};

TEST(Decoder, KeepsOnlyLocalMaxima) {
  Maps maps(1, 5, 5);
  maps.at(0, 2, 2) = 0.9f;
  maps.at(0, 2, 3) = 0.5f;  // beside a higher value: suppressed
  maps.at(0, 0, 0) = 0.4f;  // corner peak: the border never wins
  const auto dets = CenterNetDecoder(3, 4).decode(maps.view());
  ASSERT_EQ(dets.size(), 3u);
  EXPECT_EQ(dets[0].flat_index, 12);
  EXPECT_FLOAT_EQ(dets[0].score, 0.9f);
  EXPECT_EQ(dets[1].flat_index, 0);
  EXPECT_FLOAT_EQ(dets[1].score, 0.4f);
  // Fewer peaks than K: suppressed cells follow with score 0, in index order (cell 0 is taken).
  EXPECT_EQ(dets[2].score, 0.0f);
  EXPECT_EQ(dets[2].flat_index, 1);
}

TEST(Decoder, EqualScoresRankByIndexAndPlateausKeepEveryCell) {
  Maps maps(2, 4, 4);
  maps.at(1, 1, 1) = 0.7f;
  maps.at(1, 1, 2) = 0.7f;  // a plateau: max-pool equality keeps both cells
  maps.at(0, 3, 3) = 0.7f;
  const auto dets = CenterNetDecoder(3, 4).decode(maps.view());
  ASSERT_EQ(dets.size(), 3u);
  EXPECT_EQ(dets[0].flat_index, 15);
  EXPECT_EQ(dets[1].flat_index, 16 + 5);
  EXPECT_EQ(dets[2].flat_index, 16 + 6);
  EXPECT_EQ(dets[1].class_index, 1);
}

TEST(Decoder, BoxesFromSizeOffsetAndStride) {
  Maps maps(1, 4, 4);
  maps.at(0, 2, 1) = 0.8f;
  const size_t cell = 2 * 4 + 1, plane = 16;
  maps.wh[cell] = 3.0f;            // width, cells
  maps.wh[plane + cell] = 1.0f;    // height
  maps.offset[cell] = 0.25f;
  maps.offset[plane + cell] = 0.75f;
  const auto dets = CenterNetDecoder(1, 4).decode(maps.view());
  ASSERT_EQ(dets.size(), 1u);
  EXPECT_FLOAT_EQ(dets[0].x1, (1.25f - 1.5f) * 4);
  EXPECT_FLOAT_EQ(dets[0].y1, (2.75f - 0.5f) * 4);
  EXPECT_FLOAT_EQ(dets[0].x2, (1.25f + 1.5f) * 4);
  EXPECT_FLOAT_EQ(dets[0].y2, (2.75f + 0.5f) * 4);
}

TEST(Decoder, MapsThroughTheLetterboxAndClips) {
  const Letterbox box = Letterbox::fit(200, 100, 100);  // scale 0.5, ty 25
  EXPECT_DOUBLE_EQ(box.scale, 0.5);
  EXPECT_DOUBLE_EQ(box.tx, 0.0);
  EXPECT_DOUBLE_EQ(box.ty, 25.0);
  std::vector<Detection> dets(2);
  dets[0] = {-4.0f, 20.0f, 50.0f, 80.0f, 0.9f, 1, 0};
  dets[1] = {0.0f, 0.0f, 1.0f, 1.0f, 0.2f, 0, 1};
  const auto mapped = to_image(dets, box, 0.5f);
  ASSERT_EQ(mapped.size(), 1u);  // the second is under the threshold
  EXPECT_DOUBLE_EQ(mapped[0].x1, 0.0);    // -8 clipped
  EXPECT_DOUBLE_EQ(mapped[0].y1, 0.0);    // -10 clipped
  EXPECT_DOUBLE_EQ(mapped[0].x2, 100.0);
  EXPECT_DOUBLE_EQ(mapped[0].y2, 100.0);  // 110 clipped to the height
  EXPECT_EQ(mapped[0].class_index, 1);
}

}  // namespace
}  // namespace visionforge
