// JSON that comes from outside the process (another process's manifest, a peer's broker message,
// a config file, a command line) is parsed with a bound on its nesting; each caller bounds its
// size. nlohmann::json parses and destroys iteratively, but dump(), copies and comparisons
// recurse: a document nested 100 000 levels deep, accepted, would overflow the stack of whoever
// prints or copies it (`directport launch --check` of a config whose "restart" was such a value
// died with SIGSEGV while writing the error message; `inspect` of such a manifest likewise).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace dp {

// Containers nested deeper than this are refused (the outermost object is level 1).
inline constexpr int kMaxJsonDepth = 64;

// Parses `text`. Not JSON (a number out of the double range included): returns a discarded
// value (is_discarded()) and, if `syntax_error` is given, the parser's message there; never
// throws nlohmann's exceptions. Nested deeper than kMaxJsonDepth: throws ValidationError
// "<what> nests deeper than 64 levels".
nlohmann::json parse_json_input(std::string_view text, const std::string& what,
                                std::string* syntax_error = nullptr);

}  // namespace dp
