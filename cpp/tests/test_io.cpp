// Frame sources (video, image, folder; corrupt frames, empty folders), outputs written only
// when complete, engine sidecars and SHA-256.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "vectors.hpp"
#include "visionforge/engine_sidecar.hpp"
#include "visionforge/errors.hpp"
#include "visionforge/ort_backend.hpp"
#include "visionforge/outputs.hpp"
#include "visionforge/sha256.hpp"
#include "visionforge/sources.hpp"

namespace visionforge {
namespace {

namespace fs = std::filesystem;
using testing::manifest;
using testing::vector_path;

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Sources, VideoFramesInOrder) {
  auto source = open_source(vector_path("clip.mp4"));
  EXPECT_TRUE(source->is_video());
  EXPECT_NEAR(source->fps(), manifest()["clip"]["fps"].get<double>(), 1e-6);
  Frame frame;
  std::vector<std::string> warnings;
  int64_t count = 0;
  while (source->read(frame, warnings)) {
    EXPECT_EQ(frame.index, count);
    EXPECT_EQ(frame.image.cols, manifest()["clip"]["width"].get<int>());
    ++count;
  }
  EXPECT_EQ(count, manifest()["clip"]["frames"].get<int64_t>());
  EXPECT_TRUE(warnings.empty());
  source->rewind();
  ASSERT_TRUE(source->read(frame, warnings));
  EXPECT_EQ(frame.index, 0);
}

TEST(Sources, CorruptFramesAreSkippedAndReported) {
  const auto& info = manifest()["corrupt_video"];
  auto source = open_source(vector_path(info["file"]));
  const auto corrupt = info["corrupt"].get<std::vector<int64_t>>();
  Frame frame;
  std::vector<std::string> warnings;
  std::vector<int64_t> indices;
  while (source->read(frame, warnings)) indices.push_back(frame.index);
  EXPECT_EQ(static_cast<int64_t>(indices.size()), info["frames"].get<int64_t>() - static_cast<int64_t>(corrupt.size()));
  for (int64_t bad : corrupt) EXPECT_EQ(std::count(indices.begin(), indices.end(), bad), 0) << bad;
  EXPECT_EQ(source->skipped(), static_cast<int64_t>(corrupt.size()));
  ASSERT_FALSE(warnings.empty());
  std::string all;
  for (const auto& w : warnings) all += w + "\n";
  EXPECT_NE(all.find("cannot be decoded (corrupt data); skipped"), std::string::npos) << all;
}

TEST(Sources, FolderSkipsUnreadableImages) {
  auto source = open_source(vector_path("bad/images_with_broken"));
  Frame frame;
  std::vector<std::string> warnings;
  int count = 0;
  while (source->read(frame, warnings)) ++count;
  EXPECT_EQ(count, 1);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("zz_broken.png"), std::string::npos) << warnings[0];
}

TEST(Sources, RefusesInputsThatCannotBeRead) {
  EXPECT_NE(error_of([] { open_source(vector_path("bad/nothing.mp4")); }).find("input not found"), std::string::npos);
  EXPECT_NE(error_of([] { open_source(vector_path("bad/empty_dir")); }).find("no images in folder"), std::string::npos);
  const std::string garbage = error_of([] {
    auto source = open_source(vector_path("bad/garbage.mp4"));
    Frame frame;
    std::vector<std::string> warnings;
    if (!source->read(frame, warnings)) throw Error("no frame");
  });
  EXPECT_NE(garbage, "(no error)");
}

TEST(Outputs, NothingAppearsUnlessCommitted) {
  const fs::path dir = fs::temp_directory_path() / ("vf_outputs_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string done = (dir / "done.jsonl").string(), abandoned = (dir / "abandoned.jsonl").string();
  {
    JsonlWriter writer(done);
    writer.write("{}");
    writer.commit();
  }
  {
    JsonlWriter writer(abandoned);
    writer.write("{}");  // an error happens here: no commit
  }
  EXPECT_TRUE(fs::exists(done));
  EXPECT_FALSE(fs::exists(abandoned));
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) files += entry.is_regular_file();
  EXPECT_EQ(files, 1u) << "a temporary file was left behind";
  fs::remove_all(dir);
}

