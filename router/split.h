// Regrouping writes by owning shard, for both record forms (Record messages and
// columnar RecordBlock rows).
#ifndef SHARDVEC_ROUTER_SPLIT_H_
#define SHARDVEC_ROUTER_SPLIT_H_

#include <vector>

#include "proto/shardvec.pb.h"
#include "router/router_service.h"

namespace shardvec::router {

// Records in a request, in both forms.
inline int RecordCount(const v1::UpsertRequest& req) { return req.records_size() + req.block().ids_size(); }

// Moves the records of `req` into one request per shard of `topo` (by slot owner);
// `dim` is the collection's. Order within each form is kept, so a repeated id's
// last record still wins.
std::vector<v1::UpsertRequest> SplitByOwner(const Topology& topo, int dim, v1::UpsertRequest* req);

// Moves the records of `part` to the end of `into`.
void Append(int dim, v1::UpsertRequest* part, v1::UpsertRequest* into);

}  // namespace shardvec::router

#endif  // SHARDVEC_ROUTER_SPLIT_H_
