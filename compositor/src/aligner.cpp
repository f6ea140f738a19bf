#include "directport/compositor/aligner.hpp"

#include <algorithm>
#include <limits>

#include "directport/core/error.hpp"

namespace dp::compositor {

Aligner::Aligner(std::size_t teachers, std::int64_t wait_ns, std::size_t max_pending)
    : teachers_(teachers), wait_ns_(wait_ns) {
  DP_EXPECTS(teachers > 0, "an aligner needs at least one teacher");
  DP_EXPECTS(wait_ns >= 0, "the alignment wait cannot be negative");
  for (auto& t : teachers_) t.max_pending = std::max<std::size_t>(max_pending, 1);
}

void Aligner::set_max_pending(std::size_t t, std::size_t n) {
  DP_EXPECTS(t < teachers_.size(), "set_max_pending() for a teacher the aligner does not know");
  teachers_[t].max_pending = std::max<std::size_t>(n, 1);
}

void Aligner::add(std::size_t t, std::uint64_t frame_id, std::int64_t now_ns, Handle h, std::vector<Handle>& release) {
  DP_EXPECTS(t < teachers_.size(), "add() for a teacher the aligner does not know");
  auto& q = teachers_[t].frames;
  if (fused_any_ && frame_id <= last_fused_) {
    ++counters_.late;
    release.push_back(h);
    return;
  }
  auto it = std::lower_bound(q.begin(), q.end(), frame_id, [](const Held& a, std::uint64_t id) { return a.frame_id < id; });
  if (it != q.end() && it->frame_id == frame_id) {  // a repeat: keep the first
    ++counters_.late;
    release.push_back(h);
    return;
  }
  q.insert(it, Held{frame_id, now_ns, h});
  while (q.size() > teachers_[t].max_pending) {
    ++counters_.evicted;
    release.push_back(q.front().handle);
    q.pop_front();
  }
}

void Aligner::set_live(std::size_t t, bool live) {
  DP_EXPECTS(t < teachers_.size(), "set_live() for a teacher the aligner does not know");
  teachers_[t].live = live;
}

std::optional<std::uint64_t> Aligner::target() const {
  std::optional<std::uint64_t> best;
  for (const auto& t : teachers_) {
    if (!t.frames.empty() && (!best || t.frames.front().frame_id < *best)) best = t.frames.front().frame_id;
  }
  return best;
}

std::optional<std::int64_t> Aligner::deadline() const {
  auto id = target();
  if (!id) return std::nullopt;
  std::int64_t first = std::numeric_limits<std::int64_t>::max();
  for (const auto& t : teachers_) {
    if (!t.frames.empty() && t.frames.front().frame_id == *id) first = std::min(first, t.frames.front().arrived_ns);
  }
  return first + wait_ns_;
}

std::optional<Aligner::Decision> Aligner::poll(std::int64_t now_ns) {
  auto id = target();
  if (!id) return std::nullopt;
  bool settled = true;
  for (const auto& t : teachers_) {
    if (!t.live) continue;
    // Holds the target, or something newer: either way it has said all it will about the target.
    if (t.frames.empty()) {
      settled = false;
      break;
    }
  }
  if (!settled && now_ns < *deadline()) return std::nullopt;
  Decision d;
  d.frame_id = *id;
  d.frames.resize(teachers_.size());
  std::size_t got = 0;
  for (std::size_t i = 0; i < teachers_.size(); ++i) {
    auto& q = teachers_[i].frames;
    if (!q.empty() && q.front().frame_id == *id) {
      d.frames[i] = q.front().handle;
      q.pop_front();
      ++got;
    }
  }
  last_fused_ = *id;
  fused_any_ = true;
  ++counters_.fused;
  if (got == teachers_.size()) ++counters_.complete;
  return d;
}

std::vector<Aligner::Handle> Aligner::drain() {
  std::vector<Handle> out;
  for (auto& t : teachers_) {
    for (auto& h : t.frames) out.push_back(h.handle);
    t.frames.clear();
  }
  return out;
}

}  // namespace dp::compositor
