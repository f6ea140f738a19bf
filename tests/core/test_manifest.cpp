// The manifest: writer/reader round trip, the seqlock under concurrent rewrites, and validation
// of every kind of malformed image and JSON document.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>
#include <type_traits>

#include "directport/core/error.hpp"
#include "directport/core/manifest.hpp"
#include "directport/core/names.hpp"
#include "directport/core/types.hpp"
#include "support/fixtures.hpp"

namespace dp {
namespace {

using namespace std::chrono_literals;
using protocol::ManifestHeader;

// A stream entry as Publisher::describe() writes it for the host backend.
nlohmann::json stream_entry(const std::string& name, std::uint32_t control_index,
                            std::vector<std::int64_t> shape = {48, 64, 3}) {
  StreamSpec s;
  s.name = name;
  s.shape = std::move(shape);
  auto j = spec_to_json(s);
  j["control_index"] = control_index;
  j["slot_stride"] = (s.frame_bytes() + 255) / 256 * 256;
  j["memory_handle"] = "posix-fd";
  j["fence_handle"] = "posix-fd";
  j["sealed"] = true;
  j["memory_bytes"] = j["slot_stride"].get<std::uint64_t>() * s.slots;
  return j;
}

nlohmann::json node_doc(const std::string& node, int streams = 1) {
  nlohmann::json doc = {
      {"abi", protocol::kAbiVersion}, {"name", node},       {"type", "camera"},
      {"version", "0.1.0"},           {"broker", "dp.x.y"}, {"streams", nlohmann::json::array()},
      {"info", {{"lens", "50mm"}}}};
  for (int i = 0; i < streams; ++i)
    doc["streams"].push_back(stream_entry("s" + std::to_string(i), i));
  return doc;
}

std::string dumped(const nlohmann::json& j) { return j.dump(); }

class Manifest : public test::DomainTest {};

TEST_F(Manifest, WriteReadRoundTrip) {
  auto doc = node_doc("cam0", 2);
  {
    auto w = ManifestWriter::create(domain_, "cam0");
    EXPECT_EQ(w.segment_name(), manifest_segment_name(domain_, "cam0"));
    w.set_json(doc);
    EXPECT_EQ(w.json(), doc);

    auto r = ManifestReader::open(domain_, "cam0");
    const auto& h = r.header();
    EXPECT_EQ(std::memcmp(h.magic, protocol::kManifestMagic, 8), 0);
    EXPECT_EQ(h.abi_version, protocol::kAbiVersion);
    EXPECT_EQ(h.header_size, sizeof(ManifestHeader));
    EXPECT_EQ(h.total_size, r.segment().size());
    EXPECT_EQ(h.uid, ::getuid());
    EXPECT_EQ(r.owner(), platform::self_identity());
    EXPECT_EQ(r.segment().access(), platform::Access::read_only);
    EXPECT_EQ(r.json(), doc);
    EXPECT_EQ(r.state(), protocol::NodeState::starting);
    EXPECT_EQ(r.liveness(), Liveness::live);

    w.set_state(protocol::NodeState::running);
    EXPECT_EQ(r.state(), protocol::NodeState::running);

    // A rewrite is seen by the existing reader.
    doc["info"]["lens"] = "85mm";
    doc["streams"].erase(1);
    w.set_json(doc);
    EXPECT_EQ(r.json(), doc);

    // Control blocks written by the owner are what the reader sees.
    ASSERT_EQ(w.control_capacity(), ManifestOptions{}.control_capacity);
    w.control(1).latest_seq.store(0x1234567890abcdefull);
    w.control(1).slots[3].checksum.store(42);
    EXPECT_EQ(r.control(1).latest_seq.load(), 0x1234567890abcdefull);
    EXPECT_EQ(r.control(1).slots[3].checksum.load(), 42u);
    EXPECT_THROW(w.control(w.control_capacity()), PreconditionError);
    EXPECT_THROW(r.control(w.control_capacity()), ValidationError);
  }
  // The writer withdraws the manifest.
  EXPECT_THROW(ManifestReader::open(domain_, "cam0"), Error);
}

TEST_F(Manifest, HeartbeatAndLiveness) {
  auto w = ManifestWriter::create(domain_, "hb");
  w.set_json(node_doc("hb"));
  auto r = ManifestReader::open(domain_, "hb");
  std::uint64_t before = r.header().heartbeat_ns.load();
  std::this_thread::sleep_for(2ms);
  EXPECT_GT(r.heartbeat_age_ns(), 1000000);
  EXPECT_EQ(r.liveness(1ms), Liveness::stuck) << "alive but its heartbeat is older than the bound";
  EXPECT_EQ(r.liveness(10s), Liveness::live);
  w.heartbeat();
  EXPECT_GT(r.header().heartbeat_ns.load(), before);
  EXPECT_LT(r.heartbeat_age_ns(), 1000000000);
}

TEST_F(Manifest, MissingNodeIsAnErrorNamingIt) {
  try {
    ManifestReader::open(domain_, "ghost");
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("'ghost'"), std::string::npos) << m;
    EXPECT_NE(m.find(domain_), std::string::npos) << m;
  }
}

// A node publishes its header, then sets up its broker, then writes its JSON: a reader in
// between must retry (NotReadyError), not give up as on a malformed manifest.
TEST_F(Manifest, JsonNotWrittenYetIsNotReadyNotMalformed) {
  auto w = ManifestWriter::create(domain_, "early");
  auto r = ManifestReader::open(domain_, "early");
  try {
    r.json();
    FAIL();
  } catch (const NotReadyError& e) {
    EXPECT_NE(std::string(e.what()).find("not written yet"), std::string::npos) << e.what();
  }
}

TEST_F(Manifest, JsonOverCapacityIsRefusedAndTheOldOneStays) {
  ManifestOptions o;
  o.json_capacity = 600;
  auto w = ManifestWriter::create(domain_, "small", o);
  auto doc = node_doc("small");
  w.set_json(doc);
  auto big = doc;
  big["info"]["blob"] = std::string(700, 'x');
  try {
    w.set_json(big);
    FAIL();
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find("600"), std::string::npos) << e.what();
  }
  EXPECT_EQ(w.json(), doc);
  EXPECT_EQ(ManifestReader::open(domain_, "small").json(), doc);
}

