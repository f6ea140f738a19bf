// PGM/PPM, raw video, WAV and UTF-8 text readers (files.hpp).
#include "directport/teachers/files.hpp"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <limits>

#include "directport/core/error.hpp"

namespace dp::teachers {

namespace {

[[noreturn]] void bad(const std::string& path, const std::string& what) { throw ValidationError(path + ": " + what); }

std::vector<std::uint8_t> read_all(const std::string& path, std::size_t limit) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) bad(path, std::string("cannot open: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) bad(path, "is not a regular file");
  if (static_cast<std::size_t>(st.st_size) > limit) {
    bad(path, "is " + std::to_string(st.st_size) + " bytes; at most " + std::to_string(limit) + " are read");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) bad(path, std::string("cannot open: ") + std::strerror(errno));
  std::vector<std::uint8_t> data(static_cast<std::size_t>(st.st_size));
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size()));
  if (static_cast<std::size_t>(in.gcount()) != data.size()) bad(path, "could not be read whole");
  return data;
}

std::vector<std::uint8_t> read_range(const std::string& path, std::size_t offset, std::size_t bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) bad(path, std::string("cannot open: ") + std::strerror(errno));
  in.seekg(static_cast<std::streamoff>(offset));
  std::vector<std::uint8_t> data(bytes);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(bytes));
  if (static_cast<std::size_t>(in.gcount()) != bytes) {
    bad(path, "ends early: expected " + std::to_string(bytes) + " bytes at offset " + std::to_string(offset) + ", found " +
                  std::to_string(in.gcount()) + " (was the file changed while in use?)");
  }
  return data;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_pnm_name(const std::string& name) {
  const auto dot = name.rfind('.');
  if (dot == std::string::npos) return false;
  const auto ext = lower(name.substr(dot));
  return ext == ".pgm" || ext == ".ppm" || ext == ".pnm";
}

std::uint32_t le32(const std::uint8_t* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (std::uint32_t(p[3]) << 24); }
std::uint16_t le16(const std::uint8_t* p) { return static_cast<std::uint16_t>(p[0] | (p[1] << 8)); }

}  // namespace

// ---------------------------------------------------------------- PNM

PnmInfo read_pnm_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    struct stat st {};
    bad(path, ::stat(path.c_str(), &st) != 0 ? std::string("cannot open: ") + std::strerror(errno) : "cannot be read");
  }
  char magic[2] = {0, 0};
  in.read(magic, 2);
  if (in.gcount() != 2 || magic[0] != 'P') bad(path, "is not a PGM/PPM image (no 'P5' or 'P6' magic number)");
  PnmInfo info;
  if (magic[1] == '5') {
    info.channels = 1;
  } else if (magic[1] == '6') {
    info.channels = 3;
  } else if (magic[1] == '2' || magic[1] == '3') {
    bad(path, std::string("is an ASCII ('P") + magic[1] + "') PGM/PPM; only binary P5 and P6 are read (convert it, e.g. `pnmtopnm`)");
  } else {
    bad(path, std::string("has magic 'P") + magic[1] + "': only binary PGM (P5) and PPM (P6) are read");
  }
  // Three whitespace-separated decimal fields, '#' comments to the end of a line, then exactly one
  // whitespace byte before the samples.
  const char* names[3] = {"width", "height", "maxval"};
  long long vals[3];
  for (int f = 0; f < 3; ++f) {
    int c = in.get();
    for (;;) {
      if (c == '#') {
        while (c != EOF && c != '\n') c = in.get();
      } else if (c != EOF && std::isspace(c)) {
        c = in.get();
      } else {
        break;
      }
    }
    if (c == EOF) bad(path, std::string("header ends before its ") + names[f]);
    if (!std::isdigit(c)) bad(path, std::string("header: expected the ") + names[f] + " (a decimal number), found '" + char(c) + "'");
    long long v = 0;
    while (c != EOF && std::isdigit(c)) {
      v = v * 10 + (c - '0');
      if (v > 1'000'000) bad(path, std::string("header: ") + names[f] + " is too large");
      c = in.get();
    }
    vals[f] = v;
    if (f < 2 && c != EOF && !std::isspace(c) && c != '#') bad(path, std::string("header: junk after the ") + names[f]);
    if (f == 2) {
      if (c == EOF || !std::isspace(c)) bad(path, "header: the maxval must be followed by one whitespace byte");
    } else {
      in.unget();
    }
  }
  if (vals[0] < 1 || vals[0] > 16384 || vals[1] < 1 || vals[1] > 16384) {
    bad(path, "size " + std::to_string(vals[0]) + "x" + std::to_string(vals[1]) + " is outside 1..16384");
  }
  if (vals[2] < 1 || vals[2] > 65535) bad(path, "maxval " + std::to_string(vals[2]) + " is outside 1..65535");
  info.width = static_cast<int>(vals[0]);
  info.height = static_cast<int>(vals[1]);
  info.maxval = static_cast<int>(vals[2]);
  info.data_offset = static_cast<std::size_t>(in.tellg());
  const std::size_t need = static_cast<std::size_t>(info.width) * info.height * info.channels * (info.maxval > 255 ? 2 : 1);
  in.seekg(0, std::ios::end);
  const auto size = static_cast<std::size_t>(in.tellg());
  if (size < info.data_offset + need) {
    bad(path, "is truncated: a " + std::to_string(info.width) + "x" + std::to_string(info.height) + " " +
                  (info.channels == 3 ? "PPM" : "PGM") + " needs " + std::to_string(need) + " bytes of samples, the file has " +
                  std::to_string(size - info.data_offset));
  }
  return info;
}

