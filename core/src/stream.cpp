#include "directport/core/stream.hpp"

#include <algorithm>
#include <cstring>
#include <atomic>
#include <thread>

#include "directport/core/error.hpp"
#include "directport/core/fence.hpp"
#include "directport/core/names.hpp"
#include "directport/platform/process.hpp"

namespace dp {

using protocol::ReleaseRecord;

// ============================================================== Publisher

struct Publisher::Subscription {
  std::uint64_t id = 0;
  std::uint64_t connection_id = 0;
  std::string client;
  platform::Segment mapping;    // read-only view of the consumer's release page
  // The same page writable, mapped at subscribe so that releasing a dead consumer or cutting one
  // off (release_dead, mark_cut) cannot fail half-way; written only there (DESIGN §3).
  platform::Segment writable;
  ReleasePageView view;
  // Per slot: the release value of the last GPU wait recorded in release_waits_ (try_claim), so
  // that acquiring the same slot again (an abandoned lease) does not record it twice.
  std::uint64_t recorded[protocol::kMaxSlots] = {};
};

Publisher::Publisher(StreamSpec spec, protocol::ControlBlock& control, std::uint32_t control_index,
                     const std::string& node_name, GpuApi api)
    : Publisher(spec, control, control_index,
                (spec.validate(), make_producer_transport(spec, node_name + "." + spec.name, api))) {}

Publisher::Publisher(StreamSpec spec, protocol::ControlBlock& control, std::uint32_t control_index,
                     std::unique_ptr<ProducerTransport> transport)
    : spec_(std::move(spec)), control_(control), control_index_(control_index), transport_(std::move(transport)) {
  spec_.validate();
  DP_EXPECTS(transport_ != nullptr, "a publisher needs a transport");
  new (&control_) protocol::ControlBlock{};
  control_.slot_count = spec_.slots;
  last_slot_ = spec_.slots - 1;
  slot_seq_.assign(spec_.slots, 0);
}

Publisher::~Publisher() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& s : subs_) transport_->detach(s->view, std::move(s->mapping));
}

bool Publisher::slot_free(std::uint32_t slot, std::uint64_t& wait_value, const Subscription& s) const {
  const ReleaseRecord& r = s.view.records[slot];
  std::uint64_t held = r.held.load(std::memory_order_seq_cst);
  if (held == 0 || r.released.load(std::memory_order_acquire) >= held) return true;
  if (transport_->gpu_waits() && r.release_enqueued.load(std::memory_order_acquire) >= held) {
    wait_value = held;  // released on the consumer's stream, maybe not executed yet
    return true;
  }
  return false;
}

bool Publisher::try_claim(std::uint32_t slot, GpuStream stream) {
  auto& meta = control_.slots[slot];
  // At most `slots` frames in flight on our own GPU stream (see slot_seq_).
  if (transport_->gpu_side() && transport_->ready_word(slot).load(std::memory_order_acquire) < slot_seq_[slot]) {
    return false;
  }
  auto& waits = wait_scratch_;  // reused: acquire() is a hot path
  waits.assign(subs_.size(), 0);
  auto all_free = [&] {
    for (std::size_t i = 0; i < subs_.size(); ++i) {
      if (!slot_free(slot, waits[i], *subs_[i])) return false;
    }
    return true;
  };
  if (!all_free()) return false;
  // Invalidate the slot, then look at the holds again: a consumer that claims concurrently
  // either sees seq 0 and retries, or we see its hold (both sides use seq_cst).
  std::uint64_t prev = meta.seq.exchange(0, std::memory_order_seq_cst);
  if (!all_free()) {
    meta.seq.store(prev, std::memory_order_seq_cst);
    return false;
  }
  for (std::size_t i = 0; i < subs_.size(); ++i) {
    if (!waits[i]) continue;
    transport_->wait_released(stream, subs_[i]->view, slot, waits[i]);
    if (subs_[i]->recorded[slot] == waits[i]) continue;  // the same wait again (abandoned lease)
    subs_[i]->recorded[slot] = waits[i];
    const std::uint64_t before = next_seq_ - 1;  // the frame our stream signals just before this wait
    release_waits_.push({subs_[i]->id, subs_[i]->connection_id, slot, waits[i], last_published_slot_, before});
  }
  return true;
}

// Whether a recorded GPU wait has passed, as far as the CPU can tell: its consumer's release ran
// (or the consumer is gone, its releases raised).
bool Publisher::wait_passed(const ReleaseWaits::Wait& w) const {
  for (auto& s : subs_) {
    if (s->id == w.subscription) return s->view.records[w.slot].released.load(std::memory_order_acquire) >= w.value;
  }
  return true;
}