TEST_F(Manifest, CreateOptionsAreChecked) {
  ManifestOptions o;
  o.json_capacity = 0;
  EXPECT_THROW(ManifestWriter::create(domain_, "x", o), PreconditionError);
  o.json_capacity = protocol::kMaxJsonBytes + 1;
  EXPECT_THROW(ManifestWriter::create(domain_, "x", o), PreconditionError);
  o = {};
  o.control_capacity = protocol::kMaxStreams + 1;
  EXPECT_THROW(ManifestWriter::create(domain_, "x", o), PreconditionError);
  EXPECT_THROW(ManifestWriter::create(domain_, "bad/name"), ValidationError);
  EXPECT_THROW(ManifestWriter::create("bad.domain", "x"), ValidationError);
}

TEST_F(Manifest, SecondWriterOfALiveNameIsRefusedNamingThePid) {
  auto w = ManifestWriter::create(domain_, "dup");
  w.set_json(node_doc("dup"));
  try {
    ManifestWriter::create(domain_, "dup");
    FAIL() << "two writers for one node name";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("pid " + std::to_string(::getpid())), std::string::npos) << m;
    EXPECT_NE(m.find("'dup'"), std::string::npos) << m;
  }
  EXPECT_EQ(ManifestReader::open(domain_, "dup").json(), node_doc("dup"))
      << "the first is untouched";
}

TEST_F(Manifest, CreateReplacesUnlockedLitter) {
  // A segment under the name that nobody holds the lock of is a dead node's litter.
  auto name = manifest_segment_name(domain_, "again");
  {
    auto litter = platform::Segment::create_named(name, 333);
    std::memset(litter.data(), 0xa5, 333);
    litter.disown_name();
  }
  auto w = ManifestWriter::create(domain_, "again");
  w.set_json(node_doc("again"));
  EXPECT_EQ(ManifestReader::open(domain_, "again").json(), node_doc("again"));
}

