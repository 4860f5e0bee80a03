// Where frames come from: a video file (OpenCV's FFmpeg backend), one image, or a folder of
// images. A problem with a single frame (a corrupt frame in the middle of a video, an
// unreadable file in a folder) is skipped and reported through `warnings` so the caller can
// say so and keep going; a problem with the input as a whole throws visionforge::Error.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

namespace visionforge {

struct Frame {
  cv::Mat image;      // BGR uint8, OpenCV's order
  std::string name;   // the file the frame came from
  int64_t index = 0;  // frame number in the video (decoder gaps included), or image number
};

class FrameSource {
 public:
  virtual ~FrameSource() = default;
  // The next frame, or false at the end. Appends a message per skipped frame to `warnings`.
  virtual bool read(Frame& frame, std::vector<std::string>& warnings) = 0;
  // Start again from the first frame (the benchmark loops short inputs).
  virtual void rewind() = 0;
  virtual bool is_video() const = 0;
  virtual double fps() const { return 0.0; }
  virtual std::string describe() const = 0;
  int64_t skipped() const { return skipped_; }

 protected:
  int64_t skipped_ = 0;
};

// Image file extensions read from folders (lower case).
const std::vector<std::string>& image_extensions();

// A folder -> its images (sorted by name); an image file -> that image; anything else -> a
// video. Throws visionforge::Error for a missing path, an unopenable video or an empty folder.
std::unique_ptr<FrameSource> open_source(const std::string& path);

}  // namespace visionforge
