// Readers for the file sources (`image-folder`, `wav-file`, `text-file`): binary PGM/PPM images,
// raw u8 video, WAV audio and UTF-8 text lines, parsed here with no library. Every problem with a
// file is a ValidationError whose message starts with the file's path and says what is wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dp::teachers {

// ---------------------------------------------------------------- images

// A binary PGM (P5, gray) or PPM (P6, RGB) header; maxval 1..65535 (two big-endian bytes per
// sample above 255).
struct PnmInfo {
  int width = 0, height = 0, channels = 0;  // channels: 1 (P5) or 3 (P6)
  int maxval = 0;
  std::size_t data_offset = 0;  // where the samples start
};
PnmInfo read_pnm_header(const std::string& path);
// The image as f32 [3, H, W] in [0, 1] (sample / maxval; a gray image in all three channels).
void load_pnm(const std::string& path, const PnmInfo& info, float* chw);

// The frames of an `image-folder` source: the .pgm/.ppm/.pnm files of a folder in name order (all
// of one size), one such image file, or a raw video file of u8 frames (H x W x C interleaved,
// C = 1 or 3, e.g. `ffmpeg -i in.mp4 -f rawvideo -pix_fmt rgb24 out.rgb`).
class ImageSequence {
 public:
  // raw_*: the raw video's frame size; 0 for image files (then all three must be 0).
  ImageSequence(const std::string& path, int raw_width, int raw_height, int raw_channels);
  std::size_t count() const { return count_; }
  int width() const { return width_; }
  int height() const { return height_; }
  const std::string& name(std::size_t k) const;  // the file frame k comes from
  // Frame k as f32 [3, H, W] in [0, 1].
  void load(std::size_t k, float* chw) const;

 private:
  std::string path_;
  bool raw_ = false;
  int width_ = 0, height_ = 0, channels_ = 0;
  std::size_t count_ = 0;
  std::vector<std::string> files_;
  std::vector<PnmInfo> headers_;
};

// ---------------------------------------------------------------- audio

// A RIFF/WAVE file: PCM (8-bit unsigned, 16, 24 or 32-bit signed) or IEEE float (32 or 64-bit),
// also as WAVE_FORMAT_EXTENSIBLE; any number of channels, averaged into one.
struct WavAudio {
  int sample_rate = 0;
  int channels = 0;
  int bits = 0;
  std::string format;       // "pcm" or "float"
  std::vector<float> mono;  // the samples, channels averaged, in [-1, 1] for PCM
};
WavAudio read_wav(const std::string& path);

// ---------------------------------------------------------------- text

// The lines of a UTF-8 text file ('\n' or "\r\n" line ends; a last line without one counts).
// Invalid UTF-8 is an error naming the line. An empty file is an error.
std::vector<std::string> read_text_lines(const std::string& path);
// `s` cut to at most `max_bytes` at a character boundary (never inside a UTF-8 sequence).
std::string utf8_prefix(const std::string& s, std::size_t max_bytes);
// The byte offset of the first invalid UTF-8 sequence, or npos.
std::size_t utf8_invalid_at(const std::string& s);

}  // namespace dp::teachers
