#include "router/split.h"

#include "common/slot.h"

namespace shardvec::router {
namespace {

// Keeps `to`'s payloads either empty or one per id.
void AppendRow(const v1::RecordBlock& from, int i, size_t row_bytes, v1::RecordBlock* to) {
  to->add_ids(from.ids(i));
  to->mutable_vectors()->append(from.vectors().data() + static_cast<size_t>(i) * row_bytes, row_bytes);
  const bool has_payload = from.payloads_size() > 0;
  if (!has_payload && to->payloads_size() == 0) return;
  while (to->payloads_size() < to->ids_size() - 1) to->add_payloads();
  if (has_payload) {
    *to->add_payloads() = from.payloads(i);
  } else {
    to->add_payloads();
  }
}

}  // namespace

std::vector<v1::UpsertRequest> SplitByOwner(const Topology& topo, int dim, v1::UpsertRequest* req) {
  std::vector<v1::UpsertRequest> parts(topo.shards.size());
  for (v1::UpsertRequest& part : parts) part.set_collection(req->collection());
  for (v1::Record& r : *req->mutable_records()) parts[topo.slot_owner[SlotOf(r.id())]].add_records()->Swap(&r);
  const v1::RecordBlock& block = req->block();
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
  for (int i = 0; i < block.ids_size(); ++i) {
    AppendRow(block, i, row_bytes, parts[topo.slot_owner[SlotOf(block.ids(i))]].mutable_block());
  }
  return parts;
}

void Append(int dim, v1::UpsertRequest* part, v1::UpsertRequest* into) {
  for (v1::Record& r : *part->mutable_records()) into->add_records()->Swap(&r);
  const v1::RecordBlock& block = part->block();
  if (into->block().ids_size() == 0) {
    into->mutable_block()->Swap(part->mutable_block());
    return;
  }
  const size_t row_bytes = static_cast<size_t>(dim) * sizeof(float);
  for (int i = 0; i < block.ids_size(); ++i) AppendRow(block, i, row_bytes, into->mutable_block());
}

}  // namespace shardvec::router
