// Names of domains, nodes and streams; OS names derived from them; stream addresses.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <vector>

#include "directport/core/error.hpp"
#include "directport/core/names.hpp"

namespace dp {
namespace {

TEST(Names, AcceptsValidNames) {
  for (std::string ok :
       std::vector<std::string>{"a", "Z", "0", "cam0", "teacher_resnet-50", "A-b_C", "9lives",
                                std::string(48, 'x'), "x" + std::string(46, '_') + "-"}) {
    EXPECT_TRUE(is_valid_name(ok)) << ok;
    EXPECT_NO_THROW(validate_name("node name", ok)) << ok;
  }
}

TEST(Names, RejectsInvalidNames) {
  const std::string nul("a\0b", 3);
  for (std::string bad : {std::string(),
                          std::string(49, 'x'),
                          std::string("a/b"),
                          std::string("/"),
                          std::string(".."),
                          std::string("."),
                          std::string("a.b"),
                          std::string("../etc"),
                          std::string("a b"),
                          std::string(" a"),
                          std::string("a "),
                          std::string("-a"),
                          std::string("_a"),
                          nul,
                          std::string("\xc3\xa9t\xc3\xa9"),
                          std::string("caf\xc3\xa9"),
                          std::string("a\tb"),
                          std::string("a\nb"),
                          std::string("a*"),
                          std::string("a:b"),
                          std::string("a\\b"),
                          std::string("\x7f")}) {
    EXPECT_FALSE(is_valid_name(bad)) << bad;
    EXPECT_THROW(validate_name("node name", bad), ValidationError) << bad;
  }
}

TEST(Names, MessageNamesTheKindAndTheValueSafely) {
  try {
    validate_name("stream name", std::string("bad\x01name/\xff", 11));
    FAIL();
  } catch (const ValidationError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("stream name"), std::string::npos) << m;
    EXPECT_NE(m.find("bad?name/?"), std::string::npos) << "non-printables are masked: " << m;
    EXPECT_NE(m.find("48"), std::string::npos) << "says the bound: " << m;
  }
  try {
    validate_name("domain", std::string(5000, 'y') + "/");
    FAIL();
  } catch (const ValidationError& e) {
    EXPECT_LT(std::string(e.what()).size(), 1000u)
        << "a huge bad name must not make a huge message";
  }
}

TEST(Names, SegmentNames) {
  std::string uid = std::to_string(::getuid());
  EXPECT_EQ(manifest_prefix("default"), "dp." + uid + ".default.");
  EXPECT_EQ(manifest_segment_name("lab", "cam0"), "/dp." + uid + ".lab.cam0");
  EXPECT_THROW(manifest_segment_name("lab", "../cam"), ValidationError);
  EXPECT_THROW(manifest_segment_name("a.b", "cam"), ValidationError);
  EXPECT_THROW(manifest_prefix(""), ValidationError);
}

TEST(Names, DefaultDomainFromEnvironment) {
  const char* saved = std::getenv("DIRECTPORT_DOMAIN");
  std::string keep = saved ? saved : "";
  ::unsetenv("DIRECTPORT_DOMAIN");
  EXPECT_EQ(default_domain(), "default");
  ::setenv("DIRECTPORT_DOMAIN", "", 1);
  EXPECT_EQ(default_domain(), "default");
  ::setenv("DIRECTPORT_DOMAIN", "lab-2", 1);
  EXPECT_EQ(default_domain(), "lab-2");
  ::setenv("DIRECTPORT_DOMAIN", "../x", 1);
  EXPECT_THROW(default_domain(), ValidationError);
  if (saved) {
    ::setenv("DIRECTPORT_DOMAIN", keep.c_str(), 1);
  } else {
    ::unsetenv("DIRECTPORT_DOMAIN");
  }
}

TEST(Names, ParseStreamAddress) {
  auto a = parse_stream_address("cam0");
  EXPECT_EQ(a.node, "cam0");
  EXPECT_EQ(a.stream, "");
  a = parse_stream_address("cam0/rgb");
  EXPECT_EQ(a.node, "cam0");
  EXPECT_EQ(a.stream, "rgb");
  for (std::string bad : {"", "/", "/rgb", "cam0/", "cam0/rgb/x", "cam0//rgb", "ca m/rgb",
                          "cam0/r.gb", "../cam/rgb", "cam0/.."}) {
    try {
      parse_stream_address(bad);
      FAIL() << "accepted '" << bad << "'";
    } catch (const ValidationError& e) {
      EXPECT_NE(std::string(e.what()).find("'" + bad + "'"), std::string::npos)
          << "the message quotes the address: " << e.what();
    }
  }
}

}  // namespace
}  // namespace dp
