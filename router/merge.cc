#include "router/merge.h"

#include <algorithm>
#include <queue>
#include <utility>

#include "absl/container/flat_hash_set.h"

namespace shardvec::router {
namespace {

struct Cursor {
  float distance;
  uint64_t id;
  int list;
  int pos;
};

}  // namespace

void MergeTopK(const std::vector<const v1::QueryResult*>& lists, int k, bool larger_is_better,
               v1::QueryResult* out) {
  // Heap order: the root is the best hit, ties by smaller id, then by earlier list (so
  // that which copy of a duplicate is kept does not depend on the heap's internals).
  auto worse = [larger_is_better](const Cursor& a, const Cursor& b) {
    if (a.distance != b.distance) return larger_is_better ? a.distance < b.distance : a.distance > b.distance;
    if (a.id != b.id) return a.id > b.id;
    return a.list > b.list;
  };
  std::priority_queue<Cursor, std::vector<Cursor>, decltype(worse)> heap(worse);
  bool with_payloads = !lists.empty();
  for (int l = 0; l < static_cast<int>(lists.size()); ++l) {
    const v1::QueryResult& r = *lists[l];
    if (r.payloads_size() != r.ids_size()) with_payloads = false;
    if (r.ids_size() > 0) heap.push({r.distances(0), r.ids(0), l, 0});
  }
  absl::flat_hash_set<uint64_t> seen;
  while (!heap.empty() && out->ids_size() < k) {
    Cursor c = heap.top();
    heap.pop();
    const v1::QueryResult& r = *lists[c.list];
    if (seen.insert(c.id).second) {
      out->add_ids(c.id);
      out->add_distances(c.distance);
      if (with_payloads) *out->add_payloads() = r.payloads(c.pos);
    }
    if (c.pos + 1 < r.ids_size()) heap.push({r.distances(c.pos + 1), r.ids(c.pos + 1), c.list, c.pos + 1});
  }
}

}  // namespace shardvec::router
