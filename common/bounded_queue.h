// A bounded FIFO between one producer and several consumers. Push blocks while it is
// full, which is how bulk loading applies back-pressure and keeps memory bounded.
// Thread-safe.
#ifndef SHARDVEC_COMMON_BOUNDED_QUEUE_H_
#define SHARDVEC_COMMON_BOUNDED_QUEUE_H_

#include <deque>
#include <utility>

#include "absl/synchronization/mutex.h"

namespace shardvec {

template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(size_t capacity) : capacity_(capacity) {}

  // False once closed (the item is dropped).
  bool Push(T item) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &BoundedQueue::CanPush));
    if (closed_) return false;
    items_.push_back(std::move(item));
    return true;
  }

  // False when closed and drained.
  bool Pop(T* item) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &BoundedQueue::CanPop));
    if (items_.empty()) return false;
    *item = std::move(items_.front());
    items_.pop_front();
    return true;
  }

  // Wakes every waiter; Pop drains what is left, Push fails.
  void Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }

 private:
  bool CanPush() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return closed_ || items_.size() < capacity_; }
  bool CanPop() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return closed_ || !items_.empty(); }

  absl::Mutex mu_;
  const size_t capacity_;
  std::deque<T> items_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace shardvec

#endif  // SHARDVEC_COMMON_BOUNDED_QUEUE_H_
