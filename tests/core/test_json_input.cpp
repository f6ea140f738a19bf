// parse_json_input: JSON from outside the process is refused when nested deeper than
// kMaxJsonDepth, so that no recursive walk (dump, copy, compare) of an accepted document can
// exhaust the stack; syntax errors come back as a discarded value with the parser's message.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "directport/core/error.hpp"
#include "directport/core/json_input.hpp"

namespace dp {
namespace {

std::string arrays(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }
std::string objects(int depth) {
  std::string s;
  for (int i = 0; i < depth; ++i) s += "{\"k\":";
  s += "1";
  return s + std::string(depth, '}');
}

TEST(JsonInput, AcceptsDocumentsUpToTheBound) {
  for (auto& text : {arrays(1), arrays(kMaxJsonDepth), objects(kMaxJsonDepth), std::string("7"), std::string("\"s\"")}) {
    nlohmann::json j;
    EXPECT_NO_THROW(j = parse_json_input(text, "test input")) << text.size();
    EXPECT_FALSE(j.is_discarded());
    EXPECT_EQ(j.dump(), nlohmann::json::parse(text).dump()) << "the same document as an unbounded parse";
  }
}

TEST(JsonInput, RefusesDeeperNestingNamingWhatAndTheBound) {
  // One level too many, and far too many (a recursive dump of this would overflow the stack).
  for (auto& text : {arrays(kMaxJsonDepth + 1), objects(kMaxJsonDepth + 1), arrays(1000000),
                     "{\"a\":1,\"b\":" + arrays(200000) + "}"}) {
    try {
      parse_json_input(text, "test input");
      ADD_FAILURE() << "accepted " << text.size() << " bytes nested too deep";
    } catch (const ValidationError& e) {
      EXPECT_EQ(std::string(e.what()), "test input nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    }
  }
  // Deep and not even valid JSON: still the nesting bound (checked as the parser goes).
  EXPECT_THROW(parse_json_input(std::string(500000, '['), "x"), ValidationError);
}

TEST(JsonInput, SyntaxErrorsAreADiscardedValueWithTheParsersMessage) {
  for (std::string bad : std::vector<std::string>{"", "{", "{\"a\":}", "[1,]", "nul", "\"\\u12\"", std::string("{\"a\":\"\0\"}", 9)}) {
    std::string why;
    auto j = parse_json_input(bad, "x", &why);
    EXPECT_TRUE(j.is_discarded()) << bad;
    EXPECT_NE(why.find("parse error"), std::string::npos) << why;
    EXPECT_TRUE(parse_json_input(bad, "x").is_discarded()) << "no message wanted: still discarded";
  }
  // A number beyond the double range is no JSON we can read, not an exception (found by
  // fuzz_config: tests/fuzz/regressions/json-number-overflow.json).
  for (std::string big : {"{\"op\": 111e308111111}", "1e400", "[-1e999]"}) {
    std::string why;
    nlohmann::json j;
    EXPECT_NO_THROW(j = parse_json_input(big, "x", &why)) << big;
    EXPECT_TRUE(j.is_discarded()) << big;
    EXPECT_NE(why.find("number overflow"), std::string::npos) << why;
  }
}

}  // namespace
}  // namespace dp