std::optional<SlotLease> Publisher::acquire(GpuStream stream) {
  if (!broken_.empty()) throw Error("stream '" + spec_.name + "' cannot publish any more: " + broken_);
  const std::int64_t deadline = platform::monotonic_ns() +
                                std::chrono::duration_cast<std::chrono::nanoseconds>(spec_.acquire_timeout).count();
  // No slot free: poll for kAcquireSpinNs (a slot usually comes back within a GPU round trip,
  // tens of microseconds, and a sleep costs at least the kernel's timer slack, ~50 us), then
  // sleep with a doubling back-off.
  constexpr std::int64_t kAcquireSpinNs = 100000;
  const std::int64_t spin_until = platform::monotonic_ns() + kAcquireSpinNs;
  std::int64_t backoff_ns = 10000;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      release_waits_.prune([this](const ReleaseWaits::Wait& w) { return wait_passed(w); });
      for (std::uint32_t i = 1; i <= spec_.slots; ++i) {
        std::uint32_t k = (last_slot_ + i) % spec_.slots;
        if (try_claim(k, stream)) {
          last_slot_ = k;
          return SlotLease{transport_->slot_data(k), spec_.frame_bytes(), k, next_seq_};
        }
      }
    }
    if (platform::monotonic_ns() >= deadline) {
      control_.dropped.fetch_add(1, std::memory_order_relaxed);
      return std::nullopt;
    }
    if (platform::monotonic_ns() < spin_until) {
      platform::cpu_relax();
      continue;
    }
    std::this_thread::sleep_for(std::chrono::nanoseconds(backoff_ns));
    backoff_ns = std::min<std::int64_t>(backoff_ns * 2, 200000);
  }
}

void Publisher::publish(const SlotLease& lease, const FrameInfo& info, GpuStream stream) {
  DP_EXPECTS(lease.seq == next_seq_ && lease.slot < spec_.slots, "publish() of a lease that acquire() did not hand out");
  // On the host the ready word is set before the frame is announced. A GPU-side ready fence is
  // enqueued after it (step 8, PROTOCOL.md §9.2): the driver call takes about a microsecond, and
  // consumers that see the frame meanwhile enqueue their GPU waits on the word, so announcing it
  // first takes that microsecond off the hand-off.
  const bool signal_late = transport_->gpu_side();
  if (!signal_late) transport_->signal_ready(stream, lease.slot, lease.seq);
  slot_seq_[lease.slot] = lease.seq;
  last_published_slot_ = lease.slot;
  auto& meta = control_.slots[lease.slot];
  std::int64_t now = platform::monotonic_ns();
  meta.frame_id.store(info.frame_id, std::memory_order_relaxed);
  meta.t_source_ns.store(static_cast<std::uint64_t>(info.t_source_ns ? info.t_source_ns : now), std::memory_order_relaxed);
  meta.t_publish_ns.store(static_cast<std::uint64_t>(now), std::memory_order_relaxed);
  meta.checksum.store(info.checksum, std::memory_order_relaxed);
  meta.flags.store(0, std::memory_order_relaxed);
  meta.seq.store(lease.seq, std::memory_order_release);
  control_.latest_slot.store(lease.slot, std::memory_order_relaxed);
  // seq_cst store, then seq_cst loads of the consumers' `sleeping` flags; a consumer sets its flag
  // (seq_cst) and then looks at latest_seq (seq_cst) before it sleeps: either it sees this frame
  // or we see its flag, so skipping the wake-up when no flag is set loses none (PROTOCOL.md §9.2).
  control_.latest_seq.store(lease.seq, std::memory_order_seq_cst);
  control_.published.fetch_add(1, std::memory_order_relaxed);
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& s : subs_) wake = wake || s->view.state->sleeping.load(std::memory_order_seq_cst) != 0;
  }
  if (wake) {
    fence::host_wake(control_.latest_seq);
    wakeups_.fetch_add(1, std::memory_order_relaxed);
  }
  ++next_seq_;
  if (signal_late) {
    try {
      transport_->signal_ready(stream, lease.slot, lease.seq);
    } catch (const std::exception& e) {
      // Consumers may already wait for this frame's ready word. A later frame signalled into the
      // same slot would release those waits on the wrong contents, so this publisher stops here:
      // the waits are released when this process ends (PROTOCOL.md §10.2).
      broken_ = std::string("publish() could not signal frame ") + std::to_string(lease.seq) + ": " + e.what();
      throw;
    }
  }
}

void Publisher::abandon(const SlotLease& lease) {
  DP_EXPECTS(lease.seq == next_seq_, "abandon() of a lease that acquire() did not hand out");
  // The slot stays invalid (seq 0): its old frame may be partly overwritten.
}

Publisher::Counters Publisher::counters() const {
  std::uint64_t pending = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending = release_waits_.size();
  }
  return {control_.published.load(), control_.dropped.load(), control_.subscribers.load(), wakeups_.load(),
          cut_off_.load(), pending};
}

void Publisher::rearm_stalled() {
  std::lock_guard<std::mutex> lock(mu_);
  release_waits_.rearm();
}