// The seqlock: a reader never sees a half-written document while the owner rewrites it.
TEST_F(Manifest, ReaderNeverSeesATornDocumentDuringRewrites) {
  ManifestOptions o;
  o.json_capacity = 16 * 1024;
  auto w = ManifestWriter::create(domain_, "busy", o);
  auto make = [](std::uint64_t n) {
    auto d = node_doc("busy", 1 + static_cast<int>(n % 3));
    // Sizes and contents differ from one version to the next, so that a mix of two versions
    // is either invalid JSON or fails the consistency check below.
    d["info"] = {{"n", n},
                 {"pad", std::string(1 + (n * 7919) % 8000, static_cast<char>('a' + n % 26))}};
    return d;
  };
  w.set_json(make(0));
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> writes{0};
  std::thread writer([&] {
    for (std::uint64_t n = 1; !stop.load(std::memory_order_relaxed); ++n) {
      w.set_json(make(n));
      writes.store(n, std::memory_order_relaxed);
    }
  });
  auto r = ManifestReader::open(domain_, "busy");
  std::uint64_t reads = 0, torn = 0, busy = 0, last_n = 0, went_back = 0;
  std::string first_problem;
  const auto deadline = std::chrono::steady_clock::now() + 700ms;
  while (std::chrono::steady_clock::now() < deadline || reads < 50) {
    try {
      auto d = r.json();
      ++reads;
      auto n = d["info"]["n"].get<std::uint64_t>();
      if (d != make(n)) {
        ++torn;
        if (first_problem.empty()) first_problem = "inconsistent version " + std::to_string(n);
      }
      if (n < last_n) ++went_back;
      last_n = n;
    } catch (const TimeoutError&) {
      ++busy;  // allowed: the writer kept it busy for the reader's whole retry budget
    } catch (const std::exception& e) {
      ++torn;
      if (first_problem.empty()) first_problem = e.what();
    }
    if (reads > 200000) break;
  }
  stop = true;
  writer.join();
  EXPECT_EQ(torn, 0u) << first_problem;
  EXPECT_EQ(went_back, 0u) << "a reader saw an older version after a newer one";
  EXPECT_GT(reads, 10u) << "reads succeeded only " << reads << " times (" << busy << " timeouts)";
  EXPECT_GT(writes.load(), 10u);
  EXPECT_GT(last_n, 0u);
}

// ------------------------------------------------------------------ header validation

