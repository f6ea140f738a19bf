// Values named by small integers that are reused once taken: the frames a node holds, named by
// the handles its Aligner or Pairer passes around.
#pragma once

#include <cstddef>
#include <optional>
#include <utility>
#include <vector>

#include "directport/core/error.hpp"

namespace dp {

template <typename T>
class Slab {
 public:
  // Stores `v`; its handle stays valid until take().
  std::size_t put(T v) {
    std::size_t h;
    if (free_.empty()) {
      h = items_.size();
      items_.emplace_back();
    } else {
      h = free_.back();
      free_.pop_back();
    }
    items_[h] = std::move(v);
    return h;
  }
  T& operator[](std::size_t h) {
    DP_EXPECTS(h < items_.size() && items_[h], "Slab: a handle that holds nothing");
    return *items_[h];
  }
  // Removes the value of `h` and gives it back; `h` may then name another value.
  T take(std::size_t h) {
    T v = std::move((*this)[h]);
    items_[h].reset();
    free_.push_back(h);
    return v;
  }

 private:
  std::vector<std::optional<T>> items_;
  std::vector<std::size_t> free_;
};

}  // namespace dp