std::optional<Publisher::Stalled> Publisher::stalled(std::int64_t now_ns) {
  std::lock_guard<std::mutex> lock(mu_);
  if (release_waits_.size() == 0) return std::nullopt;
  const std::int64_t bound = std::chrono::duration_cast<std::chrono::nanoseconds>(spec_.release_timeout).count();
  auto head = release_waits_.check(
      now_ns, bound, [this](const ReleaseWaits::Wait& w) { return wait_passed(w); },
      [this](std::uint32_t slot, std::uint64_t seq) {
        return protocol::genuinely_ready(transport_->ready_word(slot).load(std::memory_order_acquire), seq);
      });
  if (!head) return std::nullopt;
  Stalled out{"", head->waited_ns / 1e6, head->wait};
  for (auto& s : subs_) {
    if (s->id == head->wait.subscription) out.client = s->client;
  }
  return out;
}

nlohmann::json Publisher::describe() const {
  auto j = spec_to_json(spec_);
  j["control_index"] = control_index_;
  j["slot_stride"] = transport_->slot_stride();
  const auto backend = transport_->describe();  // keep the temporary alive while iterating
  for (auto& [k, v] : backend.items()) j[k] = v;
  return j;
}

nlohmann::json Publisher::add_subscription(std::uint64_t connection_id, const std::string& client,
                                           platform::UniqueFd release_page, std::vector<int>& fds_out) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (subs_.size() >= kMaxSubscriptionsPerStream) {
      throw ValidationError("stream '" + spec_.name + "' has " + std::to_string(subs_.size()) +
                            " subscriptions, its bound (kMaxSubscriptionsPerStream): refusing another");
    }
  }
  auto s = std::make_unique<Subscription>();
  s->connection_id = connection_id;
  s->client = client;
  s->mapping = platform::Segment::map_fd(std::move(release_page), protocol::kFencePageBytes, platform::Access::read_only);
  s->writable = platform::Segment::map_fd(s->mapping.fd().dup(), protocol::kFencePageBytes, platform::Access::read_write);
  s->view.records = static_cast<const ReleaseRecord*>(s->mapping.data());
  s->view.state = &fence::consumer_state(static_cast<const void*>(s->mapping.data()));
  transport_->attach(s->view, s->mapping);
  fds_out = transport_->export_fds();
  std::lock_guard<std::mutex> lock(mu_);
  s->id = next_sub_id_++;
  auto reply = describe();
  reply["op"] = "subscribed";
  reply["subscription"] = s->id;
  subs_.push_back(std::move(s));
  control_.subscribers.store(subs_.size());
  return reply;
}

void Publisher::release_dead(Subscription& s) noexcept {
  // A dead consumer can no longer signal: write its pending "released" words ourselves so that
  // no wait of ours (CPU or GPU) stays blocked on it (DESIGN §3 exception to single-writer).
  auto* recs = static_cast<ReleaseRecord*>(s.writable.data());
  for (std::uint32_t k = 0; k < spec_.slots; ++k) {
    std::uint64_t held = recs[k].held.load();
    if (held) fence::host_signal(recs[k].released, held);
  }
}

void Publisher::mark_cut(Subscription& s, const std::uint64_t* waited) noexcept {
  // In this order (PROTOCOL.md §10.3):
  //   1. what the consumer had read when we stopped looking at its holds: per slot, its last
  //      release that ran (frames of the slot up to it are whole, later ones may be overwritten);
  //   2. the mark: from here on the consumer judges its frames by (1) and takes the EOF for a cut;
  //   3. the releases our GPU stream waits for, raised: unlike release_dead(), only those, and
  //      flagged (kForcedReady), so that the consumer's own stream, when it runs its releases,
  //      writes over them; a word its stream has written since (at or above the wait) is left
  //      alone. The consumer reconnects once its stream has run them (its releases' words plain).
  // Only after (3) may a slot be overwritten; any read that overlaps that ends after (2).
  auto* recs = static_cast<ReleaseRecord*>(s.writable.data());
  for (std::uint32_t k = 0; k < spec_.slots; ++k) {
    recs[k].released_at_cut.store(recs[k].released.load(std::memory_order_acquire), std::memory_order_seq_cst);
  }
  fence::consumer_state(static_cast<void*>(recs)).cut.store(1, std::memory_order_seq_cst);
  for (std::uint32_t k = 0; k < spec_.slots; ++k) {
    std::uint64_t v = recs[k].released.load(std::memory_order_acquire);
    while (v < waited[k] && !recs[k].released.compare_exchange_weak(v, waited[k] | protocol::kForcedReady,
                                                                     std::memory_order_acq_rel)) {
    }
    if (waited[k]) fence::host_wake(recs[k].released);
  }
}