void load_pnm(const std::string& path, const PnmInfo& info, float* chw) {
  const std::size_t plane = static_cast<std::size_t>(info.width) * info.height;
  const int bps = info.maxval > 255 ? 2 : 1;
  const auto data = read_range(path, info.data_offset, plane * info.channels * bps);
  const auto maxval = static_cast<float>(info.maxval);
  for (std::size_t k = 0; k < plane; ++k) {
    for (int c = 0; c < 3; ++c) {
      const std::size_t at = (k * info.channels + (info.channels == 3 ? c : 0)) * bps;
      const unsigned v = bps == 2 ? (data[at] << 8 | data[at + 1]) : data[at];
      chw[c * plane + k] = std::min(1.0f, static_cast<float>(v) / maxval);  // samples above maxval clip
    }
  }
}

ImageSequence::ImageSequence(const std::string& path, int raw_width, int raw_height, int raw_channels) : path_(path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) bad(path, std::string("cannot open: ") + std::strerror(errno));
  const bool raw_given = raw_width || raw_height || raw_channels;
  if (S_ISDIR(st.st_mode)) {
    if (raw_given) bad(path, "is a folder; 'width', 'height' and 'channels' describe a raw video file: leave them 0");
    DIR* d = ::opendir(path.c_str());
    if (!d) bad(path, std::string("cannot list: ") + std::strerror(errno));
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      if (is_pnm_name(e->d_name)) names.push_back(e->d_name);
    }
    ::closedir(d);
    std::sort(names.begin(), names.end());
    if (names.empty()) bad(path, "holds no .pgm/.ppm/.pnm image");
    for (auto& n : names) files_.push_back(path + (path.back() == '/' ? "" : "/") + n);
  } else if (S_ISREG(st.st_mode) && !raw_given) {
    if (!is_pnm_name(path)) {
      bad(path, "is neither a folder nor a .pgm/.ppm/.pnm image; for a raw video file give 'width', 'height' and 'channels'");
    }
    files_.push_back(path);
  } else if (S_ISREG(st.st_mode)) {
    raw_ = true;
    if (raw_width < 1 || raw_width > 16384 || raw_height < 1 || raw_height > 16384) {
      bad(path, "raw video needs 'width' and 'height' in 1..16384, got " + std::to_string(raw_width) + "x" + std::to_string(raw_height));
    }
    if (raw_channels != 1 && raw_channels != 3) {
      bad(path, "raw video needs 'channels' 1 (gray) or 3 (RGB), got " + std::to_string(raw_channels));
    }
    width_ = raw_width;
    height_ = raw_height;
    channels_ = raw_channels;
    const std::size_t frame = static_cast<std::size_t>(width_) * height_ * channels_;
    const auto size = static_cast<std::size_t>(st.st_size);
    if (size == 0) bad(path, "is empty");
    if (size % frame) {
      bad(path, "is " + std::to_string(size) + " bytes, not a multiple of the frame size " + std::to_string(width_) + "x" +
                    std::to_string(height_) + "x" + std::to_string(channels_) + " = " + std::to_string(frame) +
                    " (are 'width', 'height' and 'channels' right?)");
    }
    count_ = size / frame;
    return;
  } else {
    bad(path, "is neither a folder nor a regular file");
  }
  for (auto& f : files_) {
    headers_.push_back(read_pnm_header(f));
    const auto& h = headers_.back();
    if (headers_.size() == 1) {
      width_ = h.width;
      height_ = h.height;
    } else if (h.width != width_ || h.height != height_) {
      bad(f, "is " + std::to_string(h.width) + "x" + std::to_string(h.height) + " but " + files_[0] + " is " +
                 std::to_string(width_) + "x" + std::to_string(height_) + ": every image of a folder must have one size");
    }
  }
  count_ = files_.size();
}

