#include "visionforge/sources.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/videoio.hpp>

#include "visionforge/errors.hpp"

namespace visionforge {
namespace fs = std::filesystem;
namespace {

std::string lower_extension(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

bool is_image_file(const fs::path& path) {
  const auto& exts = image_extensions();
  return std::find(exts.begin(), exts.end(), lower_extension(path)) != exts.end();
}

// Decoding stops after this many unreadable frames in a row: past that, the rest of the file
// is gone rather than damaged.
constexpr int kMaxConsecutiveFailures = 16;

class VideoSource : public FrameSource {
 public:
  explicit VideoSource(std::string path) : path_(std::move(path)) { open(); }

  bool read(Frame& frame, std::vector<std::string>& warnings) override {
    cv::Mat image;
    while (true) {
      if (!capture_.read(image)) {
        // The container still announces frames: try to get past the damage.
        if (frame_count_ > 0 && next_index_ < frame_count_ && failures_ < kMaxConsecutiveFailures) {
          ++failures_;
          warnings.push_back(path_ + ": frame " + std::to_string(next_index_) +
                             " cannot be decoded (corrupt data); skipped");
          ++next_index_;
          ++skipped_;
          continue;
        }
        return false;
      }
      failures_ = 0;
      int64_t index = next_index_;
      // FFmpeg drops a packet it cannot decode and hands over the next good frame; the frame's
      // timestamp shows the gap. Only trusted while timestamps move forward.
      if (fps_ > 0) {
        const double ms = capture_.get(cv::CAP_PROP_POS_MSEC);
        const int64_t stamped = static_cast<int64_t>(std::llround(ms * fps_ / 1000.0));
        if (!have_base_) {
          base_ = stamped;
          have_base_ = true;
        }
        const int64_t from_time = stamped - base_;
        if (from_time > index && from_time - index < 1000000) {
          const int64_t gap = from_time - index;
          warnings.push_back(path_ + ": " +
                             (gap == 1 ? "frame " + std::to_string(index)
                                       : "frames " + std::to_string(index) + "-" + std::to_string(from_time - 1)) +
                             " cannot be decoded (corrupt data); skipped");
          skipped_ += gap;
          index = from_time;
        }
      }
      next_index_ = index + 1;
      if (image.empty() || image.type() != CV_8UC3) {
        warnings.push_back(path_ + ": frame " + std::to_string(index) + " decoded to an unusable image; skipped");
        ++skipped_;
        continue;
      }
      frame.image = image;
      frame.name = path_;
      frame.index = index;
      return true;
    }
  }

  void rewind() override {
    capture_.release();
    open();
  }

  bool is_video() const override { return true; }
  double fps() const override { return fps_; }
  std::string describe() const override {
    return path_ + " (video, " + std::to_string(width_) + "x" + std::to_string(height_) + ", " +
           (frame_count_ > 0 ? std::to_string(frame_count_) + " frames, " : std::string()) +
           (fps_ > 0 ? std::to_string(static_cast<int>(std::lround(fps_))) + " fps" : std::string("fps unknown")) +
           ")";
  }

 private:
  void open() {
    // FFmpeg explicitly: with CAP_ANY OpenCV would also try to read a path as an image
    // sequence pattern and give confusing answers for files that are not videos.
    if (!capture_.open(path_, cv::CAP_FFMPEG) || !capture_.isOpened()) {
      throw Error("cannot open video " + path_ + ": not a video file FFmpeg can decode");
    }
    fps_ = capture_.get(cv::CAP_PROP_FPS);
    if (!(fps_ > 0 && fps_ < 1000)) fps_ = 0;
    frame_count_ = static_cast<int64_t>(capture_.get(cv::CAP_PROP_FRAME_COUNT));
    width_ = static_cast<int>(capture_.get(cv::CAP_PROP_FRAME_WIDTH));
    height_ = static_cast<int>(capture_.get(cv::CAP_PROP_FRAME_HEIGHT));
    next_index_ = 0;
    failures_ = 0;
    have_base_ = false;
  }

  std::string path_;
  cv::VideoCapture capture_;
  double fps_ = 0;
  int64_t frame_count_ = 0;
  int width_ = 0, height_ = 0;
  int64_t next_index_ = 0;
  int failures_ = 0;
  bool have_base_ = false;
  int64_t base_ = 0;
};

class ImageSource : public FrameSource {
 public:
  ImageSource(std::string description, std::vector<std::string> files)
      : description_(std::move(description)), files_(std::move(files)) {}

  bool read(Frame& frame, std::vector<std::string>& warnings) override {
    while (next_ < files_.size()) {
      const std::string& file = files_[next_];
      const int64_t index = static_cast<int64_t>(next_++);
      cv::Mat image = cv::imread(file, cv::IMREAD_COLOR);
      if (image.empty()) {
        warnings.push_back("cannot read image " + file + ": not a readable image file; skipped");
        ++skipped_;
        continue;
      }
      frame.image = image;
      frame.name = file;
      frame.index = index;
      return true;
    }
    return false;
  }

  void rewind() override { next_ = 0; }
  bool is_video() const override { return false; }
  std::string describe() const override { return description_; }

 private:
  std::string description_;
  std::vector<std::string> files_;
  size_t next_ = 0;
};

}  // namespace

const std::vector<std::string>& image_extensions() {
  static const std::vector<std::string> exts{".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"};
  return exts;
}

std::unique_ptr<FrameSource> open_source(const std::string& path) {
  std::error_code ec;
  const fs::path input(path);
  if (fs::is_directory(input, ec)) {
    std::vector<std::string> files;
    for (const auto& entry : fs::directory_iterator(input, ec)) {
      if (entry.is_regular_file(ec) && is_image_file(entry.path())) files.push_back(entry.path().string());
    }
    if (ec) throw Error("cannot list folder " + path + ": " + ec.message());
    if (files.empty()) {
      std::string exts;
      for (const auto& ext : image_extensions()) exts += (exts.empty() ? "" : " ") + ext;
      throw Error("no images in folder " + path + " (looked for " + exts + ")");
    }
    std::sort(files.begin(), files.end());
    return std::make_unique<ImageSource>(path + " (folder, " + std::to_string(files.size()) + " images)", files);
  }
  if (!fs::exists(input, ec)) throw Error("input not found: " + path);
  if (!fs::is_regular_file(input, ec)) throw Error("input " + path + " is neither a file nor a folder");
  if (is_image_file(input)) {
    // A single image that cannot be read is the whole input: fail now rather than skip it.
    if (cv::imread(path, cv::IMREAD_COLOR).empty()) throw Error("cannot read image " + path + ": not a readable image file");
    return std::make_unique<ImageSource>(path + " (image)", std::vector<std::string>{path});
  }
  return std::make_unique<VideoSource>(path);
}

}  // namespace visionforge