bool Publisher::cut(std::uint64_t connection_id, const ReleaseWaits::Wait* only_if_pending) noexcept {
  std::vector<std::unique_ptr<Subscription>> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // The consumer may have recovered since stalled() reported it.
    if (only_if_pending && wait_passed(*only_if_pending)) return false;
    for (auto it = subs_.begin(); it != subs_.end();) {
      if ((*it)->connection_id != connection_id) {
        ++it;
        continue;
      }
      // The highest release value each slot's GPU waits of ours still need.
      std::uint64_t waited[protocol::kMaxSlots] = {};
      for (std::size_t i = 0; i < release_waits_.size(); ++i) {
        const auto& w = release_waits_.at(i);
        if (w.subscription == (*it)->id) waited[w.slot] = std::max(waited[w.slot], w.value);
      }
      mark_cut(**it, waited);
      release_waits_.forget((*it)->id);
      gone.push_back(std::move(*it));
      it = subs_.erase(it);
    }
    control_.subscribers.store(subs_.size());
  }
  cut_off_.fetch_add(gone.empty() ? 0 : 1, std::memory_order_relaxed);
  for (auto& s : gone) transport_->detach(s->view, std::move(s->mapping));
  return true;
}

void Publisher::drop_connection(std::uint64_t connection_id) noexcept {
  std::vector<std::unique_ptr<Subscription>> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = subs_.begin(); it != subs_.end();) {
      if ((*it)->connection_id == connection_id) {
        release_waits_.forget((*it)->id);
        gone.push_back(std::move(*it));
        it = subs_.erase(it);
      } else {
        ++it;
      }
    }
    control_.subscribers.store(subs_.size());
    for (auto& s : gone) release_dead(*s);
  }
  // GPU work enqueued earlier may still wait on these pages: they were released above, and the
  // transport keeps its registration until that work has drained.
  for (auto& s : gone) transport_->detach(s->view, std::move(s->mapping));
}

nlohmann::json Publisher::consumers() const {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json out = nlohmann::json::array();
  for (auto& s : subs_) {
    nlohmann::json held = nlohmann::json::array();
    std::uint64_t last = 0;  // the newest frame this consumer took (held or released)
    for (std::uint32_t k = 0; k < spec_.slots; ++k) {
      auto h = s->view.records[k].held.load();
      if (h && s->view.records[k].released.load() < h) held.push_back(h);
      last = std::max(last, h);
    }
    out.push_back({{"subscription", s->id}, {"client", s->client}, {"connection", s->connection_id}, {"holding", held},
                   {"sleeping", s->view.state->sleeping.load() != 0},
                   {"last_taken", last}, {"lag", last ? control_.latest_seq.load() - std::min(last, control_.latest_seq.load()) : 0}});
  }
  return out;
}

// ============================================================== Subscriber

struct Subscriber::Connection {
  std::uint32_t generation = 0;
  StreamSpec spec;
  ManifestReader manifest;
  const protocol::ControlBlock* control = nullptr;
  BrokerClient client;
  platform::Segment page;  // our release page (we are its only writer)
  std::unique_ptr<ConsumerTransport> transport;
  std::uint64_t dropped_base = 0;
  std::size_t held = 0;
  std::vector<std::uint64_t> invalid_seqs;  // frames invalidated at the producer's death or cut
  ReleaseRecord& record(std::uint32_t slot) { return static_cast<ReleaseRecord*>(page.data())[slot]; }
  protocol::ConsumerState& state() { return fence::consumer_state(page.data()); }

