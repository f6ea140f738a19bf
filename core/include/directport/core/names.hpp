// Names of domains, nodes and streams, and the OS names derived from them.
// Every name is scoped by (uid, domain) so that users and graphs cannot see each other.
#pragma once

#include <cstdint>
#include <string>

namespace dp {

inline constexpr std::size_t kMaxNameLength = 48;

// Throws ValidationError unless `value` is 1..48 characters of [A-Za-z0-9_-] starting with a
// letter or digit. `what` names the kind of name in the message ("node name", "domain", ...).
void validate_name(const std::string& what, const std::string& value);
bool is_valid_name(const std::string& value) noexcept;

// The domain used when none is given: $DIRECTPORT_DOMAIN, else "default".
std::string default_domain();

// "/dp.<uid>.<domain>.<node>" — the manifest segment.
std::string manifest_segment_name(const std::string& domain, const std::string& node);
// "dp.<uid>.<domain>." — prefix of every manifest of a domain, as listed (no leading '/').
std::string manifest_prefix(const std::string& domain);
// Parses "NODE" or "NODE/STREAM"; throws ValidationError naming `spec` if malformed.
struct StreamAddress {
  std::string node;
  std::string stream;  // empty if only a node was given
};
StreamAddress parse_stream_address(const std::string& spec);

}  // namespace dp
