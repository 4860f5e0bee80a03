// Pre-processing and the ONNX Runtime backend against Python on the shared vectors, and the
// model checks: every way a model can break the contract gets its own clear message.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include <opencv2/imgcodecs.hpp>

#include "letterbox_warp.hpp"
#include "vectors.hpp"
#include "visionforge/detector.hpp"
#include "visionforge/errors.hpp"
#include "visionforge/ort_backend.hpp"
#include "visionforge/preprocess.hpp"

namespace visionforge {
namespace {

using testing::manifest;
using testing::read_floats;
using testing::vector_path;

constexpr double kOutputTolerance = 1e-4;  // ONNX Runtime C++ vs Python, same library

std::unique_ptr<OrtBackend> open_model() {
  BackendOptions options;
  options.threads = manifest()["threads"].get<int>();  // as Python ran it
  return std::make_unique<OrtBackend>(vector_path(manifest()["model"]), options);
}

double max_abs_diff(const float* a, const std::vector<float>& b) {
  double worst = 0;
  for (size_t i = 0; i < b.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  return worst;
}

size_t elements(const nlohmann::json& tensor) {
  size_t n = 1;
  for (const auto& d : tensor["shape"]) n *= d.get<size_t>();
  return n;
}

TEST(Model, MetadataIsReadFromTheOnnxFile) {
  const auto backend = open_model();
  const ModelInfo& info = backend->model_info();
  EXPECT_EQ(info.input_size, manifest()["input_size"].get<int>());
  EXPECT_EQ(info.class_names, manifest()["class_names"].get<std::vector<std::string>>());
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(info.mean[c], manifest()["mean"][c].get<float>());
    EXPECT_EQ(info.std[c], manifest()["std"][c].get<float>());
  }
  EXPECT_EQ(info.output_stride, 4);
  EXPECT_EQ(info.resize, "letterbox");
  EXPECT_EQ(info.color_order, "RGB");
  EXPECT_EQ(info.pad_value, (std::array<double, 3>{114, 114, 114}));
}

TEST(Preprocess, MatchesPythonInputTensor) {
  const auto backend = open_model();
  Preprocessor preprocess(backend->model_info());
  std::vector<float> input(preprocess.input_elements());
  for (const auto& record : manifest()["images"]) {
    SCOPED_TRACE(record["image"].get<std::string>());
    const cv::Mat bgr = cv::imread(vector_path(record["image"]), cv::IMREAD_COLOR);
    ASSERT_FALSE(bgr.empty());
    preprocess(bgr, input.data());
    const std::vector<float> want = read_floats(record["input"]["file"], elements(record["input"]));
    ASSERT_EQ(want.size(), input.size());
    // Same warp (OpenCV's fixed-point bilinear) and the same float32 normalisation.
    EXPECT_EQ(max_abs_diff(input.data(), want), 0.0);
  }
}

TEST(Preprocess, MatchesPythonOnManyGeometries) {
  const auto backend = open_model();
  Preprocessor preprocess(backend->model_info());
  std::vector<float> input(preprocess.input_elements());
  for (const auto& item : manifest()["warp_cases"]) {
    const cv::Mat bgr = cv::imread(vector_path(item["image"]), cv::IMREAD_COLOR);
    ASSERT_FALSE(bgr.empty());
    preprocess(bgr, input.data());
    const std::vector<float> want = read_floats(item["input"], input.size());
    EXPECT_EQ(max_abs_diff(input.data(), want), 0.0) << item["image"];
  }
}

TEST(Preprocess, HardwareAndPortableFmaAgree) {
  // The kernel runs with the CPU's FMA instructions where it has them and with the C
  // library's fmaf elsewhere: both must give the same bits.
  std::array<std::array<float, 256>, 3> table{};
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) table[c][v] = static_cast<float>(v);
  }
  for (const auto& record : manifest()["images"]) {
    const cv::Mat bgr = cv::imread(vector_path(record["image"]), cv::IMREAD_COLOR);
    for (int size : {96, 128, 131}) {
      const Letterbox box = Letterbox::fit(bgr.cols, bgr.rows, size);
      std::vector<float> a(3u * size * size), b(a.size());
      detail::WarpJob job;
      job.bgr = &bgr;
      job.scale = box.scale;
      job.tx = box.tx;
      job.ty = box.ty;
      job.size = size;
      job.pad_bgr = {114.0f, 114.0f, 114.0f};
      job.source_channel = {2, 1, 0};
      job.table = &table;
      job.out = a.data();
      detail::letterbox_warp_portable(job);
      job.out = b.data();
      detail::letterbox_warp(job);
      EXPECT_EQ(a, b) << record["image"] << " at " << size;
    }
  }
}

