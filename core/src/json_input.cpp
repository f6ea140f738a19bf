#include "directport/core/json_input.hpp"

#include "directport/core/error.hpp"

namespace dp {

nlohmann::json parse_json_input(std::string_view text, const std::string& what, std::string* syntax_error) {
  using nlohmann::json;
  bool too_deep = false;
  // Depth of a container's start event: 0 for the outermost. A container past the bound is
  // discarded as it is read (the parser keeps no DOM of it), and the whole document refused.
  json::parser_callback_t bound = [&](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= kMaxJsonDepth) {
      too_deep = true;
      return false;
    }
    return true;
  };
  json doc;
  try {
    doc = json::parse(text.begin(), text.end(), bound, /*allow_exceptions=*/true);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers like 1e400
    if (too_deep) throw ValidationError(what + " nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    if (syntax_error) *syntax_error = e.what();
    return json(json::value_t::discarded);
  }
  if (too_deep) throw ValidationError(what + " nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  return doc;
}

}  // namespace dp
