// libFuzzer target: bytes a broker receives from a peer, and the "subscribe" exchange.
//
// parse_message() must turn any input into a JSON object with a string "op" or a
// ValidationError. A "subscribe" request then goes through the checks the node's handler makes
// before it touches any state (core/src/node.cpp: "stream" a string and a valid name), and a
// "hello" through the broker's own (core/src/broker.cpp). The same bytes are also read as a
// "subscribed" reply, as Subscriber::connect() does: spec_from_json() must accept only specs a
// subscriber can size its mappings from. Exceptions other than ValidationError and (where the
// broker catches them) nlohmann::json::exception are findings: in the broker thread they would
// terminate the node.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "directport/core/broker.hpp"
#include "directport/core/error.hpp"
#include "directport/core/names.hpp"
#include "directport/core/protocol.hpp"
#include "directport/core/types.hpp"

namespace {

[[noreturn]] void violated(const char* what) {
  std::fprintf(stderr, "invariant violated: %s\n", what);
  __builtin_trap();
}

void subscribe_request(const nlohmann::json& req) {
  try {
    auto stream = req.at("stream").get<std::string>();
    dp::validate_name("stream name", stream);
    if (!dp::is_valid_name(stream)) violated("validate_name accepted an invalid name");
    if (stream.find('/') != std::string::npos || stream.find('.') != std::string::npos) {
      violated("a stream name with path characters passed");
    }
  } catch (const nlohmann::json::exception&) {  // the broker answers these with an error
  } catch (const dp::ValidationError&) {
  }
}

void hello_request(const nlohmann::json& req) {
  try {
    auto client = dp::parse_hello(req);  // what the broker runs on a hello
    if (client.size() > 2 * dp::kMaxNameLength) violated("an over-long client name passed");
  } catch (const dp::ValidationError&) {
  }
}

void subscribed_reply(const nlohmann::json& reply) {
  dp::StreamSpec spec;
  try {
    spec = dp::spec_from_json(reply);
  } catch (const dp::ValidationError&) {
    return;
  }
  const std::size_t bytes = spec.frame_bytes();
  if (bytes == 0 || bytes > (std::size_t(16) << 30))
    violated("accepted spec has 0 < frame_bytes <= 16 GiB");
  if (spec.slots < 2 || spec.slots > dp::protocol::kMaxSlots)
    violated("accepted spec has slots in range");
  if (!dp::is_valid_name(spec.name)) violated("accepted spec has a valid name");
  auto again = dp::spec_from_json(dp::spec_to_json(spec));
  if (dp::spec_to_json(again) != dp::spec_to_json(spec)) violated("spec JSON round trip");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  nlohmann::json msg;
  try {
    msg = dp::parse_message(bytes);
  } catch (const dp::ValidationError&) {
    return 0;
  }
  if (!msg.is_object()) violated("parse_message returned a non-object");
  auto it = msg.find("op");
  if (it == msg.end() || !it->is_string()) violated("parse_message returned no string op");
  const std::string& op = it->get_ref<const std::string&>();
  if (op == "subscribe") subscribe_request(msg);
  if (op == "hello") hello_request(msg);
  subscribed_reply(msg);
  return 0;
}
