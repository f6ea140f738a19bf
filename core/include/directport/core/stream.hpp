// Publisher and Subscriber: the frame protocol of DESIGN §6 over any transport.
//
// The same API serves the host and the CUDA backends: every call that touches frame data takes
// a GpuStream (cudaStream_t). On the host backend it must be nullptr and waits happen on the
// CPU; on the GPU backends waits and signals are enqueued on that stream and the call never
// synchronises it.
//
// Threading: a Publisher is used by one application thread (the node's broker thread adds and
// removes subscriptions concurrently, under a lock). A Subscriber is used by one thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "directport/core/broker.hpp"
#include "directport/core/manifest.hpp"
#include "directport/core/release_waits.hpp"
#include "directport/core/transport.hpp"
#include "directport/core/types.hpp"

namespace dp {

// Live subscriptions one stream accepts; a subscribe beyond it is refused. Each costs the
// producer a mapped release page, a descriptor and a check on every acquire().
inline constexpr std::size_t kMaxSubscriptionsPerStream = 64;

// The wait for a producer of Node::subscribe(address) without options (SubscribeOptions::
// wait_for_producer): longer than three of the launcher's longest restart back-offs (8 s each),
// since a producer may die again while it starts (a GPU chaos run on an H200 saw a producer
// gone 17.9 s, and consumers that had waited 10 s exit for nothing).
inline constexpr std::chrono::milliseconds kDefaultProducerWait{30000};

class Publisher {
 public:
  struct Counters {
    std::uint64_t published = 0;
    std::uint64_t dropped = 0;      // no slot free within spec.acquire_timeout
    std::uint64_t subscribers = 0;  // live now
    std::uint64_t wakeups = 0;      // publishes that woke sleeping consumers (a system call; the
                                    // others found every consumer awake and made none)
    std::uint64_t cut_off = 0;      // consumers cut off (cut()): their release held our GPU stream
                                    // past spec.release_timeout
    std::uint64_t waits_pending = 0;  // GPU waits for releases recorded and not yet seen to pass
  };

  // The consumer whose enqueued release has held our GPU stream for longer than
  // spec.release_timeout (alive, its own stream stalled): see ReleaseWaits.
  struct Stalled {
    std::string client;
    double waited_ms = 0;     // since our stream reached the wait (to a broker tick)
    ReleaseWaits::Wait wait;  // its connection, and the frame whose release it waits for (value)
  };

  Publisher(StreamSpec spec, protocol::ControlBlock& control, std::uint32_t control_index,
            const std::string& node_name, GpuApi api = GpuApi::automatic);
  // Over a transport the caller made (tests: a transport that stands in for a GPU's).
  Publisher(StreamSpec spec, protocol::ControlBlock& control, std::uint32_t control_index,
            std::unique_ptr<ProducerTransport> transport);
  ~Publisher();
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // Picks a slot no live subscriber holds (DESIGN §6 step 1), waiting up to
  // spec.acquire_timeout; then drops the frame (counted) and returns nullopt. On the GPU it
  // enqueues on `stream` the waits for releases still in flight (step 2).
  std::optional<SlotLease> acquire(GpuStream stream = nullptr);
  // Enqueues the ready fence after the application's writes on `stream`, then publishes the
  // slot's metadata and the stream's latest seq (step 4).
  void publish(const SlotLease& lease, const FrameInfo& info, GpuStream stream = nullptr);
  // Gives a slot back without publishing it.
  void abandon(const SlotLease& lease);

  const StreamSpec& spec() const { return spec_; }
  Counters counters() const;
  nlohmann::json describe() const;  // manifest entry of this stream
  ProducerTransport& transport() { return *transport_; }