  // GPU subscriptions: our streams may wait on the producer's ready words while the application
  // thread is blocked (e.g. in cudaStreamSynchronize). A watchdog notices the producer's death
  // (EOF, or its process gone) within kWatchdogPeriod and raises the ready words we wait on.
  static constexpr std::chrono::milliseconds kWatchdogPeriod{20};
  std::thread watchdog;
  std::atomic<bool> stop{false};
  std::atomic<bool> dead{false};
  // The producer marked our page cut (PROTOCOL.md §10.3): it is alive, and no longer waits for us.
  // A retired connection is a cut one exactly when this is set (a dead producer marks nothing).
  bool page_cut() { return state().cut.load(std::memory_order_seq_cst) != 0; }
  // Whether frame `seq` of slot k was read before the producer cut us off (or we were not cut).
  bool read_before_cut(std::uint32_t k, std::uint64_t seq) {
    return !page_cut() || record(k).released_at_cut.load(std::memory_order_seq_cst) >= seq;
  }
  // Whether every release we enqueued has run on our streams: the words hold what our streams
  // wrote, not the producer's raise (kForcedReady) or less.
  bool releases_ran() {
    for (std::uint32_t k = 0; k < spec.slots; ++k) {
      const std::uint64_t e = record(k).release_enqueued.load(std::memory_order_acquire);
      if (e && !protocol::genuinely_ready(record(k).released.load(std::memory_order_acquire), e)) return false;
    }
    return true;
  }
  // Whether no GPU wait of ours on this connection can still be pending: every frame we claimed
  // has its ready word reached (by the producer, or raised by us).
  bool waits_settled() {
    for (std::uint32_t k = 0; k < spec.slots; ++k) {
      const std::uint64_t h = record(k).held.load();
      if (!h) continue;
      if (!wait_passed(k, h)) return false;
    }
    return true;
  }
  std::atomic<std::uint64_t> forced_seq[protocol::kMaxSlots] = {};  // ready words we raised
  // Whether the watchdog raised slot k's ready word for the frame `seq` (it raises a word only to
  // the seq held in that slot, never reached by the producer: that frame has no data).
  bool forced(std::uint32_t k, std::uint64_t seq) const { return forced_seq[k].load() == seq; }
  // Whether slot k's ready word says the producer wrote frame `seq`: it reached `seq` without
  // the flag, or it was raised for a later frame of the slot (the producer reuses a slot only
  // once its own stream has signalled the slot's previous frame: Publisher::try_claim's run-ahead
  // bound). A word with kForcedReady is a survivor's raise, never a live producer's.
  bool written(std::uint32_t k, std::uint64_t seq) const {
    const std::uint64_t w = transport->ready_value(k);
    return protocol::genuinely_ready(w, seq) || ((w & protocol::kForcedReady) && (w & ~protocol::kForcedReady) > seq);
  }
  // Whether our GPU wait on slot k's ready word for frame `seq` has passed: our own release of it
  // ran (a word our stream wrote, not the producer's raise of a cut), the producer wrote the word,
  // or the watchdog raised it.
  bool wait_passed(std::uint32_t k, std::uint64_t seq) {
    return protocol::genuinely_ready(record(k).released.load(), seq) || written(k, seq) || forced(k, seq);
  }
  // Whether frame `seq` of slot k, which our wait let through, may lack its data because a
  // survivor of a dead producer raised a word: our wait passes on another consumer's raise
  // before our own watchdog has seen the death. Its own word raised for it (or an older frame),
  // or any word of the page raised while its own is below `seq` (a timeline semaphore is one for
  // every slot, raised with any of them). With no raise in the page the producer is alive and a
  // word below `seq` is still on its way (a device-resident word's host mirror follows it).
  bool raised(std::uint32_t k, std::uint64_t seq) const {
    if (forced(k, seq)) return true;
    if (written(k, seq)) return false;
    for (std::uint32_t j = 0; j < spec.slots; ++j) {
      if (transport->ready_value(j) & protocol::kForcedReady) return true;
    }
    return false;
  }
  // Whether frame `seq` of slot k is whole: not counted invalid when the connection was retired
  // (a death or a cut), read before any cut, and its word not raised.
  bool whole(std::uint32_t k, std::uint64_t seq) {
    return std::find(invalid_seqs.begin(), invalid_seqs.end(), seq) == invalid_seqs.end() && read_before_cut(k, seq) &&
           !raised(k, seq);
  }
  void force(std::uint32_t k, std::uint64_t seq) noexcept {
    forced_seq[k].store(seq);
    const std::uint64_t latest = control->latest_seq.load(std::memory_order_acquire);
    transport->force_ready(k, seq | protocol::kForcedReady, std::max(seq, latest));
  }

  void start_watchdog() {
    watchdog = std::thread([this] {
      while (!stop.load()) {
        // Only a producer known to be dead (EOF, or its process gone) may have its fences
        // written (DESIGN §3). A stale heartbeat alone means "stuck": reported, never acted on.
        // A cut (the producer marked our page before it closed the connection) is no death: the
        // producer is alive and will write its words; only its death, later, lets us write them.
        bool gone = dead.load() || !platform::is_alive(manifest.owner()) || (client.peer_gone() && !page_cut());
        if (gone) {
          dead = true;
          for (std::uint32_t k = 0; k < spec.slots; ++k) {
            const std::uint64_t held = record(k).held.load();
            if (held && !wait_passed(k, held)) force(k, held);
          }
        }
        std::this_thread::sleep_for(kWatchdogPeriod);
      }
    });
  }
  void stop_watchdog() noexcept {
    stop = true;
    if (watchdog.joinable()) watchdog.join();
  }
  ~Connection() { stop_watchdog(); }
};

Subscriber::Subscriber(const std::string& node, const std::string& stream, SubscribeOptions opts)
    : node_(node), stream_(stream), opts_(std::move(opts)) {
  if (opts_.domain.empty()) opts_.domain = default_domain();
  validate_name("domain", opts_.domain);
  validate_name("node name", node_);
  validate_name("stream name", stream_);
  const std::int64_t give_up = platform::monotonic_ns() +
                               std::chrono::duration_cast<std::chrono::nanoseconds>(opts_.wait_for_producer).count();
  for (;;) {
    bool settled = false;
    try {
      connect(&settled);
      return;
    } catch (const Error&) {
      // Not there yet (not started, a dead instance's litter, still setting up, not answering):
      // retry like a reconnect does, until the bound.
      if (settled || platform::monotonic_ns() >= give_up || (opts_.cancelled && opts_.cancelled())) throw;
    }
    std::this_thread::sleep_for(opts_.reconnect_interval);
  }
}

