// Parallel calls to several shards through gRPC's callback API, waiting for all of
// them; each call carries the same absolute deadline.
#ifndef SHARDVEC_ROUTER_FAN_OUT_H_
#define SHARDVEC_ROUTER_FAN_OUT_H_

#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/synchronization/blocking_counter.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace shardvec::router {

template <typename Resp>
struct ShardReply {
  int shard = -1;  // index into the topology's shards
  grpc::Status status;
  Resp response;
};

// `start(shard, context, response, done)` must begin one asynchronous call that
// invokes `done` exactly once. Returns one reply per target, in target order.
template <typename Resp, typename StartFn>
std::vector<ShardReply<Resp>> FanOut(const std::vector<int>& targets, absl::Time deadline, StartFn start) {
  const size_t n = targets.size();
  std::vector<ShardReply<Resp>> replies(n);
  std::unique_ptr<grpc::ClientContext[]> contexts(new grpc::ClientContext[n]);
  absl::BlockingCounter pending(static_cast<int>(n));
  for (size_t i = 0; i < n; ++i) {
    replies[i].shard = targets[i];
    contexts[i].set_deadline(absl::ToChronoTime(deadline));
    std::function<void(grpc::Status)> done = [&replies, &pending, i](grpc::Status s) {
      replies[i].status = std::move(s);
      pending.DecrementCount();
    };
    start(targets[i], &contexts[i], &replies[i].response, std::move(done));
  }
  pending.Wait();
  return replies;
}

}  // namespace shardvec::router

#endif  // SHARDVEC_ROUTER_FAN_OUT_H_
