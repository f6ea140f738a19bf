// libFuzzer target: manifest images as a reader finds them in shared memory.
//
// Input: byte 0 selects the mode.
//   even: the rest is a whole manifest image, fed to validate_manifest_header() as is;
//   odd:  the next 40 bytes are up to four header tweaks (field, how, value) applied to a
//         correct header built around the JSON that makes up the rest of the input. Without
//         tweaks the header is valid, so the fuzzer reaches the JSON validation at once.
// Whenever the header passes, the JSON part is read the way ManifestReader::json() does and
// parsed with parse_manifest_json(). Only ValidationError may come out; every accepted image
// and document is then checked against the invariants a reader relies on (a violation traps).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "directport/core/error.hpp"
#include "directport/core/manifest.hpp"
#include "directport/core/protocol.hpp"
#include "directport/core/types.hpp"

namespace {

using dp::protocol::ControlBlock;
using dp::protocol::ManifestHeader;

[[noreturn]] void violated(const char* what) {
  std::fprintf(stderr, "invariant violated: %s\n", what);
  __builtin_trap();
}

std::uint64_t load64(const std::uint8_t* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

std::size_t round_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

// What an accepted header promises the reader.
void check_header_invariants(const ManifestHeader& h, std::size_t size) {
  if (h.total_size != size || size < sizeof(ManifestHeader)) violated("size");
  if (h.json_offset < sizeof(ManifestHeader) || h.json_offset > size ||
      h.json_capacity > size - h.json_offset) {
    violated("JSON part inside the image");
  }
  std::uint64_t ctrl_bytes = std::uint64_t(h.control_capacity) * h.control_stride;
  if (h.control_offset < sizeof(ManifestHeader) || h.control_offset > size ||
      ctrl_bytes > size - h.control_offset) {
    violated("control blocks inside the image");
  }
  if (h.control_capacity > 0 && h.json_offset < h.control_offset + ctrl_bytes &&
      h.control_offset < h.json_offset + h.json_capacity) {
    violated("parts do not overlap");
  }
  if (h.json_size.load() > h.json_capacity) violated("JSON size within capacity");
  if (h.control_offset % alignof(ControlBlock) != 0) violated("aligned control blocks");
}

// What an accepted document promises the subscriber.
void check_document_invariants(const nlohmann::json& doc, std::uint32_t capacity) {
  if (!doc.is_object() || !doc.at("streams").is_array()) violated("document shape");
  std::set<std::uint64_t> used;
  for (const auto& s : doc["streams"]) {
    dp::StreamSpec spec = dp::spec_from_json(s);  // accepted once, must be accepted again
    std::size_t bytes = spec.frame_bytes();
    if (bytes == 0 || bytes > (std::size_t(16) << 30)) violated("0 < frame_bytes <= 16 GiB");
    if (s.at("slot_stride").get<std::uint64_t>() < bytes) violated("slot_stride >= frame_bytes");
    auto idx = s.at("control_index").get<std::uint64_t>();
    if (idx >= capacity || !used.insert(idx).second) violated("control_index in range and unique");
    if (spec.slots < 2 || spec.slots > dp::protocol::kMaxSlots) violated("slots in range");
    if (dp::spec_from_json(dp::spec_to_json(spec)).frame_bytes() != bytes)
      violated("spec round trip");
  }
}

void read_like_a_reader(const std::uint8_t* image, std::size_t size) {
  try {
    dp::validate_manifest_header(image, size);
  } catch (const dp::ValidationError&) {
    return;
  } catch (const dp::NotReadyError&) {  // empty, or the magic not published: one being created
    return;
  }
  const auto& h = *reinterpret_cast<const ManifestHeader*>(image);
  check_header_invariants(h, size);
  std::uint64_t n = h.json_size.load();
  std::string text(reinterpret_cast<const char*>(image) + h.json_offset, n);
  try {
    auto doc = dp::parse_manifest_json(text.data(), text.size(), h.control_capacity);
    check_document_invariants(doc, h.control_capacity);
  } catch (const dp::ValidationError&) {
  }
}

void tweak(ManifestHeader& h, std::size_t& size, const std::uint8_t* t) {
  const std::uint8_t field = t[0] % 16, how = t[1] % 3;
  const std::uint64_t v = load64(t + 2);
  auto apply = [&](auto& f) {
    using T = std::remove_reference_t<decltype(f)>;
    // In unsigned arithmetic: wrapping is the point, and must not be UB for signed fields.
    const std::uint64_t cur = static_cast<std::uint64_t>(f);
    f = static_cast<T>(how == 0 ? v : how == 1 ? cur ^ v : cur + v);
  };
  switch (field) {
    case 1:
      apply(h.abi_version);
      break;
    case 2:
      apply(h.header_size);
      break;
    case 3:
      apply(h.total_size);
      break;
    case 4:
      apply(h.json_offset);
      break;
    case 5:
      apply(h.json_capacity);
      break;
    case 6:
      apply(h.control_offset);
      break;
    case 7:
      apply(h.control_stride);
      break;
    case 8:
      apply(h.control_capacity);
      break;
    case 9:
      apply(h.pid);
      break;
    case 10: {
      std::uint64_t s = h.json_size.load();
      apply(s);
      h.json_size.store(s);
      break;
    }
    case 11:
      h.magic[v % 8] = static_cast<char>(v >> 8);
      break;
    case 12:
      size = how == 0 ? size - std::min<std::size_t>(size, v % 4096) : size;
      break;  // cut the image
    default:
      break;  // 0, 13..15: no change
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  if (data[0] % 2 == 0) {
    // Raw image, copied to 8-aligned memory like a mapping.
    std::vector<std::uint64_t> buf((size - 1 + 7) / 8 + 1);
    std::memcpy(buf.data(), data + 1, size - 1);
    read_like_a_reader(reinterpret_cast<const std::uint8_t*>(buf.data()), size - 1);
    return 0;
  }
  constexpr std::size_t kTweaks = 40;
  if (size < 1 + kTweaks) return 0;
  const std::uint8_t* tweaks = data + 1;
  const char* json = reinterpret_cast<const char*>(data + 1 + kTweaks);
  const std::size_t json_len = size - 1 - kTweaks;
  if (json_len > dp::protocol::kMaxJsonBytes) return 0;

  // A correct image around the JSON, laid out like ManifestWriter::create.
  const std::uint32_t control_capacity = 4;
  const std::size_t json_off = round_up(sizeof(ManifestHeader), 64);
  const std::size_t json_cap = std::max<std::size_t>(json_len, 1);
  const std::size_t ctrl_off = round_up(json_off + json_cap, 64);
  std::size_t total = ctrl_off + control_capacity * sizeof(ControlBlock);
  std::vector<std::uint64_t> buf(total / 8 + 1);
  auto* image = reinterpret_cast<std::uint8_t*>(buf.data());
  auto* h = new (image) ManifestHeader{};
  std::memcpy(h->magic, dp::protocol::kManifestMagic, 8);
  h->abi_version = dp::protocol::kAbiVersion;
  h->header_size = sizeof(ManifestHeader);
  h->total_size = total;
  h->json_offset = json_off;
  h->json_capacity = json_cap;
  h->control_offset = ctrl_off;
  h->control_stride = sizeof(ControlBlock);
  h->control_capacity = control_capacity;
  h->pid = 1;
  h->json_size.store(json_len);
  h->generation.store(2);
  std::memcpy(image + json_off, json, json_len);
  for (std::size_t k = 0; k < 4; ++k) tweak(*h, total, tweaks + 10 * k);
  read_like_a_reader(image, total);
  return 0;
}
