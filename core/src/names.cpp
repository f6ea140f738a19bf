#include "directport/core/names.hpp"

#include <cstdlib>

#include "directport/core/error.hpp"
#include "directport/platform/process.hpp"

namespace dp {

bool is_valid_name(const std::string& v) noexcept {
  if (v.empty() || v.size() > kMaxNameLength) return false;
  auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  };
  if (!alnum(v[0])) return false;
  for (char c : v) {
    if (!alnum(c) && c != '_' && c != '-') return false;
  }
  return true;
}

void validate_name(const std::string& what, const std::string& v) {
  if (is_valid_name(v)) return;
  std::string shown;
  for (char c : v.substr(0, 64)) shown += (c >= 32 && c < 127) ? c : '?';
  throw ValidationError(what + " '" + shown + "' is not allowed: use 1 to " +
                        std::to_string(kMaxNameLength) +
                        " characters from A-Z a-z 0-9 _ -, starting with a letter or digit "
                        "(no '/', '.', spaces or path characters)");
}

std::string default_domain() {
  const char* d = std::getenv("DIRECTPORT_DOMAIN");
  if (d && *d) {
    validate_name("domain (from $DIRECTPORT_DOMAIN)", d);
    return d;
  }
  return "default";
}

std::string manifest_prefix(const std::string& domain) {
  validate_name("domain", domain);
  return "dp." + std::to_string(platform::current_uid()) + "." + domain + ".";
}

std::string manifest_segment_name(const std::string& domain, const std::string& node) {
  validate_name("node name", node);
  return "/" + manifest_prefix(domain) + node;
}

StreamAddress parse_stream_address(const std::string& spec) {
  StreamAddress a;
  auto slash = spec.find('/');
  a.node = spec.substr(0, slash);
  validate_name("node name in '" + spec + "'", a.node);
  if (slash != std::string::npos) {
    a.stream = spec.substr(slash + 1);
    validate_name("stream name in '" + spec + "'", a.stream);
  }
  return a;
}

}  // namespace dp