TEST(OrtBackend, OutputsMatchPythonOnnxRuntime) {
  auto backend = open_model();
  for (const auto& record : manifest()["images"]) {
    SCOPED_TRACE(record["image"].get<std::string>());
    const std::vector<float> input = read_floats(record["input"]["file"], elements(record["input"]));
    std::copy(input.begin(), input.end(), backend->input_buffer());
    const HeadOutputs heads = backend->infer();
    const float* got[3] = {heads.heatmap, heads.wh, heads.offset};
    const char* names[3] = {"heatmap", "wh", "offset"};
    for (int i = 0; i < 3; ++i) {
      const std::vector<float> want = read_floats(record[names[i]]["file"], elements(record[names[i]]));
      const double diff = max_abs_diff(got[i], want);
      EXPECT_LE(diff, kOutputTolerance) << names[i];
      RecordProperty(std::string("max_abs_diff_") + names[i], std::to_string(diff));
    }
  }
}

TEST(OrtBackend, WholePipelineMatchesPythonDetections) {
  Detector detector(open_model(), manifest()["top_k"].get<int>(), manifest()["threshold"].get<float>());
  for (const auto& record : manifest()["images"]) {
    SCOPED_TRACE(record["image"].get<std::string>());
    const cv::Mat bgr = cv::imread(vector_path(record["image"]), cv::IMREAD_COLOR);
    const auto got = detector.detect(bgr);
    const auto& want = record["detections"];
    ASSERT_EQ(got.size(), want.size());
    for (size_t k = 0; k < got.size(); ++k) {
      EXPECT_EQ(got[k].class_index, want[k]["class"].get<int>()) << "rank " << k;
      EXPECT_NEAR(got[k].score, want[k]["score"].get<double>(), kOutputTolerance) << "rank " << k;
      EXPECT_NEAR(got[k].x1, want[k]["box"][0].get<double>(), 1e-3) << "rank " << k;
      EXPECT_NEAR(got[k].y2, want[k]["box"][3].get<double>(), 1e-3) << "rank " << k;
    }
  }
}

void expect_refused(const std::string& path, const std::string& needle) {
  try {
    OrtBackend backend(path, BackendOptions{});
    ADD_FAILURE() << path << " was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << "the message names the file: " << e.what();
  }
}

TEST(OrtBackend, RefusesModelsOutsideTheContract) {
  expect_refused(vector_path("bad/missing.onnx"), "ONNX model not found");
  expect_refused(vector_path("bad/garbage.onnx"), "ONNX Runtime cannot load this model");
  expect_refused(vector_path("bad/wrong_io.onnx"), "do not match the detector contract");
  expect_refused(vector_path("bad/no_metadata.onnx"), "metadata_props lacks");
}

TEST(ModelMetadata, ParsesWhatTheExporterWrites) {
  const ModelInfo info = parse_onnx_metadata(
      {{"input_size", "256"}, {"mean", "[0.5, 0.5, 0.5]"}, {"std", "[0.25, 0.25, 0.25]"},
       {"class_names", "[\"car\", \"bus\"]"}, {"output_stride", "4"}, {"resize", "\"letterbox\""},
       {"pad_value", "null"}, {"color_order", "\"BGR\""}, {"pixel_scale", "0.00392156862745098"}},
      "m.onnx");
  EXPECT_EQ(info.input_size, 256);
  EXPECT_EQ(info.num_classes(), 2);
  EXPECT_EQ(info.color_order, "BGR");
  EXPECT_EQ(info.pad_value, kDefaultPadValue);  // null: the pipeline's PAD_VALUE
}

void expect_metadata_error(std::map<std::string, std::string> props, const std::string& needle) {
  std::map<std::string, std::string> base{{"input_size", "128"},
                                          {"mean", "[0.5, 0.5, 0.5]"},
                                          {"std", "[0.25, 0.25, 0.25]"},
                                          {"class_names", "[\"car\"]"},
                                          {"output_stride", "4"}};
  for (auto& [key, value] : props) {
    if (value.empty()) base.erase(key); else base[key] = value;
  }
  try {
    parse_onnx_metadata(base, "m.onnx");
    ADD_FAILURE() << "accepted; expected: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(ModelMetadata, RefusesWhatThePipelineCannotReproduce) {
  expect_metadata_error({{"mean", ""}, {"class_names", ""}}, "lacks ['mean', 'class_names']");
  expect_metadata_error({{"std", "[0.2, 0, 0.2]"}}, "'std'] must be a list of 3 positive numbers");
  expect_metadata_error({{"input_size", "\"big\""}}, "'input_size'] must be a positive integer");
  expect_metadata_error({{"output_stride", "3"}}, "does not divide input_size");
  expect_metadata_error({{"class_names", "[]"}}, "non-empty list of strings");
  expect_metadata_error({{"resize", "\"stretch\""}}, "only resize mode");
  expect_metadata_error({{"mean", "[0.5, 0.5"}}, "is not JSON");
}

TEST(Stats, PercentilesInterpolateLikeNumpy) {
  LatencyStats stats;
  for (double v : {4.0, 1.0, 3.0, 2.0}) stats.add(v);
  EXPECT_DOUBLE_EQ(stats.percentile(50), 2.5);
  EXPECT_DOUBLE_EQ(stats.percentile(95), 3.85);
  EXPECT_DOUBLE_EQ(stats.mean(), 2.5);
}

}  // namespace
}  // namespace visionforge