TEST(Sha256, KnownDigests) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  EXPECT_EQ(sha256_hex(two_blocks.data(), two_blocks.size()),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  EXPECT_EQ(sha256_hex(million.data(), million.size()),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

std::string engine() { return vector_path("bad/engines/foreign.engine"); }

std::vector<char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST(Sidecar, ReadsWhatPythonWrites) {
  const EngineSidecar sidecar = read_sidecar(engine());
  EXPECT_EQ(sidecar.tensorrt_version, "10.0.1");
  EXPECT_EQ(sidecar.gpu_name, "NVIDIA A100-SXM4-40GB");
  const ModelInfo& info = sidecar.model_info;
  EXPECT_EQ(info.input_size, manifest()["input_size"].get<int>());
  EXPECT_EQ(info.class_names, manifest()["class_names"].get<std::vector<std::string>>());
  EXPECT_EQ(info.mean[0], manifest()["mean"][0].get<float>());
  EXPECT_NO_THROW(check_engine_bytes(sidecar, read_bytes(engine()), engine()));
}

TEST(Sidecar, MetadataReadsAsTheOnnxModelsDoes) {
  // The sidecar carries the model's metadata_props and both go through parse_onnx_metadata,
  // so an engine is pre- and post-processed exactly like the ONNX model it was built from.
  const ModelInfo& engine_info = read_sidecar(engine()).model_info;
  const OrtBackend onnx(vector_path(manifest()["model"]), BackendOptions{});
  const ModelInfo& onnx_info = onnx.model_info();
  EXPECT_EQ(engine_info.input_size, onnx_info.input_size);
  EXPECT_EQ(engine_info.mean, onnx_info.mean);
  EXPECT_EQ(engine_info.std, onnx_info.std);
  EXPECT_EQ(engine_info.class_names, onnx_info.class_names);
  EXPECT_EQ(engine_info.output_stride, onnx_info.output_stride);
  EXPECT_EQ(engine_info.resize, onnx_info.resize);
  EXPECT_EQ(engine_info.pad_value, onnx_info.pad_value);
  EXPECT_EQ(engine_info.color_order, onnx_info.color_order);
  EXPECT_EQ(engine_info.pixel_scale, onnx_info.pixel_scale);
}

TEST(Sidecar, TakesEveryMetadataFieldFromTheSidecar) {
  // Nothing is assumed: padding, colour order, pixel scale and stride are the sidecar's.
  std::ifstream in(sidecar_path(engine()));
  std::stringstream text;
  text << in.rdbuf();
  auto raw = nlohmann::json::parse(text.str());
  raw["metadata"]["pad_value"] = "[0, 10, 20]";
  raw["metadata"]["color_order"] = "\"BGR\"";
  raw["metadata"]["pixel_scale"] = "0.5";
  raw["metadata"]["output_stride"] = "8";
  const ModelInfo info = parse_sidecar(raw.dump(), "s.json").model_info;
  EXPECT_EQ(info.pad_value, (std::array<double, 3>{0, 10, 20}));
  EXPECT_EQ(info.color_order, "BGR");
  EXPECT_EQ(info.pixel_scale, 0.5);
  EXPECT_EQ(info.output_stride, 8);
}

TEST(Sidecar, RefusesEnginesFromAnotherTensorRtOrGpu) {
  const EngineSidecar sidecar = read_sidecar(engine());
  const std::string version = error_of(
      [&] { check_engine_compatible(sidecar, "10.3.0", "NVIDIA A100-SXM4-40GB", "8.0", engine()); });
  EXPECT_NE(version.find("built with TensorRT 10.0.1 but this machine runs TensorRT 10.3.0"), std::string::npos)
      << version;
  EXPECT_NE(version.find("rebuild it from the ONNX model on this machine"), std::string::npos) << version;
  const std::string gpu =
      error_of([&] { check_engine_compatible(sidecar, "10.0.1", "NVIDIA H200", "9.0", engine()); });
  EXPECT_NE(gpu.find("built on NVIDIA A100-SXM4-40GB (compute capability 8.0) but this machine has NVIDIA H200 "
                     "(compute capability 9.0)"),
            std::string::npos)
      << gpu;
  // The runtime reports major.minor.patch; a sidecar with a build number is the same release.
  EXPECT_NO_THROW(check_engine_compatible(sidecar, "10.0.1.6", "NVIDIA A100-SXM4-40GB", "8.0", engine()));
}

TEST(Sidecar, RefusesSwappedEnginesAndBrokenSidecars) {
  const EngineSidecar sidecar = read_sidecar(engine());
  std::vector<char> bytes = read_bytes(engine());
  bytes[0] = static_cast<char>(bytes[0] ^ 1);
  EXPECT_NE(error_of([&] { check_engine_bytes(sidecar, bytes, engine()); }).find("not the engine its sidecar describes"),
            std::string::npos);
  EXPECT_NE(error_of([] { read_sidecar(vector_path("bad/engines/no_sidecar.engine")); }).find("engine sidecar not found"),
            std::string::npos);

  std::ifstream in(sidecar_path(engine()));
  std::stringstream text;
  text << in.rdbuf();
  auto raw = nlohmann::json::parse(text.str());
  auto broken = raw;
  broken.erase("gpu_name");
  broken["extra"] = 1;
  EXPECT_NE(error_of([&] { parse_sidecar(broken.dump(), "s.json"); }).find("missing keys ['gpu_name']; unknown keys ['extra']"),
            std::string::npos);
  broken = raw;
  broken["schema_version"] = 99;
  EXPECT_NE(error_of([&] { parse_sidecar(broken.dump(), "s.json"); }).find("schema_version 99"), std::string::npos);
  // A version 1 sidecar (mean, std, input_size, class_names instead of metadata) asks for a rebuild.
  broken = raw;
  broken.erase("metadata");
  broken["schema_version"] = 1;
  broken["mean"] = {0.5, 0.5, 0.5};
  const std::string old = error_of([&] { parse_sidecar(broken.dump(), "s.json"); });
  EXPECT_NE(old.find("engine sidecar s.json has schema_version 1; this program reads version 2: rebuild the engine"),
            std::string::npos)
      << old;
  broken = raw;
  broken["metadata"]["input_size"] = 32;
  EXPECT_NE(error_of([&] { parse_sidecar(broken.dump(), "s.json"); })
                .find("metadata: expected an object of JSON-encoded strings"),
            std::string::npos);
  broken = raw;
  broken["metadata"].erase("output_stride");
  const std::string lacks = error_of([&] { parse_sidecar(broken.dump(), "s.json"); });
  EXPECT_NE(lacks.find("engine sidecar s.json has bad metadata (s.json: metadata_props lacks ['output_stride']"),
            std::string::npos)
      << lacks;
  broken = raw;
  broken["metadata"]["color_order"] = "\"HSV\"";
  EXPECT_NE(error_of([&] { parse_sidecar(broken.dump(), "s.json"); }).find("metadata_props['color_order']"),
            std::string::npos);
  broken = raw;
  broken["metadata"]["input_size"] = "64";
  const std::string size = error_of([&] { parse_sidecar(broken.dump(), "s.json"); });
  EXPECT_NE(size.find("metadata input_size 64 (3-channel images) disagrees with input_chw"), std::string::npos)
      << size;
  broken = raw;
  broken["precision"] = "fp8";
  broken["min_batch"] = 0;
  const std::string both = error_of([&] { parse_sidecar(broken.dump(), "s.json"); });
  EXPECT_NE(both.find("precision: expected one of ['fp16', 'int8']"), std::string::npos) << both;
  EXPECT_NE(both.find("min_batch: expected a positive integer"), std::string::npos) << both;
  EXPECT_NE(error_of([] { parse_sidecar("{", "s.json"); }).find("is not valid JSON"), std::string::npos);
}

}  // namespace
}  // namespace visionforge