Subscriber::~Subscriber() = default;
Subscriber::Subscriber(Subscriber&&) noexcept = default;
Subscriber& Subscriber::operator=(Subscriber&&) noexcept = default;

std::uint64_t Subscriber::vulkan_buffer() const { return conn_ ? conn_->transport->vulkan_buffer() : 0; }
std::uint64_t Subscriber::vulkan_buffer_bytes() const { return conn_ ? conn_->transport->vulkan_buffer_bytes() : 0; }

const StreamSpec& Subscriber::spec() const { return conn_ ? conn_->spec : last_spec_; }

void Subscriber::connect(bool* settled) {
  auto c = std::make_unique<Connection>();
  c->manifest = ManifestReader::open(opts_.domain, node_);
  if (c->manifest.liveness() == Liveness::dead) {
    throw PeerGoneError("node '" + node_ + "' is dead (pid " + std::to_string(c->manifest.owner().pid) +
                        "); its manifest is litter that discovery will remove");
  }
  auto doc = c->manifest.json();
  const nlohmann::json* entry = nullptr;
  std::string names;
  for (auto& s : doc["streams"]) {
    if (s["name"] == stream_) entry = &s;
    names += (names.empty() ? "" : ", ") + s["name"].get<std::string>();
  }
  if (!entry) {
    // Nodes advertise their streams while they set up: one that is running has them all.
    if (settled) *settled = c->manifest.state() == protocol::NodeState::running;
    throw Error("node '" + node_ + "' publishes no stream '" + stream_ + "' (it publishes: " +
                (names.empty() ? "nothing" : names) + ")");
  }
  c->spec = spec_from_json(*entry);
  c->client = BrokerClient::connect(doc["broker"].get<std::string>(), opts_.client_name, c->manifest.owner(),
                                    opts_.connect_timeout);
  c->page = platform::Segment::create_anonymous("dp-release-" + stream_, protocol::kFencePageBytes, false);
  for (std::uint32_t k = 0; k < protocol::kMaxSlots; ++k) new (&c->record(k)) ReleaseRecord{};
  new (&c->state()) protocol::ConsumerState{};
  auto reply = c->client.request({{"op", "subscribe"}, {"stream", stream_}}, {c->page.fd().get()}, opts_.connect_timeout);
  // The producer answered: from here on, a problem is what it sent, and waiting cannot help.
  if (settled) *settled = true;
  // Trust nothing the producer says until it agrees with its own manifest.
  StreamSpec replied = spec_from_json(reply.body);
  if (spec_to_json(replied) != spec_to_json(c->spec)) throw ValidationError("producer's reply disagrees with its manifest");
  auto field = [&](const char* key) -> std::uint64_t {
    auto it = reply.body.find(key);
    if (it == reply.body.end() || !it->is_number_unsigned()) {
      throw ValidationError("producer's subscribe reply lacks an unsigned '" + std::string(key) + "'");
    }
    return it->get<std::uint64_t>();
  };
  auto idx = field("control_index");
  if (idx != entry->at("control_index").get<std::uint64_t>()) throw ValidationError("control index mismatch");
  c->control = &c->manifest.control(static_cast<std::uint32_t>(idx));
  if (c->control->slot_count != c->spec.slots) throw ValidationError("control block slot count disagrees with the manifest");
  TransportImport imp;
  imp.spec = &c->spec;
  imp.slot_stride = field("slot_stride");
  if (imp.slot_stride < c->spec.frame_bytes()) throw ValidationError("slot stride smaller than a frame");
  imp.description = reply.body;
  imp.fds = std::move(reply.fds);
  imp.release_page = &c->page;
  imp.api = opts_.api;
  c->transport = make_consumer_transport(std::move(imp));
  c->generation = ++generation_;
  c->dropped_base = c->control->dropped.load();
  std::uint64_t latest = c->control->latest_seq.load(std::memory_order_acquire);
  last_seq_ = latest ? latest - 1 : 0;
  // Back with the instance that cut us off: its seqs go on, and frames we had are not taken again.
  if (cut_owner_ && *cut_owner_ == c->manifest.owner()) last_seq_ = std::max(last_seq_, cut_last_seq_);
  cut_owner_.reset();
  if (c->spec.memory != MemoryKind::host) c->start_watchdog();
  last_spec_ = c->spec;
  conn_ = std::move(c);
  last_check_ns_ = platform::monotonic_ns();
}

