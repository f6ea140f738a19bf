// The file readers behind the file sources, on files this test writes: PGM/PPM (8 and 16-bit,
// comments), folders of them and raw u8 video, WAV (PCM 8/16/24/32-bit, float, extensible,
// stereo) and UTF-8 text; and broken files of each kind, refused with a message that names the
// file and what is wrong. Then the file-source nodes as processes (FileSourcesMP).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>

#include "directport/core/error.hpp"
#include "directport/teachers/files.hpp"
#include "support/test_support.hpp"
#include "teachers/nodes_test.hpp"

namespace dp::teachers {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/dp_test_files_XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  std::string file(const std::string& name, const std::string& bytes) const {
    const auto p = path_ + "/" + name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }
  std::string dir(const std::string& name) const {
    const auto p = path_ + "/" + name;
    ::mkdir(p.c_str(), 0700);
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The message of the ValidationError `f` throws ("" if none).
std::string refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const ValidationError& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_REFUSED(call, path, part)                                                  \
  do {                                                                                    \
    const std::string m_ = refusal([&] { (void)(call); });                               \
    EXPECT_EQ(m_.rfind(path, 0), 0u) << "message does not start with the path: " << m_; \
    EXPECT_NE(m_.find(part), std::string::npos) << "'" << (part) << "' not in: " << m_;  \
  } while (0)

std::string pnm(const std::string& header, const std::vector<std::uint8_t>& samples) {
  return header + std::string(samples.begin(), samples.end());
}

// ------------------------------------------------------------------ images

TEST(PnmFiles, GrayAndColourEightAndSixteenBit) {
  TempDir d;
  // P5 with a comment, 3x2, maxval 200.
  const auto g = d.file("g.pgm", pnm("P5\n# made by the test\n3 2\n200\n", {0, 50, 100, 150, 200, 250}));
  auto h = read_pnm_header(g);
  EXPECT_EQ(h.width, 3);
  EXPECT_EQ(h.height, 2);
  EXPECT_EQ(h.channels, 1);
  EXPECT_EQ(h.maxval, 200);
  std::vector<float> chw(3 * 6);
  load_pnm(g, h, chw.data());
  const float want[6] = {0, 0.25f, 0.5f, 0.75f, 1, 1};  // 250 > maxval clips
  for (int c = 0; c < 3; ++c) {
    for (int k = 0; k < 6; ++k) EXPECT_FLOAT_EQ(chw[c * 6 + k], want[k]) << c << "," << k;
  }
  // P6, 16-bit big-endian samples, 2x1.
  const auto p = d.file("c.ppm", pnm("P6 2 1 65535 ", {0xFF, 0xFF, 0x00, 0x00, 0x80, 0x00, 0x00, 0x01, 0x40, 0x00, 0xFF, 0xFF}));
  h = read_pnm_header(p);
  EXPECT_EQ(h.channels, 3);
  EXPECT_EQ(h.maxval, 65535);
  std::vector<float> rgb(6);
  load_pnm(p, h, rgb.data());
  EXPECT_FLOAT_EQ(rgb[0], 1.0f);                // R of pixel 0
  EXPECT_FLOAT_EQ(rgb[2], 0.0f);                // G of pixel 0
  EXPECT_FLOAT_EQ(rgb[4], 0x8000 / 65535.0f);   // B of pixel 0
  EXPECT_FLOAT_EQ(rgb[1], 1 / 65535.0f);        // R of pixel 1
  EXPECT_FLOAT_EQ(rgb[3], 0x4000 / 65535.0f);   // G of pixel 1
  EXPECT_FLOAT_EQ(rgb[5], 1.0f);                // B of pixel 1
}

TEST(PnmFiles, BrokenImagesAreRefusedNamingTheFile) {
  TempDir d;
  const std::vector<std::uint8_t> four(4, 7);
  std::string f = d.file("a.pgm", pnm("P5\n2 2\n255\n", {1, 2, 3}));
  EXPECT_REFUSED(read_pnm_header(f), f, "truncated");
  EXPECT_REFUSED(read_pnm_header(f), f, "needs 4 bytes of samples, the file has 3");
  f = d.file("b.pgm", pnm("P3\n2 2\n255\n", four));
  EXPECT_REFUSED(read_pnm_header(f), f, "ASCII");
  f = d.file("c.pgm", "GIF89a....");
  EXPECT_REFUSED(read_pnm_header(f), f, "not a PGM/PPM");
  f = d.file("d.pgm", pnm("P5\n2 2\n", {}));
  EXPECT_REFUSED(read_pnm_header(f), f, "before its maxval");
  f = d.file("e.pgm", pnm("P5\n0 2\n255\n", four));
  EXPECT_REFUSED(read_pnm_header(f), f, "outside 1..16384");
  f = d.file("f.pgm", pnm("P5\n2 2\n70000\n", four));
  EXPECT_REFUSED(read_pnm_header(f), f, "maxval 70000");
  f = d.file("g.pgm", pnm("P5\n2 x\n255\n", four));
  EXPECT_REFUSED(read_pnm_header(f), f, "expected the height");
  f = d.path() + "/missing.pgm";
  EXPECT_REFUSED(read_pnm_header(f), f, "cannot open");
}

// A PPM of w x h whose samples are (seed + index) mod 256.
std::string ppm_of(int w, int h, int seed) {
  std::vector<std::uint8_t> s(3 * w * h);
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<std::uint8_t>((seed + i) % 256);
  return pnm("P6\n" + std::to_string(w) + " " + std::to_string(h) + "\n255\n", s);
}

TEST(ImageSequence, AFolderInNameOrderAndOneSizeOnly) {
  TempDir d;
  const auto dir = d.dir("frames");
  d.file("frames/002.ppm", ppm_of(4, 3, 20));
  d.file("frames/001.ppm", ppm_of(4, 3, 10));
  d.file("frames/003.PPM", ppm_of(4, 3, 30));
  d.file("frames/notes.txt", "not an image");
  ImageSequence seq(dir, 0, 0, 0);
  ASSERT_EQ(seq.count(), 3u);
  EXPECT_EQ(seq.width(), 4);
  EXPECT_EQ(seq.height(), 3);
  std::vector<float> chw(3 * 12);
  for (int k = 0; k < 3; ++k) {
    seq.load(k, chw.data());
    // Sample (pixel p, channel c) was (seed + 3 p + c) mod 256, seed 10, 20, 30 in name order.
    for (int p = 0; p < 12; ++p) {
      for (int c = 0; c < 3; ++c) ASSERT_FLOAT_EQ(chw[c * 12 + p], ((10 * (k + 1) + 3 * p + c) % 256) / 255.0f);
    }
  }
  d.file("frames/004.ppm", ppm_of(5, 3, 0));
  const auto odd = dir + "/004.ppm";
  EXPECT_REFUSED(ImageSequence(dir, 0, 0, 0), odd, "is 5x3 but");
  const auto empty = d.dir("empty");
  EXPECT_REFUSED(ImageSequence(empty, 0, 0, 0), empty, "no .pgm/.ppm/.pnm image");
  EXPECT_REFUSED(ImageSequence(dir, 4, 3, 3), dir, "is a folder");
  const auto txt = d.file("x.txt", "hello");
  EXPECT_REFUSED(ImageSequence(txt, 0, 0, 0), txt, "raw video file give 'width'");
}

TEST(ImageSequence, RawVideoFrames) {
  TempDir d;
  // Three 2x2 RGB frames, interleaved, sample value = frame * 16 + index.
  std::string raw;
  for (int f = 0; f < 3; ++f) {
    for (int i = 0; i < 12; ++i) raw.push_back(static_cast<char>(f * 16 + i));
  }
  const auto path = d.file("clip.rgb", raw);
  ImageSequence seq(path, 2, 2, 3);
  ASSERT_EQ(seq.count(), 3u);
  std::vector<float> chw(12);
  seq.load(2, chw.data());
  for (int p = 0; p < 4; ++p) {
    for (int c = 0; c < 3; ++c) EXPECT_FLOAT_EQ(chw[c * 4 + p], (32 + 3 * p + c) / 255.0f);
  }
  // Gray: the one channel in all three.
  ImageSequence gray(path, 3, 2, 1);  // 36 bytes = 6 frames of 3x2
  ASSERT_EQ(gray.count(), 6u);
  std::vector<float> g(18);
  gray.load(1, g.data());
  for (int c = 0; c < 3; ++c) EXPECT_FLOAT_EQ(g[c * 6 + 0], static_cast<unsigned char>(raw[6]) / 255.0f);
  EXPECT_REFUSED(ImageSequence(path, 5, 5, 3), path, "not a multiple of the frame size 5x5x3 = 75");
  EXPECT_REFUSED(ImageSequence(path, 2, 2, 2), path, "'channels' 1 (gray) or 3");
  const auto empty = d.file("empty.rgb", "");
  EXPECT_REFUSED(ImageSequence(empty, 2, 2, 3), empty, "is empty");
}

// ------------------------------------------------------------------ WAV

void put16(std::string& s, unsigned v) {
  s.push_back(static_cast<char>(v & 0xff));
  s.push_back(static_cast<char>((v >> 8) & 0xff));
}
void put32(std::string& s, std::uint32_t v) {
  put16(s, v & 0xffff);
  put16(s, v >> 16);
}

// A WAV file: format tag, channels, rate, bits and the raw sample bytes; `extensible` wraps the
// format in WAVE_FORMAT_EXTENSIBLE; `data_size` overrides the data chunk's size field.
std::string wav(unsigned fmt, unsigned channels, unsigned rate, unsigned bits, const std::string& data, bool extensible = false,
                long long data_size = -1) {
  std::string f;
  put16(f, extensible ? 0xFFFE : fmt);
  put16(f, channels);
  put32(f, rate);
  put32(f, rate * channels * bits / 8);
  put16(f, channels * bits / 8);
  put16(f, bits);
  if (extensible) {
    put16(f, 22);
    put16(f, bits);
    put32(f, 0);
    put16(f, fmt);
    f += std::string("\x00\x00\x00\x00\x10\x00\x80\x00\x00\xAA\x00\x38\x9B\x71", 14);
  }
  std::string body = "WAVE";
  body += "LIST";
  put32(body, 4);
  body += "INFO";  // a chunk to skip
  body += "fmt ";
  put32(body, static_cast<std::uint32_t>(f.size()));
  body += f;
  body += "data";
  put32(body, data_size >= 0 ? static_cast<std::uint32_t>(data_size) : static_cast<std::uint32_t>(data.size()));
  body += data;
  std::string out = "RIFF";
  put32(out, static_cast<std::uint32_t>(body.size()));
  return out + body;
}

TEST(WavFiles, PcmAndFloatFormatsChannelsAveraged) {
  TempDir d;
  // 16-bit stereo: (16384, -16384) -> 0, (32767, 32767) -> 32767/32768, (-32768, 0) -> -0.5.
  std::string s16;
  for (int v : {16384, -16384, 32767, 32767, -32768, 0}) put16(s16, static_cast<unsigned>(v) & 0xffff);
  auto w = read_wav(d.file("a.wav", wav(1, 2, 16000, 16, s16)));
  EXPECT_EQ(w.sample_rate, 16000);
  EXPECT_EQ(w.channels, 2);
  EXPECT_EQ(w.format, "pcm");
  ASSERT_EQ(w.mono.size(), 3u);
  EXPECT_FLOAT_EQ(w.mono[0], 0.0f);
  EXPECT_FLOAT_EQ(w.mono[1], 32767 / 32768.0f);
  EXPECT_FLOAT_EQ(w.mono[2], -0.5f);
  // float32 mono, as WAVE_FORMAT_EXTENSIBLE.
  std::string f32;
  for (float v : {0.25f, -1.0f, 0.125f}) {
    std::uint32_t u;
    std::memcpy(&u, &v, 4);
    put32(f32, u);
  }
  w = read_wav(d.file("b.wav", wav(3, 1, 48000, 32, f32, true)));
  EXPECT_EQ(w.format, "float");
  EXPECT_EQ(w.sample_rate, 48000);
  EXPECT_EQ(w.mono, (std::vector<float>{0.25f, -1.0f, 0.125f}));
  // 24-bit and 8-bit PCM.
  std::string s24 = std::string("\x00\x00\x40", 3) + std::string("\x00\x00\xC0", 3);  // 0.5, -0.5
  w = read_wav(d.file("c.wav", wav(1, 1, 8000, 24, s24)));
  EXPECT_EQ(w.mono, (std::vector<float>{0.5f, -0.5f}));
  w = read_wav(d.file("e.wav", wav(1, 1, 8000, 8, std::string("\x80\xC0\x00", 3))));
  EXPECT_EQ(w.mono, (std::vector<float>{0.0f, 0.5f, -1.0f}));
  // A streaming writer's unknown data size (0xFFFFFFFF): the rest of the file.
  w = read_wav(d.file("f.wav", wav(1, 1, 8000, 16, s16, false, 0xFFFFFFFFll)));
  EXPECT_EQ(w.mono.size(), 6u);
}

TEST(WavFiles, BrokenFilesAreRefusedNamingTheFile) {
  TempDir d;
  std::string s16(8, '\0');
  auto f = d.file("a.wav", "RIFX....WAVE");
  EXPECT_REFUSED(read_wav(f), f, "not a WAV file");
  f = d.file("b.wav", wav(1, 1, 8000, 16, s16, false, 100));
  EXPECT_REFUSED(read_wav(f), f, "truncated: its data chunk claims 100 bytes, the file has 8");
  f = d.file("c.wav", wav(2, 1, 8000, 4, s16));
  EXPECT_REFUSED(read_wav(f), f, "audio format 2 is not read");
  f = d.file("d.wav", wav(1, 1, 8000, 12, s16));
  EXPECT_REFUSED(read_wav(f), f, "12 bits per sample");
  f = d.file("e.wav", wav(1, 1, 8000, 16, ""));
  EXPECT_REFUSED(read_wav(f), f, "has no samples");
  // No data chunk: cut the file before it.
  const std::string whole = wav(1, 1, 8000, 16, s16);
  f = d.file("g.wav", whole.substr(0, whole.find("data")));
  EXPECT_REFUSED(read_wav(f), f, "no 'data' chunk");
  f = d.path() + "/nope.wav";
  EXPECT_REFUSED(read_wav(f), f, "cannot open");
}

// ------------------------------------------------------------------ text

TEST(TextFiles, LinesOfUtf8) {
  TempDir d;
  auto lines = read_text_lines(d.file("a.txt", "first line\r\nsecond, caf\xc3\xa9\n\nlast without newline"));
  EXPECT_EQ(lines, (std::vector<std::string>{"first line", "second, caf\xc3\xa9", "", "last without newline"}));
  auto f = d.file("b.txt", "ok\nbad \xc3\x28 byte\n");
  EXPECT_REFUSED(read_text_lines(f), f, "line 2: invalid UTF-8 at byte 5");
  f = d.file("c.txt", "");
  EXPECT_REFUSED(read_text_lines(f), f, "is empty");
  f = d.file("e.txt", "overlong \xc0\xaf\n");
  EXPECT_REFUSED(read_text_lines(f), f, "line 1: invalid UTF-8");
  f = d.file("g.txt", std::string("nul\0here", 8));
  EXPECT_REFUSED(read_text_lines(f), f, "NUL byte");
}

TEST(TextFiles, CuttingNeverSplitsACharacter) {
  const std::string s = "ab\xc3\xa9\xe2\x82\xac!";  // a b é € !
  EXPECT_EQ(utf8_prefix(s, 100), s);
  EXPECT_EQ(utf8_prefix(s, 3), "ab");
  EXPECT_EQ(utf8_prefix(s, 4), "ab\xc3\xa9");
  EXPECT_EQ(utf8_prefix(s, 6), "ab\xc3\xa9");
  EXPECT_EQ(utf8_prefix(s, 7), "ab\xc3\xa9\xe2\x82\xac");
  std::mt19937_64 rng(test::test_seed());
  for (int k = 0; k < 200; ++k) {
    std::string t;
    for (int i = 0; i < 20; ++i) t += (rng() % 2) ? "x" : (rng() % 2 ? "\xc3\xa9" : "\xf0\x9f\x98\x80");
    const auto cut = utf8_prefix(t, rng() % t.size());
    EXPECT_EQ(utf8_invalid_at(cut), std::string::npos) << "cut inside a character";
    EXPECT_EQ(t.compare(0, cut.size(), cut), 0);
  }
}

// ------------------------------------------------------------------ the file-source nodes

// The nodes publish the files this test writes, in order, looping or ending; broken files end
// the node with exit 2 naming the file.
class FileSourcesMP : public test::NodesTest {
 protected:
  void SetUp() override {
    NodesTest::SetUp();
    char tmpl[] = "/tmp/dp_test_sources_XXXXXX";
    dir_ = ::mkdtemp(tmpl);
  }
  void TearDown() override {
    std::system(("rm -rf '" + dir_ + "'").c_str());
    NodesTest::TearDown();
  }
  std::string write(const std::string& name, const std::string& bytes) {
    const auto p = dir_ + "/" + name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }
  std::string dir_;
};

TEST_F(FileSourcesMP, ImagesWavAndTextArePublishedInOrderAndLoop) {
  // Three 4x2 gray images, image k's pixels all 40 (k + 1).
  ::mkdir((dir_ + "/img").c_str(), 0700);
  for (int k = 0; k < 3; ++k) write("img/f" + std::to_string(k) + ".pgm", "P5 4 2 255\n" + std::string(8, static_cast<char>(40 * (k + 1))));
  // 250 samples of 16-bit PCM: sample s = 100 s.
  std::string pcm;
  for (int s = 0; s < 250; ++s) {
    const int v = 100 * s;
    pcm.push_back(static_cast<char>(v & 0xff));
    pcm.push_back(static_cast<char>((v >> 8) & 0xff));
  }
  auto le32 = [](std::uint32_t v) { return std::string{char(v), char(v >> 8), char(v >> 16), char(v >> 24)}; };
  const std::string fmt = std::string("\x01\x00\x01\x00", 4) + le32(8000) + le32(16000) + std::string("\x02\x00\x10\x00", 4);
  const std::string wav = "RIFF" + le32(static_cast<std::uint32_t>(36 + pcm.size())) + "WAVEfmt " + le32(16) + fmt + "data" +
                          le32(static_cast<std::uint32_t>(pcm.size())) + pcm;
  write("a.wav", wav);
  write("t.txt", "one\ntwo words\r\nthree: cafe\xc3\xa9\xc3\xa9\xc3\xa9\n");
  const json common{{"rate_hz", 100.0}, {"clock_ids", false}, {"memory", "host"}, {"slots", 8}};
  json pi = common, pw = common, pt = common;
  pi["path"] = dir_ + "/img";
  pw["path"] = dir_ + "/a.wav";
  pw["window"] = 100;
  pt["path"] = dir_ + "/t.txt";
  pt["length"] = 16;
  auto ci = node("image-folder", "images", pi), cw = node("wav-file", "sound", pw), ct = node("text-file", "lines", pt);
  auto si = subscribe("images", "rgb"), sw = subscribe("sound", "audio"), st = subscribe("lines", "caption");
  ASSERT_TRUE(si && sw && st) << ci.output() << cw.output() << ct.output();
  EXPECT_EQ(si->spec().shape, (std::vector<std::int64_t>{3, 2, 4}));
  EXPECT_EQ(sw->spec().shape, (std::vector<std::int64_t>{100}));
  EXPECT_EQ(sw->spec().layout["sample_rate"], 8000);
  EXPECT_EQ(st->spec().shape, (std::vector<std::int64_t>{16}));
  // The last line is 17 bytes: cut to 15, not inside its last character.
  const std::vector<std::string> lines = {"one", "two words", "three: cafe\xc3\xa9\xc3\xa9"};
  for (int k = 0; k < 8; ++k) {
    // Frame n (from 1) is image (n - 1) % 3, window (n - 1) of the looped samples, line (n - 1) % 3.
    auto f = si->next(3s);
    ASSERT_TRUE(f) << ci.output();
    const auto n = f->frame_id;
    for (int e = 0; e < 24; ++e) ASSERT_EQ(static_cast<const float*>(f->data)[e], (40 * ((n - 1) % 3 + 1)) / 255.0f) << "frame " << n;
    si->release(*f);
    auto a = sw->next(3s);
    ASSERT_TRUE(a) << cw.output();
    for (int i = 0; i < 100; ++i) {
      const auto s = ((a->frame_id - 1) * 100 + i) % 250;
      ASSERT_EQ(static_cast<const float*>(a->data)[i], 100.0f * s / 32768.0f) << "frame " << a->frame_id << " sample " << i;
    }
    sw->release(*a);
    auto t = st->next(3s);
    ASSERT_TRUE(t) << ct.output();
    std::string want = lines[(t->frame_id - 1) % 3];
    want.resize(16, '\0');
    EXPECT_EQ(std::string(static_cast<const char*>(t->data), 16), want) << "frame " << t->frame_id;
    st->release(*t);
  }
  EXPECT_EQ(stop(ci), 0) << ci.output();
  EXPECT_EQ(stop(cw), 0) << cw.output();
  EXPECT_EQ(stop(ct), 0) << ct.output();
  EXPECT_NE(ct.output().find("1 of 3 lines are longer than 16 bytes"), std::string::npos) << ct.output();

  // Without loop: the last frame, then exit 0 on its own.
  pt["loop"] = false;
  auto once = node("text-file", "once", pt);
  auto rc = once.wait_for(10s);
  ASSERT_TRUE(rc) << "did not end after the last line";
  EXPECT_EQ(*rc, 0) << once.output();
  auto fin = final_json(once.output());
  EXPECT_EQ(fin["published"], 3) << once.output();
  EXPECT_EQ(fin["ended"], true);
}

TEST_F(FileSourcesMP, BrokenFilesEndTheNodeNamingTheFile) {
  struct Bad {
    std::string type, file, bytes, part;
  };
  const std::vector<Bad> bad = {
      {"image-folder", "short.pgm", "P5 4 4 255\nabc", "is truncated"},
      {"image-folder", "odd.pbm", "P4 4 4\n", "neither a folder nor a .pgm/.ppm/.pnm image"},
      {"wav-file", "x.wav", "ID3 this is an mp3", "not a WAV file"},
      {"text-file", "bad.txt", "fine\nnot \xff fine\n", "line 2: invalid UTF-8"},
      {"text-file", "missing.txt", "", "cannot open"},
  };
  std::vector<platform::Child> procs;
  for (std::size_t i = 0; i < bad.size(); ++i) {
    if (bad[i].file != "missing.txt") write(bad[i].file, bad[i].bytes);
    procs.push_back(node(bad[i].type, "bad" + std::to_string(i), json{{"path", dir_ + "/" + bad[i].file}, {"memory", "host"}}));
  }
  for (std::size_t i = 0; i < bad.size(); ++i) {
    auto rc = procs[i].wait_for(15s);
    ASSERT_TRUE(rc) << bad[i].type << " ran on with " << bad[i].file;
    EXPECT_EQ(*rc, 2) << procs[i].output();
    const auto& out = procs[i].output();
    EXPECT_NE(out.find(dir_ + "/" + bad[i].file + ": "), std::string::npos) << "the file is not named:\n" << out;
    EXPECT_NE(out.find(bad[i].part), std::string::npos) << "'" << bad[i].part << "' not in:\n" << out;
  }
}

}  // namespace
}  // namespace dp::teachers