// A valid manifest image in ordinary (8-aligned) memory, to be broken in each test.
class ManifestImage : public test::DomainTest {
 protected:
  void SetUp() override {
    DomainTest::SetUp();
    auto w = ManifestWriter::create(domain_, "img");
    w.set_json(node_doc("img", 2));
    auto r = ManifestReader::open(domain_, "img");
    size_ = r.segment().size();
    words_.resize((size_ + 7) / 8);
    std::memcpy(words_.data(), r.segment().data(), size_);
    orig_ = words_;
    ASSERT_NO_THROW(validate_manifest_header(data(), size_));
  }
  void reset() { words_ = orig_; }
  void* data() { return words_.data(); }
  ManifestHeader& h() { return *reinterpret_cast<ManifestHeader*>(words_.data()); }
  void expect_invalid(const std::string& needle, std::size_t size = 0) {
    try {
      validate_manifest_header(data(), size ? size : size_);
      FAIL() << "accepted; expected an error containing '" << needle << "'";
    } catch (const ValidationError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
  std::vector<std::uint64_t> words_, orig_;
  std::size_t size_ = 0;
};

TEST_F(ManifestImage, Truncated) {
  for (std::size_t n : {std::size_t(1), std::size_t(8), sizeof(ManifestHeader) - 1}) {
    expect_invalid("truncated", n);
  }
  // Empty: a segment its node has created but not sized yet.
  EXPECT_THROW(validate_manifest_header(data(), 0), NotReadyError);
  EXPECT_THROW(validate_manifest_header(nullptr, 0), NotReadyError);
  // Header present, rest cut off: the size no longer matches.
  expect_invalid("bytes but the segment has", sizeof(ManifestHeader));
  expect_invalid("bytes but the segment has", size_ - 1);
}

TEST_F(ManifestImage, WrongMagic) {
  h().magic[7] = '2';
  expect_invalid("bad magic");
  std::memset(h().magic, 0xff, 8);
  expect_invalid("bad magic");
}

// The magic is written last (a release store): a header without it is one being created, which
// a reader must retry rather than refuse (a subscriber that met one during a graph's start-up
// used to exit with "manifest has no owner pid").
TEST_F(ManifestImage, ZeroMagicIsBeingCreatedNotMalformed) {
  std::memset(h().magic, 0, 8);
  h().pid = 0;
  try {
    validate_manifest_header(data(), size_);
    FAIL() << "accepted a header whose magic is not published";
  } catch (const NotReadyError& e) {
    EXPECT_NE(std::string(e.what()).find("being created"), std::string::npos) << e.what();
  }
  EXPECT_FALSE((std::is_base_of_v<ValidationError, NotReadyError>)) << "callers rethrow ValidationError as fatal";
}

TEST_F(ManifestImage, WrongAbiVersionNamesBothVersions) {
  h().abi_version = protocol::kAbiVersion + 6;
  try {
    validate_manifest_header(data(), size_);
    FAIL();
  } catch (const ValidationError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("version " + std::to_string(protocol::kAbiVersion + 6)), std::string::npos)
        << m;
    EXPECT_NE(m.find("version " + std::to_string(protocol::kAbiVersion)), std::string::npos) << m;
  }
  h().abi_version = 0;
  expect_invalid("version 0");
}

TEST_F(ManifestImage, HeaderSizeAndTotalSize) {
  h().header_size += 8;
  expect_invalid("header_size");
  reset();
  h().total_size += 64;
  expect_invalid("bytes but the segment has");
  reset();
  h().total_size = 0;
  expect_invalid("bytes but the segment has");
}

TEST_F(ManifestImage, JsonPartOutsideTheSegment) {
  const auto orig = h().json_offset;
  for (std::uint64_t off : {std::uint64_t(0), std::uint64_t(sizeof(ManifestHeader) - 8),
                            std::uint64_t(size_), std::uint64_t(size_ - h().json_capacity + 1),
                            ~std::uint64_t(0), ~std::uint64_t(0) - h().json_capacity + 2}) {
    h().json_offset = off;
    expect_invalid("JSON part lies outside");
  }
  h().json_offset = orig;
  h().json_capacity = size_;
  expect_invalid("JSON part lies outside");
  h().json_capacity = 0;
  expect_invalid("JSON capacity");
  h().json_capacity = protocol::kMaxJsonBytes + 1;
  expect_invalid("JSON capacity");
}

TEST_F(ManifestImage, ControlBlocksOutsideTheSegment) {
  h().control_offset = size_ + 64;
  expect_invalid("outside the segment");
  reset();
  h().control_offset = ~std::uint64_t(0) & ~std::uint64_t(63);
  expect_invalid("outside the segment");
  reset();
  h().control_capacity += 1;
  expect_invalid("outside the segment");
  reset();
  h().control_offset = 8;  // inside the header
  expect_invalid("outside");
  reset();
  h().control_offset += 4;
  expect_invalid("misaligned");
  reset();
  h().control_stride += 64;
  expect_invalid("control block size");
  reset();
  h().control_capacity = protocol::kMaxStreams + 1;
  expect_invalid("too many streams");
}

TEST_F(ManifestImage, OverlappingParts) {
  h().control_offset = h().json_offset;
  h().json_capacity = 64;
  expect_invalid("overlap");
  reset();
  // The JSON part reaching into the first control block.
  h().json_capacity = h().control_offset - h().json_offset + 8;
  expect_invalid("overlap");
  reset();
  // With no control blocks there is nothing to overlap.
  h().control_capacity = 0;
  h().control_offset = h().json_offset;
  EXPECT_NO_THROW(validate_manifest_header(data(), size_));
}

TEST_F(ManifestImage, JsonSizeOverCapacity) {
  h().json_size.store(h().json_capacity + 1);
  expect_invalid("JSON size exceeds");
  h().json_size.store(~std::uint64_t(0));
  expect_invalid("JSON size exceeds");
}

TEST_F(ManifestImage, NoOwnerPid) {
  h().pid = 0;
  expect_invalid("pid");
  h().pid = -7;
  expect_invalid("pid");
}

TEST_F(ManifestImage, RandomCorruptionNeverCrashes) {
  std::mt19937_64 rng(test::test_seed());
  int accepted = 0;
  for (int round = 0; round < 3000; ++round) {
    reset();
    auto* bytes = reinterpret_cast<unsigned char*>(words_.data());
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < flips; ++i)
      bytes[rng() % sizeof(ManifestHeader)] = static_cast<unsigned char>(rng());
    try {
      validate_manifest_header(data(), size_);
      ++accepted;  // e.g. a change to the heartbeat: still a valid header
      // When it passes, the JSON range must be inside the image.
      ASSERT_LE(h().json_offset + h().json_size.load(), size_);
    } catch (const ValidationError&) {
    }
  }
  EXPECT_GT(accepted, 0);
}

