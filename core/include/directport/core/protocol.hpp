// The shared-memory layouts of the protocol (docs/PROTOCOL.md is the normative text).
// Every field is little-endian, naturally aligned, and accessed through lock-free atomics where
// another process may read it concurrently. Changing anything here bumps kAbiVersion.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace dp::protocol {

inline constexpr std::uint32_t kAbiVersion = 3;  // 2: ConsumerState in the release page; 3: the cut words
inline constexpr char kManifestMagic[8] = {'D', 'P', 'M', 'A', 'N', 'I', 'F', '1'};
inline constexpr std::uint32_t kMaxSlots = 16;
inline constexpr std::uint32_t kMaxStreams = 64;
inline constexpr std::uint64_t kMaxJsonBytes = 1u << 20;  // 1 MiB
inline constexpr std::uint64_t kMaxManifestBytes = 8u << 20;
inline constexpr std::size_t kFenceStride = 64;           // one cache line per timeline word
inline constexpr std::size_t kFencePageBytes = 4096;
// A ready word a survivor raised for a dead producer holds seq | kForcedReady: it releases every
// wait (GEQ) and still says "not written by the producer", so that another consumer of the same
// page does not take the frame for complete (genuinely_ready()). The producer's raise of a cut
// consumer's release words carries it too (PROTOCOL.md §10.3): genuinely_ready() of a release
// word says whether the consumer's own stream wrote it, at or above the seq. Bit 62, not 63: a GPU wait's GEQ
// is cyclic, (int64_t)(*addr - value) >= 0, and (seq | 2^63) - seq is negative, which blocks the
// wait it must release; (seq | 2^62) - seq' stays positive for every seq' below 2^62.
inline constexpr std::uint64_t kForcedReady = 1ull << 62;
inline constexpr bool genuinely_ready(std::uint64_t word, std::uint64_t seq) {
  return (word & kForcedReady) == 0 && word >= seq;
}

enum class NodeState : std::uint32_t { starting = 1, running = 2, stopping = 3 };

using AtomicU64 = std::atomic<std::uint64_t>;
using AtomicU32 = std::atomic<std::uint32_t>;
static_assert(AtomicU64::is_always_lock_free && AtomicU32::is_always_lock_free,
              "shared-memory atomics must be address-free");

// Part 1 of a manifest: the fixed header at offset 0.
struct ManifestHeader {
  char magic[8];
  std::uint32_t abi_version;
  std::uint32_t header_size;      // sizeof(ManifestHeader)
  std::uint64_t total_size;       // bytes of the whole segment
  std::uint64_t json_offset;
  std::uint64_t json_capacity;
  std::uint64_t control_offset;
  std::uint32_t control_stride;   // sizeof(ControlBlock)
  std::uint32_t control_capacity; // number of control blocks reserved
  std::int64_t pid;
  std::uint64_t start_time;       // process start time, /proc/PID/stat field 22
  std::uint32_t uid;
  AtomicU32 state;                // NodeState
  AtomicU64 heartbeat_ns;         // CLOCK_MONOTONIC of the owner's last heartbeat
  AtomicU64 generation;           // seqlock over json_size + JSON bytes: odd while rewritten
  AtomicU64 json_size;
  std::uint8_t reserved[56];
};
static_assert(sizeof(ManifestHeader) == 160, "ABI: header size");
static_assert(offsetof(ManifestHeader, heartbeat_ns) == 80, "ABI: heartbeat offset");

// Metadata of the frame a slot holds. `seq` is the slot's own seqlock: 0 while the producer
// rewrites the slot, then the frame's seq (>= 1) once the metadata below is complete.
struct SlotMeta {
  AtomicU64 seq;
  AtomicU64 frame_id;
  AtomicU64 t_source_ns;   // when the source data was captured (producer's CLOCK_MONOTONIC)
  AtomicU64 t_publish_ns;  // when publish() ran
  AtomicU64 checksum;      // optional, 0 = none (set by producers that checksum frames)
  AtomicU64 flags;         // bit 0: frame invalid
  std::uint64_t reserved[2];
};
static_assert(sizeof(SlotMeta) == 64, "ABI: slot metadata");

// Part 3: one per stream, written only by the producer.
struct ControlBlock {
  AtomicU64 latest_seq;    // seq of the newest published frame (0 = none yet)
  AtomicU32 latest_slot;   // the slot that holds it
  std::uint32_t slot_count;
  AtomicU64 published;     // frames published
  AtomicU64 dropped;       // frames dropped because no slot was free within the bound
  AtomicU64 subscribers;   // live subscriptions
  std::uint64_t reserved[3];
  SlotMeta slots[kMaxSlots];
};
static_assert(sizeof(ControlBlock) == 64 + 64 * kMaxSlots, "ABI: control block");

// A fence page: `kFenceStride`-spaced 64-bit timeline words.
//  - the producer's page of a stream: word i = "ready" of slot i (seq of the frame written);
//  - a subscription's page (written by the consumer): per slot i, at i*kFenceStride,
//    ReleaseRecord.
struct ReleaseRecord {
  AtomicU64 released;          // timeline: highest seq of this slot whose reads are complete
  AtomicU64 held;              // seq the consumer holds (claimed) in this slot, 0 = none
  AtomicU64 release_enqueued;  // seq whose release was enqueued (GPU) or done (host)
  // Written by the producer when it cuts the consumer off (PROTOCOL.md §10.3), before `cut`:
  // `released` as it was then. A frame of this slot up to it had been read; later ones had not.
  AtomicU64 released_at_cut;
  std::uint64_t reserved[4];
};
static_assert(sizeof(ReleaseRecord) == kFenceStride, "ABI: release record");

// In a subscription's page, after the kMaxSlots release records: what the producer needs to know
// of the consumer beyond its holds.
struct ConsumerState {
  // Nonzero while the consumer sleeps (or is about to) in a futex wait on the stream's
  // latest_seq: publish() makes the wake-up system call only when some consumer's is set.
  AtomicU64 sleeping;
  // Set to 1 by the producer when it cuts this consumer off (its release held the producer's
  // stream past StreamSpec::release_timeout; PROTOCOL.md §10.3), after released_at_cut and before
  // it raises the releases and closes the connection: an EOF with it set is a cut, not a death.
  AtomicU64 cut;
  std::uint64_t reserved[6];
};
inline constexpr std::size_t kConsumerStateOffset = kMaxSlots * kFenceStride;
static_assert(sizeof(ConsumerState) == 64 && kConsumerStateOffset + sizeof(ConsumerState) <= kFencePageBytes,
              "ABI: consumer state");

}  // namespace dp::protocol
