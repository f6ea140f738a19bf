#include "directport/student/pairer.hpp"

#include <algorithm>

#include "directport/core/error.hpp"

namespace dp::student {

Pairer::Pairer(std::size_t max_held_input, std::size_t max_held_target)
    : max_held_{std::max<std::size_t>(max_held_input, 1), std::max<std::size_t>(max_held_target, 1)} {}

void Pairer::set_max_held(Side side, std::size_t n) { max_held_[side] = std::max<std::size_t>(n, 1); }

void Pairer::unmatched(Side side, Handle h, std::vector<Handle>& release) {
  ++(side == input ? counters_.unmatched_input : counters_.unmatched_target);
  release.push_back(h);
}

void Pairer::add(Side side, std::uint64_t frame_id, Handle h, std::vector<Handle>& release) {
  DP_EXPECTS(side == input || side == target, "Pairer::add() of an unknown side");
  auto& q = q_[side];
  if (paired_any_ && frame_id <= last_paired_) return unmatched(side, h, release);
  auto it = std::lower_bound(q.begin(), q.end(), frame_id, [](const Held& a, std::uint64_t id) { return a.frame_id < id; });
  if (it != q.end() && it->frame_id == frame_id) return unmatched(side, h, release);  // a repeat
  q.insert(it, Held{frame_id, h});
  while (q.size() > max_held_[side]) {
    unmatched(side, q.front().handle, release);
    q.pop_front();
  }
}

std::optional<Pairer::Pair> Pairer::pop(std::vector<Handle>& release) {
  auto& a = q_[input];
  auto& b = q_[target];
  // The oldest id present on both sides.
  auto ia = a.begin();
  auto ib = b.begin();
  while (ia != a.end() && ib != b.end() && ia->frame_id != ib->frame_id) {
    if (ia->frame_id < ib->frame_id) ++ia;
    else ++ib;
  }
  if (ia == a.end() || ib == b.end()) return std::nullopt;
  const Pair p{ia->frame_id, ia->handle, ib->handle};
  for (auto it = a.begin(); it != ia; ++it) unmatched(input, it->handle, release);
  for (auto it = b.begin(); it != ib; ++it) unmatched(target, it->handle, release);
  a.erase(a.begin(), ia + 1);
  b.erase(b.begin(), ib + 1);
  last_paired_ = p.frame_id;
  paired_any_ = true;
  ++counters_.paired;
  return p;
}

std::vector<Pairer::Handle> Pairer::drain() {
  std::vector<Handle> out;
  for (auto& q : q_) {
    for (auto& h : q) out.push_back(h.handle);
    q.clear();
  }
  return out;
}

}  // namespace dp::student
