// visionforge-detect: run the exported traffic detector on a video, an image or a folder of
// images; write detections as JSON lines and, optionally, the frames with boxes drawn on them.
//
//   visionforge-detect MODEL INPUT [--output annotated.mp4] [--json detections.jsonl]
//                      [--threshold T] [--top-k K] [--threads N] [--benchmark N]
//
// MODEL is an ONNX model exported by `visionforge export` (ONNX Runtime, CPU) or a TensorRT
// engine with its JSON sidecar (builds configured with -DVISIONFORGE_TENSORRT=ON).
// Exit status: 0 done, 1 the run could not go on (the message says why), 2 bad usage.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/core/utils/logger.hpp>

#include "visionforge/backend.hpp"
#include "visionforge/detector.hpp"
#include "visionforge/errors.hpp"
#include "visionforge/outputs.hpp"
#include "visionforge/sources.hpp"

namespace {

using namespace visionforge;
using Clock = std::chrono::steady_clock;

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;
constexpr int kDefaultTopK = 100;         // params.yaml traffic.evaluate.top_k
constexpr float kDefaultThreshold = 0.3f; // for drawing: mAP evaluation uses 0.01
constexpr int kBenchmarkWarmup = 5;       // frames run before timing (allocations, caches)

const char* const kUsage =
    "usage: visionforge-detect MODEL INPUT [--output PATH] [--json PATH] [--threshold T]\n"
    "                          [--top-k K] [--threads N] [--benchmark N] [--quiet]\n"
    "\n"
    "  MODEL            an ONNX model from `visionforge export` (ONNX Runtime, CPU), or a\n"
    "                   TensorRT engine with its .json sidecar (TensorRT builds only)\n"
    "  INPUT            a video file, an image, or a folder of images\n"
    "  --output PATH    annotated video (video input) or folder of annotated images\n"
    "  --json PATH      detections as JSON lines, one per frame (default: stdout)\n"
    "  --threshold T    minimum score to report, 0..1 (default 0.3)\n"
    "  --top-k K        peaks decoded per frame before the threshold (default 100)\n"
    "  --threads N      ONNX Runtime intra-op threads (default: ONNX Runtime decides)\n"
    "  --benchmark N    time N frames (looping the input) and print p50/p95 latency and FPS\n"
    "                   of reading, pre-processing, inference and decoding; writes nothing\n"
    "  --quiet          no per-run summary on stderr\n";

struct Options {
  std::string model;
  std::string input;
  std::string output;
  std::string json;
  float threshold = kDefaultThreshold;
  int top_k = kDefaultTopK;
  int threads = 0;
  int benchmark = 0;
  bool quiet = false;
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

double parse_number(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    const double value = std::stod(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
    return value;
  } catch (const std::exception&) {
    throw UsageError(flag + " expects a number, got '" + text + "'");
  }
}

int parse_int(const std::string& flag, const std::string& text, int min_value) {
  const double value = parse_number(flag, text);
  if (value != static_cast<int>(value) || value < min_value) {
    throw UsageError(flag + " expects an integer >= " + std::to_string(min_value) + ", got '" + text + "'");
  }
  return static_cast<int>(value);
}

std::optional<Options> parse_args(int argc, char** argv) {
  Options opts;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const std::string& flag) -> std::string {
      if (i + 1 >= argc) throw UsageError(flag + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      return std::nullopt;
    } else if (arg == "--output" || arg == "-o") {
      opts.output = value(arg);
    } else if (arg == "--json") {
      opts.json = value(arg);
    } else if (arg == "--threshold") {
      const double t = parse_number(arg, value(arg));
      if (!(t >= 0.0 && t <= 1.0)) throw UsageError("--threshold must be between 0 and 1");
      opts.threshold = static_cast<float>(t);
    } else if (arg == "--top-k") {
      opts.top_k = parse_int(arg, value(arg), 1);
    } else if (arg == "--threads") {
      opts.threads = parse_int(arg, value(arg), 0);
    } else if (arg == "--benchmark") {
      opts.benchmark = parse_int(arg, value(arg), 1);
    } else if (arg == "--quiet" || arg == "-q") {
      opts.quiet = true;
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw UsageError("unknown option " + arg);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 2) throw UsageError("expected MODEL and INPUT");
  opts.model = positional[0];
  opts.input = positional[1];
  if (opts.benchmark > 0 && (!opts.output.empty() || !opts.json.empty())) {
    throw UsageError("--benchmark times the pipeline alone and writes nothing: drop --output and --json");
  }
  return opts;
}

void print_warnings(std::vector<std::string>& warnings) {
  for (const auto& w : warnings) std::cerr << "warning: " << w << "\n";
  warnings.clear();
}

int run_detection(const Options& opts, Detector& detector, FrameSource& source) {
  const auto& names = detector.model_info().class_names;
  std::unique_ptr<JsonlWriter> json;
  if (!opts.json.empty()) json = std::make_unique<JsonlWriter>(opts.json);
  std::unique_ptr<AnnotatedWriter> annotated;
  if (!opts.output.empty()) annotated = std::make_unique<AnnotatedWriter>(opts.output, source.is_video(), source.fps());

  Frame frame;
  std::vector<std::string> warnings;
  int64_t frames = 0, boxes = 0;
  StageTimes sum, times;
  const auto start = Clock::now();
  while (source.read(frame, warnings)) {
    print_warnings(warnings);
    const std::vector<ImageDetection> detections = detector.detect(frame.image, &times);
    ++frames;
    boxes += static_cast<int64_t>(detections.size());
    sum.preprocess_ms += times.preprocess_ms;
    sum.inference_ms += times.inference_ms;
    sum.decode_ms += times.decode_ms;
    const std::string line = detections_json_line(frame, detections, names);
    if (json) {
      json->write(line);
    } else {
      std::cout << line << '\n';
    }
    if (annotated) {
      cv::Mat canvas = frame.image.clone();
      draw_detections(canvas, detections, names);
      annotated->write(frame, canvas);
    }
  }
  print_warnings(warnings);
  if (frames == 0) {
    throw Error("no frame of " + opts.input + " could be read" +
                (source.skipped() ? " (" + std::to_string(source.skipped()) + " skipped as unreadable)" : std::string()) +
                "; nothing written");
  }
  if (json) json->commit();
  if (annotated) annotated->commit();
  std::cout.flush();

  if (!opts.quiet) {
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    char text[512];
    std::snprintf(text, sizeof(text),
                  "%lld frame(s), %lld detection(s) >= %.2f, %lld skipped; %.1f FPS overall; per frame: "
                  "pre-processing %.2f ms, inference %.2f ms, decoding %.2f ms",
                  static_cast<long long>(frames), static_cast<long long>(boxes), detector.threshold(),
                  static_cast<long long>(source.skipped()), static_cast<double>(frames) / seconds,
                  sum.preprocess_ms / static_cast<double>(frames), sum.inference_ms / static_cast<double>(frames),
                  sum.decode_ms / static_cast<double>(frames));
    std::cerr << source.describe() << " with " << detector.backend().name() << ": " << text << "\n";
    if (json) std::cerr << "wrote " << opts.json << "\n";
    if (annotated) std::cerr << "wrote " << opts.output << "\n";
  }
  return 0;
}

int run_benchmark(const Options& opts, Detector& detector, FrameSource& source) {
  Frame frame;
  std::vector<std::string> warnings;
  // A frame, rewinding at the end so short inputs can be timed over many frames; the reopen
  // itself is not timed.
  auto next = [&](Clock::time_point& t0) {
    t0 = Clock::now();
    if (source.read(frame, warnings)) return;
    source.rewind();
    t0 = Clock::now();
    if (!source.read(frame, warnings)) throw Error("no frame of " + opts.input + " could be read");
  };
  Clock::time_point t0;
  for (int i = 0; i < kBenchmarkWarmup; ++i) {
    next(t0);
    detector.detect(frame.image);
  }
  print_warnings(warnings);
  LatencyStats read, pre, infer, decode, total;
  StageTimes times;
  double wall_ms = 0;
  for (int i = 0; i < opts.benchmark; ++i) {
    next(t0);
    const auto t1 = Clock::now();
    detector.detect(frame.image, &times);
    const auto t2 = Clock::now();
    read.add(std::chrono::duration<double, std::milli>(t1 - t0).count());
    pre.add(times.preprocess_ms);
    infer.add(times.inference_ms);
    decode.add(times.decode_ms);
    const double frame_ms = std::chrono::duration<double, std::milli>(t2 - t0).count();
    total.add(frame_ms);
    wall_ms += frame_ms;
  }
  print_warnings(warnings);

  const ModelInfo& info = detector.model_info();
  std::printf("visionforge-detect benchmark: %d frames of %s\n", opts.benchmark, source.describe().c_str());
  std::printf("model %s (%s), input %dx%d, threshold %.2f, top-k %d, %d warm-up frames\n", opts.model.c_str(),
              detector.backend().name().c_str(), info.input_size, info.input_size, detector.threshold(), opts.top_k,
              kBenchmarkWarmup);
  std::printf("%-16s %9s %9s %9s %10s\n", "stage", "p50 ms", "p95 ms", "mean ms", "FPS");
  auto row = [](const char* stage, const LatencyStats& s) {
    std::printf("%-16s %9.3f %9.3f %9.3f %10.1f\n", stage, s.percentile(50), s.percentile(95), s.mean(),
                s.mean() > 0 ? 1000.0 / s.mean() : 0.0);
  };
  row("read (decode)", read);
  row("pre-processing", pre);
  row("inference", infer);
  row("decoding", decode);
  row("end-to-end", total);
  std::printf("end-to-end: %.1f FPS (%d frames in %.1f ms; FPS = 1000 / mean latency)\n",
              wall_ms > 0 ? 1000.0 * opts.benchmark / wall_ms : 0.0, opts.benchmark, wall_ms);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<Options> opts;
  try {
    opts = parse_args(argc, argv);
    if (!opts) return 0;
  } catch (const UsageError& e) {
    std::cerr << "visionforge-detect: " << e.what() << "\n\n" << kUsage;
    return kExitUsage;
  }
  // OpenCV's own info/warning chatter would bury the one message that matters.
  cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_ERROR);
  try {
    BackendOptions backend_options;
    backend_options.threads = opts->threads;
    Detector detector(open_backend(opts->model, backend_options), opts->top_k, opts->threshold);
    std::unique_ptr<FrameSource> source = open_source(opts->input);
    return opts->benchmark > 0 ? run_benchmark(*opts, detector, *source) : run_detection(*opts, detector, *source);
  } catch (const Error& e) {
    std::cerr << "visionforge-detect: error: " << e.what() << "\n";
  } catch (const cv::Exception& e) {
    std::cerr << "visionforge-detect: error: OpenCV: " << e.what() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "visionforge-detect: error: " << e.what() << "\n";
  }
  return kExitError;
}