  // Broker side (called by the node's broker thread). add_subscription throws ValidationError
  // when the stream has kMaxSubscriptionsPerStream subscriptions already.
  nlohmann::json add_subscription(std::uint64_t connection_id, const std::string& client,
                                  platform::UniqueFd release_page, std::vector<int>& fds_out);
  void drop_connection(std::uint64_t connection_id) noexcept;
  // The consumer holding our GPU stream past spec.release_timeout, if any, as of `now_ns`
  // (CLOCK_MONOTONIC). Called by the node's broker thread every tick; reported once.
  std::optional<Stalled> stalled(std::int64_t now_ns);
  // The stall stalled() reported was not acted on: report it again at the next tick if it lasts.
  void rearm_stalled();
  // Cuts connection `connection_id`'s subscriptions off (PROTOCOL.md §10.3): for each, notes in
  // its page which of its frames had been read, marks the page cut, raises the releases our GPU
  // stream waits for, and forgets it. The caller then closes the connection; the consumer, seeing
  // the mark, takes the EOF for a cut rather than a death. Counted in cut_off.
  // With `only_if_pending`, only if that wait has still not passed (the consumer may have
  // recovered since stalled()); returns whether it cut.
  bool cut(std::uint64_t connection_id, const ReleaseWaits::Wait* only_if_pending = nullptr) noexcept;
  nlohmann::json consumers() const;

 private:
  struct Subscription;
  bool slot_free(std::uint32_t slot, std::uint64_t& wait_value_out, const Subscription& s) const;
  bool try_claim(std::uint32_t slot, GpuStream stream);
  void release_dead(Subscription& s) noexcept;
  void mark_cut(Subscription& s, const std::uint64_t* waited) noexcept;
  bool wait_passed(const ReleaseWaits::Wait& w) const;

  StreamSpec spec_;
  protocol::ControlBlock& control_;
  std::uint32_t control_index_;
  std::unique_ptr<ProducerTransport> transport_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Subscription>> subs_;
  std::vector<std::uint64_t> wait_scratch_;  // per-subscription GPU wait values (acquire)
  // Last seq published into each slot. On a GPU stream a slot is reused only once its ready
  // word shows that our own GPU has signalled that frame: publish() returns before the GPU has
  // run the frame's work, and without this bound the CPU runs ahead by as many frames as the
  // driver queues (thousands), so that the newest frame a consumer sees lies behind all of them.
  std::vector<std::uint64_t> slot_seq_;
  std::uint64_t next_seq_ = 1;
  std::uint32_t last_slot_ = 0;
  std::uint64_t next_sub_id_ = 1;
  std::atomic<std::uint64_t> wakeups_{0};
  std::atomic<std::uint64_t> cut_off_{0};
  // The GPU waits for consumers' releases enqueued on our stream, in order (stalled()), and the
  // slot of the last frame published (the wait after it is reached once its ready word is).
  ReleaseWaits release_waits_;
  std::uint32_t last_published_slot_ = 0;
  std::string broken_;  // set when a frame was announced but its ready fence could not be enqueued
};

struct SubscribeOptions {
  std::string client_name = "anonymous";
  std::string domain;  // empty: default_domain()
  // Bound of each request to the producer's broker while subscribing.
  std::chrono::milliseconds connect_timeout{2000};
  // How long the constructor waits for the producer to be there: started, its stream advertised,
  // alive (a dead instance's manifest is litter: its next instance is waited for), so that
  // producers and consumers may start in any order. 0 (the default): throw at once, for callers
  // that retry on their own. A producer that is running and does not publish the stream, or that
  // answers with something its manifest contradicts, is an error at once. The wait ends early,
  // with the last error, once `cancelled` returns true. Node::subscribe(address) without options
  // waits kDefaultProducerWait.
  std::chrono::milliseconds wait_for_producer{0};
  std::function<bool()> cancelled;
  // How long after the producer's death the subscriber tries to find a new instance, and how
  // often (a rediscovery costs one shm_open).
  std::chrono::milliseconds reconnect_interval{20};
  // Bound for CPU waits on a frame's ready fence (host backend, and GPU streams with
  // DIRECTPORT_GPU_WAITS=cpu); next() may wait this long past its own timeout for one frame.
  std::chrono::milliseconds ready_timeout{1000};
  // next() polls for a new frame this long before sleeping in the kernel: lower latency for
  // one busy core.
  std::chrono::microseconds spin{0};
  // The API this process reads frames with (docs/VULKAN.md): a Vulkan reader gets Frame::data as
  // the byte offset in vulkan_buffer().
  GpuApi api = GpuApi::automatic;
};

class Subscriber {
 public:
  struct Counters {
    std::uint64_t received = 0;     // frames handed to the application
    std::uint64_t missed = 0;       // published frames skipped because we were slower
    std::uint64_t dropped = 0;      // frames the producer dropped while we were subscribed
    std::uint64_t invalidated = 0;  // frames lost: the producer died before completing them, or cut
                                    // us off before we had read them
    std::uint64_t reconnects = 0;
    std::uint64_t cuts = 0;         // times the producer cut us off (our release held its GPU
                                    // stream past its release_timeout; PROTOCOL.md §10.3)
  };
  // cut_off: the producer cut us off and we have not subscribed again yet; that waits until our
  // own streams have run the releases we enqueued before the cut.
  enum class State { connected, producer_gone, cut_off };