void Subscriber::producer_died() noexcept {
  if (!conn_) return;
  conn_->dead = true;
  // From here on this thread alone raises words: with the watchdog still running, it could
  // force a slot between the reads below, and a frame without data would be kept as valid.
  conn_->stop_watchdog();
  for (std::uint32_t k = 0; k < conn_->spec.slots; ++k) {
    const std::uint64_t held = conn_->record(k).held.load();
    if (!held) continue;
    // A frame whose word the producer did not reach never got its data, even if the application
    // has released it since (its GPU wait passed on a raise: our watchdog's or another
    // consumer's); one not yet reached never will.
    if (!conn_->forced(k, held) && conn_->written(k, held)) continue;
    conn_->invalid_seqs.push_back(held);
    ++counters_.invalidated;
    if (!conn_->forced(k, held)) conn_->force(k, held);
  }
  if (conn_->held > 0) retired_.push_back(std::move(conn_));
  conn_.reset();
  next_reconnect_ns_ = 0;
}

bool Subscriber::check_producer() {
  std::int64_t now = platform::monotonic_ns();
  if (conn_) {
    if (now - last_check_ns_ < 1000000) return true;  // check the socket at most every 1 ms
    last_check_ns_ = now;
    // (Retired connections are pruned only while disconnected and at release(): destroying one
    // synchronises the device, which a live connection's next() must not wait for.)
    if (!conn_->dead.load() && !conn_->client.peer_gone()) {
      counters_.dropped = conn_->control->dropped.load() - conn_->dropped_base;
      return true;
    }
    // A cut, even if the producer has died since (the watchdog, still running for the cut
    // connection, raises what we wait on): producer_died() would judge the frames by `released`,
    // which the producer's raise (kForcedReady) makes look released.
    if (conn_->page_cut()) {
      producer_cut();
    } else {
      producer_died();
    }
  }
  prune_retired();
  if (now < next_reconnect_ns_) return false;
  // Cut off: subscribe again only once our streams have run the releases we enqueued before the
  // cut. A stream still stalled would hold the producer again from the first frame.
  for (auto& r : retired_) {
    if (r->page_cut() && !r->releases_ran()) return false;
  }
  next_reconnect_ns_ = now + std::chrono::duration_cast<std::chrono::nanoseconds>(opts_.reconnect_interval).count();
  try {
    connect();
    ++counters_.reconnects;
    return true;
  } catch (const std::exception&) {
    return false;  // not back yet, or a peer we do not trust: try again later
  }
}

void Subscriber::producer_cut() noexcept {
  auto& c = *conn_;
  ++counters_.cuts;
  cut_owner_ = c.manifest.owner();
  cut_last_seq_ = last_seq_;
  // The watchdog keeps running: the producer is alive and will write the ready words we wait on,
  // but if it dies first, the watchdog raises them as for any death.
  // The last frame taken in each slot, if it had not been read before the cut (its release had
  // not run, whether or not the application had released it) or its word was raised (the
  // producer having died since): invalid, and counted, as producer_died() counts.
  for (std::uint32_t k = 0; k < c.spec.slots; ++k) {
    const std::uint64_t held = c.record(k).held.load();
    if (held && (!c.read_before_cut(k, held) || c.raised(k, held))) {
      c.invalid_seqs.push_back(held);
      ++counters_.invalidated;
    }
  }
  retired_.push_back(std::move(conn_));
  conn_.reset();
  next_reconnect_ns_ = 0;
}

void Subscriber::prune_retired() noexcept {
  retired_.erase(std::remove_if(retired_.begin(), retired_.end(),
                                [](const std::unique_ptr<Connection>& r) {
                                  return r->held == 0 && (!r->page_cut() || (r->releases_ran() && r->waits_settled()));
                                }),
                 retired_.end());
}

Subscriber::State Subscriber::state() {
  if (check_producer()) return State::connected;
  for (auto& r : retired_) {
    if (r->page_cut() && r->generation == generation_) return State::cut_off;
  }
  return State::producer_gone;
}

std::optional<Frame> Subscriber::claim(std::uint64_t seq, GpuStream stream) {
  auto& c = *conn_;
  for (std::uint32_t k = 0; k < c.spec.slots; ++k) {
    const auto& meta = c.control->slots[k];
    if (meta.seq.load(std::memory_order_acquire) != seq) continue;
    auto& rec = c.record(k);
    std::uint64_t h0 = rec.held.load(std::memory_order_relaxed);
    rec.held.store(seq, std::memory_order_seq_cst);
    if (meta.seq.load(std::memory_order_seq_cst) != seq) {
      rec.held.store(h0, std::memory_order_seq_cst);  // the producer is rewriting it
      return std::nullopt;
    }
    Frame f;
    f.data = c.transport->slot_data(k);
    f.bytes = c.spec.frame_bytes();
    f.seq = seq;
    f.frame_id = meta.frame_id.load(std::memory_order_relaxed);
    f.t_source_ns = static_cast<std::int64_t>(meta.t_source_ns.load(std::memory_order_relaxed));
    f.t_publish_ns = static_cast<std::int64_t>(meta.t_publish_ns.load(std::memory_order_relaxed));
    f.checksum = meta.checksum.load(std::memory_order_relaxed);
    f.slot = k;
    f.generation = c.generation;
    if (!c.transport->wait_ready(stream, k, seq, opts_.ready_timeout)) {
      rec.held.store(h0, std::memory_order_seq_cst);
      return std::nullopt;
    }
    if (seq > last_seq_ + 1) counters_.missed += seq - last_seq_ - 1;
    last_seq_ = seq;
    ++counters_.received;
    ++c.held;
    return f;
  }
  return std::nullopt;
}

