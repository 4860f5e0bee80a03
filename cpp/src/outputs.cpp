#include "visionforge/outputs.hpp"

#include <unistd.h>

#include <array>
#include <filesystem>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "visionforge/errors.hpp"

namespace visionforge {
namespace fs = std::filesystem;

StagedFile::StagedFile(const std::string& destination) : destination_(destination) {
  const fs::path dest(destination);
  std::error_code ec;
  if (fs::is_directory(dest, ec)) throw Error("cannot write " + destination + ": it is a folder");
  fs::path parent = dest.parent_path();
  if (parent.empty()) parent = ".";
  fs::create_directories(parent, ec);
  if (!fs::is_directory(parent, ec)) throw Error("cannot write " + destination + ": cannot create its folder");
  temporary_ = (parent / ("." + dest.stem().string() + ".partial-" + std::to_string(::getpid()) +
                          dest.extension().string()))
                   .string();
}

StagedFile::~StagedFile() {
  if (!committed_) {
    std::error_code ec;
    fs::remove(temporary_, ec);
  }
}

void StagedFile::commit() {
  std::error_code ec;
  fs::rename(temporary_, destination_, ec);
  if (ec) throw Error("cannot move " + temporary_ + " to " + destination_ + ": " + ec.message());
  committed_ = true;
}

std::string detections_json_line(const Frame& frame, const std::vector<ImageDetection>& detections,
                                 const std::vector<std::string>& class_names) {
  nlohmann::json line;
  line["source"] = frame.name;
  line["frame"] = frame.index;
  line["width"] = frame.image.cols;
  line["height"] = frame.image.rows;
  auto list = nlohmann::json::array();
  for (const auto& det : detections) {
    list.push_back({{"class", det.class_index},
                    {"label", class_names.at(static_cast<size_t>(det.class_index))},
                    {"score", det.score},
                    {"box", {det.x1, det.y1, det.x2, det.y2}}});
  }
  line["detections"] = std::move(list);
  return line.dump();
}

JsonlWriter::JsonlWriter(const std::string& path) : file_(path) {
  out_.open(file_.temporary(), std::ios::binary | std::ios::trunc);
  if (!out_) throw Error("cannot write " + path);
}

void JsonlWriter::write(const std::string& line) { out_ << line << '\n'; }

void JsonlWriter::commit() {
  out_.flush();
  out_.close();
  if (out_.fail()) throw Error("cannot finish writing " + file_.destination() + " (disk full?)");
  file_.commit();
}

void draw_detections(cv::Mat& bgr, const std::vector<ImageDetection>& detections,
                     const std::vector<std::string>& class_names) {
  static const std::array<cv::Scalar, 8> palette = {
      cv::Scalar(56, 56, 255), cv::Scalar(151, 157, 255), cv::Scalar(31, 112, 255), cv::Scalar(29, 178, 255),
      cv::Scalar(49, 210, 207), cv::Scalar(10, 249, 72), cv::Scalar(23, 204, 146), cv::Scalar(134, 219, 61)};
  // Thin lines and small text on small frames, thicker ones on large frames.
  const int thickness = std::max(1, std::min(bgr.cols, bgr.rows) / 320);
  const double font = std::max(0.35, std::min(bgr.cols, bgr.rows) / 900.0);
  for (const auto& det : detections) {
    const cv::Scalar colour = palette[static_cast<size_t>(det.class_index) % palette.size()];
    const cv::Point p1(static_cast<int>(std::lround(det.x1)), static_cast<int>(std::lround(det.y1)));
    const cv::Point p2(static_cast<int>(std::lround(det.x2)), static_cast<int>(std::lround(det.y2)));
    cv::rectangle(bgr, p1, p2, colour, thickness, cv::LINE_AA);
    char score[16];
    std::snprintf(score, sizeof(score), " %.2f", det.score);
    const std::string label = class_names.at(static_cast<size_t>(det.class_index)) + score;
    int baseline = 0;
    const cv::Size text = cv::getTextSize(label, cv::FONT_HERSHEY_SIMPLEX, font, 1, &baseline);
    // Above the box, kept inside the frame so captions near the edges stay readable.
    const int top = std::max(p1.y - text.height - baseline, 0);
    const int left = std::max(std::min(p1.x, bgr.cols - text.width), 0);
    cv::rectangle(bgr, cv::Point(left, top), cv::Point(left + text.width, top + text.height + baseline), colour,
                  cv::FILLED);
    cv::putText(bgr, label, cv::Point(left, top + text.height), cv::FONT_HERSHEY_SIMPLEX, font,
                cv::Scalar(255, 255, 255), 1, cv::LINE_AA);
  }
}

AnnotatedWriter::AnnotatedWriter(const std::string& path, bool video, double fps)
    : path_(path), video_(video), fps_(fps > 0 ? fps : 10.0) {
  std::error_code ec;
  if (video_) {
    video_file_ = std::make_unique<StagedFile>(path);
  } else {
    if (fs::exists(path, ec) && !fs::is_directory(path, ec)) {
      throw Error("--output " + path + " must be a folder when the input is images");
    }
    fs::create_directories(path, ec);
    if (!fs::is_directory(path, ec)) throw Error("cannot create output folder " + path);
  }
}

void AnnotatedWriter::write(const Frame& frame, const cv::Mat& annotated) {
  if (video_) {
    if (!writer_.isOpened()) {
      size_ = annotated.size();
      writer_.open(video_file_->temporary(), cv::CAP_FFMPEG, cv::VideoWriter::fourcc('m', 'p', '4', 'v'), fps_,
                   size_);
      if (!writer_.isOpened()) throw Error("cannot write video " + path_ + " (no mp4v encoder in OpenCV's FFmpeg?)");
    }
    if (annotated.size() != size_) {
      throw Error("frame " + std::to_string(frame.index) + " changes size mid-video; cannot write " + path_);
    }
    writer_.write(annotated);
    return;
  }
  const fs::path name = fs::path(frame.name).filename();
  StagedFile file((fs::path(path_) / name).string());
  if (!cv::imwrite(file.temporary(), annotated)) throw Error("cannot write " + file.destination());
  file.commit();
}

void AnnotatedWriter::commit() {
  if (!video_) return;
  writer_.release();
  video_file_->commit();
}

}  // namespace visionforge