  // Connects to `node/stream` (throws if it is not there or refuses us).
  Subscriber(const std::string& node, const std::string& stream, SubscribeOptions opts = {});
  ~Subscriber();
  Subscriber(Subscriber&&) noexcept;
  Subscriber& operator=(Subscriber&&) noexcept;

  // The newest frame newer than the last one received, or nullopt. Non-blocking.
  std::optional<Frame> latest(GpuStream stream = nullptr);
  // The oldest frame still in the ring that is newer than the last one received, waiting up to
  // `timeout` for one. Returns nullopt on timeout or while the producer is gone.
  std::optional<Frame> next(std::chrono::nanoseconds timeout, GpuStream stream = nullptr);
  // The application is done reading `f` once `stream` reaches this point.
  void release(const Frame& f, GpuStream stream = nullptr);
  // False if `f` is from a producer that died before completing it, or one that cut us off
  // (PROTOCOL.md §10.3) before our release of `f` had run: the slot may since have been rewritten
  // under our reads. Ask once the reads of `f` are done (e.g. after synchronising the stream).
  bool is_valid(const Frame& f) const;

  State state();
  // The stream's spec: the current connection's, or the last one's while the producer is gone.
  const StreamSpec& spec() const;
  // For a Vulkan reader (SubscribeOptions::api): the VkBuffer over the stream's memory of the
  // current connection (frames' data are offsets in it); 0 when not connected or not Vulkan.
  std::uint64_t vulkan_buffer() const;
  std::uint64_t vulkan_buffer_bytes() const;
  Counters counters() const { return counters_; }
  std::string address() const { return node_ + "/" + stream_; }

 private:
  struct Connection;
  // One attempt. On failure, `settled` says whether waiting could not help: the producer is
  // running without the stream, or it answered and what it sent is wrong.
  void connect(bool* settled = nullptr);
  bool check_producer();  // false if gone (and handles it)
  std::optional<Frame> claim(std::uint64_t seq, GpuStream stream);
  void producer_died() noexcept;
  void producer_cut() noexcept;
  // Forgets the retired connections no longer needed: no frame of theirs held, and (cut ones) every
  // release we enqueued run and every ready word we may wait on reached.
  void prune_retired() noexcept;

  std::string node_, stream_;
  SubscribeOptions opts_;
  std::unique_ptr<Connection> conn_;
  std::vector<std::unique_ptr<Connection>> retired_;
  std::uint32_t generation_ = 0;
  StreamSpec last_spec_;
  std::uint64_t last_seq_ = 0;
  std::int64_t last_check_ns_ = 0;
  std::int64_t next_reconnect_ns_ = 0;
  // After a cut: the producer that cut us off, and the last seq we had from it.
  std::optional<platform::ProcessIdentity> cut_owner_;
  std::uint64_t cut_last_seq_ = 0;
  Counters counters_;
};

}  // namespace dp
