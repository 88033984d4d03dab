// A vector with inline room for N elements: tape nodes hold their edges and saved tensors here,
// so recording an op with up to N inputs costs one allocation (the node itself).
#pragma once

#include <array>
#include <cstddef>
#include <utility>
#include <vector>

namespace mt {

template <class T, size_t N>
class SmallVector {
 public:
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T& operator[](size_t i) { return on_heap_ ? heap_[i] : inline_[i]; }
  const T& operator[](size_t i) const { return on_heap_ ? heap_[i] : inline_[i]; }

  void push_back(T value) {
    if (!on_heap_ && size_ < N) {
      inline_[size_++] = std::move(value);
      return;
    }
    if (!on_heap_) {
      heap_.reserve(2 * N);
      for (size_t i = 0; i < size_; ++i) heap_.push_back(std::move(inline_[i]));
      for (auto& v : inline_) v = T();
      on_heap_ = true;
    }
    heap_.push_back(std::move(value));
    ++size_;
  }
  void clear() {
    for (size_t i = 0; i < std::min(size_, N); ++i) inline_[i] = T();
    heap_.clear();
    heap_.shrink_to_fit();
    on_heap_ = false;
    size_ = 0;
  }

 private:
  std::array<T, N> inline_{};
  std::vector<T> heap_;
  size_t size_ = 0;
  bool on_heap_ = false;
};

}  // namespace mt