const std::string& ImageSequence::name(std::size_t k) const { return raw_ ? path_ : files_.at(k); }

void ImageSequence::load(std::size_t k, float* chw) const {
  DP_EXPECTS(k < count_, "frame index out of range");
  if (!raw_) {
    load_pnm(files_[k], headers_[k], chw);
    return;
  }
  const std::size_t plane = static_cast<std::size_t>(width_) * height_;
  const auto data = read_range(path_, k * plane * channels_, plane * channels_);
  for (std::size_t p = 0; p < plane; ++p) {
    for (int c = 0; c < 3; ++c) chw[c * plane + p] = static_cast<float>(data[p * channels_ + (channels_ == 3 ? c : 0)]) / 255.0f;
  }
}

// ---------------------------------------------------------------- WAV

WavAudio read_wav(const std::string& path) {
  const auto d = read_all(path, std::size_t{2} << 30);
  if (d.size() < 12 || std::memcmp(d.data(), "RIFF", 4) != 0 || std::memcmp(d.data() + 8, "WAVE", 4) != 0) {
    bad(path, "is not a WAV file (no RIFF/WAVE header)");
  }
  WavAudio w;
  int fmt = -1, block = 0;
  const std::uint8_t* samples = nullptr;
  std::size_t sample_bytes = 0;
  std::size_t at = 12;
  while (at + 8 <= d.size()) {
    const std::uint8_t* c = d.data() + at;
    const std::uint32_t size = le32(c + 4);
    const std::size_t body = at + 8;
    const std::size_t left = d.size() - body;
    if (std::memcmp(c, "fmt ", 4) == 0) {
      if (size < 16 || size > left) bad(path, "'fmt ' chunk of " + std::to_string(size) + " bytes is malformed");
      fmt = le16(c + 8);
      w.channels = le16(c + 10);
      w.sample_rate = static_cast<int>(le32(c + 12));
      block = le16(c + 20);
      w.bits = le16(c + 22);
      if (fmt == 0xFFFE) {
        if (size < 40) bad(path, "WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is shorter than 40 bytes");
        fmt = le16(c + 8 + 24);  // the sub-format GUID starts with the format code
      }
    } else if (std::memcmp(c, "data", 4) == 0) {
      samples = c + 8;
      // 0 or 0xFFFFFFFF: a streaming writer that never filled in the size; take the rest.
      if (size == 0xFFFFFFFFu || (size == 0 && left > 0)) {
        sample_bytes = left;
      } else if (size > left) {
        bad(path, "is truncated: its data chunk claims " + std::to_string(size) + " bytes, the file has " + std::to_string(left));
      } else {
        sample_bytes = size;
      }
      break;
    }
    if (size > left) bad(path, "chunk '" + std::string(reinterpret_cast<const char*>(c), 4) + "' runs past the end of the file");
    at = body + size + (size & 1);
  }
  if (fmt < 0) bad(path, "has no 'fmt ' chunk before its data");
  if (!samples) bad(path, "has no 'data' chunk");
  if (fmt == 1) {
    w.format = "pcm";
    if (w.bits != 8 && w.bits != 16 && w.bits != 24 && w.bits != 32) {
      bad(path, "PCM with " + std::to_string(w.bits) + " bits per sample is not read (8, 16, 24, 32 are)");
    }
  } else if (fmt == 3) {
    w.format = "float";
    if (w.bits != 32 && w.bits != 64) bad(path, "float samples of " + std::to_string(w.bits) + " bits are not read (32, 64 are)");
  } else {
    bad(path, "audio format " + std::to_string(fmt) + " is not read: PCM (1) and IEEE float (3) are (convert it, e.g. `ffmpeg -i " +
                  path + " -c:a pcm_s16le out.wav`)");
  }
  if (w.channels < 1 || w.channels > 64) bad(path, "has " + std::to_string(w.channels) + " channels (1..64 are read)");
  if (w.sample_rate < 1 || w.sample_rate > 1'000'000) bad(path, "sample rate " + std::to_string(w.sample_rate) + " is not plausible");
  const int bytes = w.bits / 8;
  if (block != bytes * w.channels) {
    bad(path, "block align " + std::to_string(block) + " does not match " + std::to_string(w.channels) + " channels of " +
                  std::to_string(w.bits) + " bits");
  }
  const std::size_t frames = sample_bytes / static_cast<std::size_t>(block);
  if (frames == 0) bad(path, "has no samples");
  w.mono.resize(frames);
  for (std::size_t i = 0; i < frames; ++i) {
    double sum = 0;
    for (int ch = 0; ch < w.channels; ++ch) {
      const std::uint8_t* s = samples + i * block + ch * bytes;
      double v;
      if (fmt == 3 && bytes == 4) {
        float f;
        std::memcpy(&f, s, 4);
        v = f;
      } else if (fmt == 3) {
        double f;
        std::memcpy(&f, s, 8);
        v = f;
      } else if (bytes == 1) {
        v = (static_cast<int>(s[0]) - 128) / 128.0;
      } else if (bytes == 2) {
        v = static_cast<std::int16_t>(le16(s)) / 32768.0;
      } else if (bytes == 3) {
        std::int32_t x = s[0] | (s[1] << 8) | (s[2] << 16);
        if (x & 0x800000) x -= 0x1000000;
        v = x / 8388608.0;
      } else {
        v = static_cast<std::int32_t>(le32(s)) / 2147483648.0;
      }
      sum += v;
    }
    w.mono[i] = static_cast<float>(sum / w.channels);
  }
  return w;
}