std::optional<Frame> Subscriber::latest(GpuStream stream) {
  for (int attempt = 0; attempt < 8; ++attempt) {
    if (!check_producer()) return std::nullopt;
    std::uint64_t l = conn_->control->latest_seq.load(std::memory_order_acquire);
    if (l <= last_seq_) return std::nullopt;
    if (auto f = claim(l, stream)) return f;
  }
  return std::nullopt;
}

std::optional<Frame> Subscriber::next(std::chrono::nanoseconds timeout, GpuStream stream) {
  const std::int64_t deadline = platform::monotonic_ns() + timeout.count();
  int races = 0;
  for (;;) {
    if (check_producer()) {
      std::uint64_t l = conn_->control->latest_seq.load(std::memory_order_acquire);
      // The frames still in the ring that are newer than the last one received, oldest first.
      // Looking at the slots (not at every seq since the last one) keeps this O(slots): a
      // consumer that fell far behind a fast producer catches up in one step.
      std::uint64_t cand[protocol::kMaxSlots];
      std::uint32_t n = 0;
      for (std::uint32_t k = 0; k < conn_->spec.slots; ++k) {
        std::uint64_t s = conn_->control->slots[k].seq.load(std::memory_order_acquire);
        if (s > last_seq_ && s <= l) cand[n++] = s;
      }
      std::sort(cand, cand + n);
      for (std::uint32_t i = 0; i < n; ++i) {
        if (auto f = claim(cand[i], stream)) return f;
      }
      std::int64_t left = deadline - platform::monotonic_ns();
      if (left <= 0) return std::nullopt;
      if (n > 0 && ++races < 64) continue;  // lost a race with the producer: look again
      if (opts_.spin.count() > 0) {
        const std::int64_t spin_until = platform::monotonic_ns() + std::min<std::int64_t>(left, opts_.spin.count() * 1000);
        while (conn_->control->latest_seq.load(std::memory_order_acquire) == l && platform::monotonic_ns() < spin_until) {
        }
        if (conn_->control->latest_seq.load(std::memory_order_acquire) != l) continue;
      }
      // Tell the producer we sleep (it wakes only sleepers), then look once more (publish()).
      auto& sleeping = conn_->state().sleeping;
      sleeping.store(1, std::memory_order_seq_cst);
      if (conn_->control->latest_seq.load(std::memory_order_seq_cst) == l) {
        fence::host_wait_change(conn_->control->latest_seq, l,
                                std::chrono::nanoseconds(std::min<std::int64_t>(left, 10000000)));
      }
      sleeping.store(0, std::memory_order_relaxed);
    } else {
      std::int64_t left = deadline - platform::monotonic_ns();
      if (left <= 0) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::nanoseconds(std::min<std::int64_t>(
          left, std::chrono::duration_cast<std::chrono::nanoseconds>(opts_.reconnect_interval).count())));
    }
  }
}

void Subscriber::release(const Frame& f, GpuStream stream) {
  if (conn_ && f.generation == conn_->generation) {
    auto& rec = conn_->record(f.slot);
    DP_EXPECTS(f.slot < conn_->spec.slots && rec.held.load() == f.seq && rec.release_enqueued.load() < f.seq,
               "release() of a frame this subscriber does not hold");
    rec.release_enqueued.store(f.seq, std::memory_order_release);
    conn_->transport->signal_released(stream, rec, f.seq);
    --conn_->held;
    return;
  }
  // A frame from a producer instance that has died, or that cut us off: nobody waits for its
  // release. The connection goes once nothing of it is needed (prune_retired()).
  for (auto it = retired_.begin(); it != retired_.end(); ++it) {
    if ((*it)->generation == f.generation) {
      if (--(*it)->held == 0) prune_retired();
      return;
    }
  }
  throw PreconditionError("release() of a frame this subscriber does not hold");
}

bool Subscriber::is_valid(const Frame& f) const {
  // The watchdog thread may have raised this frame's word before this thread noticed the death.
  // The producer may have cut us off before this thread noticed: the page says so at once.
  if (conn_ && f.generation == conn_->generation) return conn_->whole(f.slot, f.seq);
  for (auto& r : retired_) {
    if (r->generation == f.generation) return r->whole(f.slot, f.seq);
  }
  return false;
}

}  // namespace dp
