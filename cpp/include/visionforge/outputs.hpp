// What the program writes: detections as JSON lines, and frames with boxes drawn on them.
// Every file is written under a hidden temporary name in its destination folder and renamed
// into place only when complete, so a failed or interrupted run never leaves a file that
// looks finished.
#pragma once

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/videoio.hpp>

#include "visionforge/decoder.hpp"
#include "visionforge/sources.hpp"

namespace visionforge {

// A destination path and the temporary file beside it; the temporary is removed unless
// commit() renamed it into place.
class StagedFile {
 public:
  explicit StagedFile(const std::string& destination);
  ~StagedFile();
  StagedFile(const StagedFile&) = delete;
  StagedFile& operator=(const StagedFile&) = delete;

  const std::string& temporary() const { return temporary_; }
  const std::string& destination() const { return destination_; }
  void commit();

 private:
  std::string destination_;
  std::string temporary_;  // same folder and extension (OpenCV picks the container by extension)
  bool committed_ = false;
};

// One JSON object per frame: {"source", "frame", "width", "height", "detections": [{"class",
// "label", "score", "box": [x1, y1, x2, y2]}]}, boxes in the frame's pixels.
std::string detections_json_line(const Frame& frame, const std::vector<ImageDetection>& detections,
                                 const std::vector<std::string>& class_names);

class JsonlWriter {
 public:
  explicit JsonlWriter(const std::string& path);
  void write(const std::string& line);
  void commit();

 private:
  StagedFile file_;
  std::ofstream out_;
};

// Boxes with "label score" captions, one colour per class.
void draw_detections(cv::Mat& bgr, const std::vector<ImageDetection>& detections,
                     const std::vector<std::string>& class_names);

// Annotated frames: into a video (mp4v) for video input, or into a folder (one file per image,
// same name) for image input.
class AnnotatedWriter {
 public:
  AnnotatedWriter(const std::string& path, bool video, double fps);
  void write(const Frame& frame, const cv::Mat& annotated);
  void commit();

 private:
  std::string path_;
  bool video_;
  double fps_;
  std::unique_ptr<StagedFile> video_file_;
  cv::VideoWriter writer_;
  cv::Size size_;
};

}  // namespace visionforge