// ---------------------------------------------------------------- text

std::size_t utf8_invalid_at(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned c = p[i];
    std::size_t len;
    std::uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > n) return i;
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = cp << 6 | (p[i + k] & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return i;
    }
    i += len;
  }
  return std::string::npos;
}

std::string utf8_prefix(const std::string& s, std::size_t max_bytes) {
  if (s.size() <= max_bytes) return s;
  std::size_t n = max_bytes;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;  // s[n] starts the first character left out
  return s.substr(0, n);
}

std::vector<std::string> read_text_lines(const std::string& path) {
  const auto d = read_all(path, std::size_t{1} << 30);
  if (d.empty()) bad(path, "is empty: a text source needs at least one line");
  std::vector<std::string> lines;
  std::string cur;
  auto finish = [&] {
    if (!cur.empty() && cur.back() == '\r') cur.pop_back();
    const auto at = utf8_invalid_at(cur);
    if (at != std::string::npos) {
      bad(path, "line " + std::to_string(lines.size() + 1) + ": invalid UTF-8 at byte " + std::to_string(at + 1) + " of the line");
    }
    if (cur.find('\0') != std::string::npos) bad(path, "line " + std::to_string(lines.size() + 1) + " holds a NUL byte");
    lines.push_back(std::move(cur));
    cur.clear();
  };
  for (auto b : d) {
    if (b == '\n') {
      finish();
    } else {
      cur.push_back(static_cast<char>(b));
    }
  }
  if (!cur.empty()) finish();
  return lines;
}

}  // namespace dp::teachers