// ------------------------------------------------------------------ JSON validation

void expect_bad_json(const std::string& text, const std::string& needle, std::uint32_t cap = 4) {
  try {
    parse_manifest_json(text.data(), text.size(), cap);
    FAIL() << "accepted: " << text.substr(0, 200);
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(ManifestJson, ValidDocumentParses) {
  auto doc = node_doc("n1", 3);
  auto text = dumped(doc);
  EXPECT_EQ(parse_manifest_json(text.data(), text.size(), 3), doc);
  // The JSON part is not NUL-terminated: only `size` bytes count.
  std::string padded = text + "garbage";
  EXPECT_EQ(parse_manifest_json(padded.data(), text.size(), 3), doc);
}

TEST(ManifestJson, InvalidJson) {
  expect_bad_json("", "does not parse");
  expect_bad_json("{", "does not parse");
  expect_bad_json("{\"name\": \"a\",}", "does not parse");
  expect_bad_json(std::string("{\"name\":\"a\0\"}", 13), "does not parse");
  expect_bad_json("\xff\xfe{}", "does not parse");
  auto t = dumped(node_doc("n"));
  expect_bad_json(t.substr(0, t.size() - 1), "does not parse");
  expect_bad_json(t + "{}", "does not parse");
}

TEST(ManifestJson, NotAnObject) {
  for (const char* t : {"[]", "42", "\"name\"", "null", "true", "[{\"name\":\"a\"}]"}) {
    expect_bad_json(t, "must be an object");
  }
}

TEST(ManifestJson, MissingKeys) {
  for (const char* key : {"name", "type", "broker", "streams"}) {
    auto d = node_doc("n");
    d.erase(key);
    expect_bad_json(dumped(d), std::string("missing '") + key + "'");
  }
  for (const char* key : {"control_index", "slot_stride", "memory_handle", "fence_handle"}) {
    auto d = node_doc("n");
    d["streams"][0].erase(key);
    expect_bad_json(dumped(d), std::string("streams[0].") + key);
  }
  for (const char* key : {"name", "dtype", "shape", "slots", "memory", "fence"}) {
    auto d = node_doc("n");
    d["streams"][0].erase(key);
    expect_bad_json(dumped(d), key);
  }
}

TEST(ManifestJson, WrongTypes) {
  auto with = [](const char* key, nlohmann::json v) {
    auto d = node_doc("n");
    d[key] = std::move(v);
    return dumped(d);
  };
  expect_bad_json(with("name", 5), "'name' has the wrong type");
  expect_bad_json(with("type", nlohmann::json::array()), "'type' has the wrong type");
  expect_bad_json(with("broker", nullptr), "'broker' has the wrong type");
  expect_bad_json(with("streams", nlohmann::json::object()), "'streams' has the wrong type");
  expect_bad_json(with("streams", {1, 2}), "must be an object");
  auto stream_with = [](const char* key, nlohmann::json v) {
    auto d = node_doc("n");
    d["streams"][0][key] = std::move(v);
    return dumped(d);
  };
  expect_bad_json(stream_with("control_index", "0"), "control_index' has the wrong type");
  expect_bad_json(stream_with("control_index", -1), "control_index' has the wrong type");
  expect_bad_json(stream_with("control_index", 0.5), "control_index' has the wrong type");
  expect_bad_json(stream_with("slot_stride", -256), "slot_stride' has the wrong type");
  expect_bad_json(stream_with("slot_stride", 8), "slot_stride' smaller than a frame");
  expect_bad_json(stream_with("memory_handle", 3), "memory_handle' has the wrong type");
  expect_bad_json(stream_with("shape", "48x64"), "wrong type");
  expect_bad_json(stream_with("slots", 1), "slots");
  expect_bad_json(stream_with("memory", "gpu"), "memory kind");
}

TEST(ManifestJson, BadNames) {
  for (const char* bad : {"../etc", "a/b", "..", "", "x y", "/dev/shm/x"}) {
    auto d = node_doc("n");
    d["streams"][0]["name"] = bad;
    expect_bad_json(dumped(d), "stream name");
    d = node_doc("n");
    d["name"] = bad;
    expect_bad_json(dumped(d), "node name");
  }
}

TEST(ManifestJson, ControlIndices) {
  auto d = node_doc("n", 2);
  d["streams"][1]["control_index"] = 4;
  expect_bad_json(dumped(d), "out of range or repeated", 4);
  d["streams"][1]["control_index"] = 1ull << 40;
  expect_bad_json(dumped(d), "out of range or repeated", 4);
  d["streams"][1]["control_index"] = 0;
  expect_bad_json(dumped(d), "out of range or repeated", 4);
  d["streams"][1]["control_index"] = 3;
  auto t = dumped(d);
  EXPECT_NO_THROW(parse_manifest_json(t.data(), t.size(), 4));
  // More streams than control blocks.
  expect_bad_json(dumped(node_doc("n", 3)), "more streams than control blocks", 2);
  expect_bad_json(dumped(node_doc("n", 1)), "more streams than control blocks", 0);
}

TEST(ManifestJson, Oversized) {
  auto d = node_doc("n");
  d["info"]["blob"] = std::string(protocol::kMaxJsonBytes, 'z');
  auto t = dumped(d);
  ASSERT_GT(t.size(), protocol::kMaxJsonBytes);
  expect_bad_json(t, "larger than 1 MiB");
}

TEST(ManifestJson, DeepNestingNeitherCrashesNorPasses) {
  // 400 000 levels of nesting: a recursive parser, validator or destructor would overflow the
  // stack, and so would any tool that prints or copies the document (inspect, ls --json). The
  // whole document, or only its "info", is refused with the bound.
  const std::size_t depth = 400000;
  std::string arrays = std::string(depth, '[') + std::string(depth, ']');
  expect_bad_json(arrays, "manifest JSON nests deeper than 64 levels");
  auto d = node_doc("n");
  d["info"] = nullptr;
  std::string t = dumped(d);
  auto at = t.find("\"info\":null");
  ASSERT_NE(at, std::string::npos);
  std::string deep = t;
  deep.replace(at, 11, "\"info\":" + arrays);
  ASSERT_LT(deep.size(), protocol::kMaxJsonBytes);
  expect_bad_json(deep, "manifest JSON nests deeper than 64 levels");
  // Ordinary structured info (well below the bound) is still data.
  std::string fine = t;
  fine.replace(at, 11, "\"info\":" + std::string(20, '[') + std::string(20, ']'));
  EXPECT_NO_THROW(parse_manifest_json(fine.data(), fine.size(), 4));
}

// ------------------------------------------------------------------ hand-made segments

class ManifestSegment : public test::DomainTest {
 protected:
  // Creates the manifest name by hand with `bytes` (and no lock: like a dead owner's).
  void make(const std::string& node, const std::string& bytes) {
    auto name = manifest_segment_name(domain_, node);
    made_.push_back(name);
    if (bytes.empty()) {
      int fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
      ASSERT_GE(fd, 0);
      ::close(fd);
      return;
    }
    auto s = platform::Segment::create_named(name, bytes.size());
    std::memcpy(s.data(), bytes.data(), bytes.size());
    s.disown_name();
  }
  void TearDown() override {
    for (auto& n : made_) platform::Segment::unlink(n);
    DomainTest::TearDown();
  }
  std::vector<std::string> made_;
  void expect_open_fails(const std::string& node, const std::string& needle) {
    try {
      ManifestReader::open(domain_, node);
      FAIL() << "opened a malformed manifest";
    } catch (const ValidationError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
  std::string random_bytes(std::size_t n) {
    std::mt19937_64 rng(test::test_seed() ^ n);
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng() | 1);
    return s;
  }
};

TEST_F(ManifestSegment, EmptySegmentIsOneBeingCreated) {
  make("empty", "");
  EXPECT_THROW(ManifestReader::open(domain_, "empty"), NotReadyError);
}

TEST_F(ManifestSegment, ZeroedSegmentIsOneBeingCreated) {
  make("zeroed", std::string(64 * 1024, '\0'));
  EXPECT_THROW(ManifestReader::open(domain_, "zeroed"), NotReadyError);
}

TEST_F(ManifestSegment, TruncatedSegment) {
  make("short", random_bytes(100));
  expect_open_fails("short", "truncated");
}

TEST_F(ManifestSegment, GarbageSegment) {
  make("garbage", random_bytes(64 * 1024));
  expect_open_fails("garbage", "bad magic");
}

TEST_F(ManifestSegment, ValidHeaderWithGarbageJson) {
  std::string image;
  {
    // Build a correct image, then overwrite the JSON bytes.
    auto w = ManifestWriter::create(domain_, "src");
    w.set_json(node_doc("src"));
    auto r = ManifestReader::open(domain_, "src");
    image.assign(static_cast<const char*>(r.segment().data()), r.segment().size());
  }
  auto* h = reinterpret_cast<ManifestHeader*>(image.data());
  std::string junk = random_bytes(h->json_size.load());
  std::memcpy(image.data() + h->json_offset, junk.data(), junk.size());
  make("badjson", image);
  auto r = ManifestReader::open(domain_, "badjson");  // the header is fine
  EXPECT_THROW(r.json(), ValidationError);
}

TEST_F(ManifestSegment, HeaderFromAnotherAbi) {
  std::string image;
  {
    auto w = ManifestWriter::create(domain_, "src");
    w.set_json(node_doc("src"));
    auto r = ManifestReader::open(domain_, "src");
    image.assign(static_cast<const char*>(r.segment().data()), r.segment().size());
  }
  reinterpret_cast<ManifestHeader*>(image.data())->abi_version = 99;
  make("future", image);
  expect_open_fails("future", "version 99");
}

TEST_F(Manifest, JsonWithAnotherAbiIsRefused) {
  auto doc = node_doc("cam0");
  doc["abi"] = protocol::kAbiVersion + 1;
  try {
    validate_manifest_json(doc, 16);
    FAIL() << "accepted abi " << doc["abi"];
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find("'abi'"), std::string::npos) << e.what();
  }
  doc["abi"] = "1";
  EXPECT_THROW(validate_manifest_json(doc, 16), ValidationError);
}

TEST_F(Manifest, HeaderNamingAnotherUidIsRefused) {
  auto w = ManifestWriter::create(domain_, "cam0");
  w.set_json(node_doc("cam0"));
  auto rw = platform::Segment::open_named(w.segment_name(), platform::Access::read_write);
  static_cast<ManifestHeader*>(rw.data())->uid = ::getuid() + 1;
  try {
    ManifestReader::open(domain_, "cam0");
    FAIL() << "a manifest naming another uid was trusted";
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find("not ours"), std::string::npos) << e.what();
  }
}

TEST_F(Manifest, SegmentOwnedByAnotherUserIsRefusedAndNotRemoved) {
  if (::getuid() != 0) GTEST_SKIP() << "needs root to give a segment to another uid";
  auto w = ManifestWriter::create(domain_, "squat");
  w.set_json(node_doc("squat"));
  auto rw = platform::Segment::open_named(w.segment_name(), platform::Access::read_write);
  ASSERT_EQ(::fchown(rw.fd().get(), 4242, 4242), 0);
  try {
    ManifestReader::open(domain_, "squat");
    FAIL() << "a manifest owned by uid 4242 was trusted";
  } catch (const ValidationError& e) {
    EXPECT_NE(std::string(e.what()).find("uid 4242"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dp
