#include "index/index.h"

#include <memory>
#include <utility>

#include "index/faiss_index.h"

namespace shardvec::index {

// Only the FAISS CPU backend exists so far; a GPU backend will be picked here.
absl::StatusOr<std::unique_ptr<Index>> Index::Create(const IndexSpec& spec) {
  absl::StatusOr<std::unique_ptr<FaissIndex>> index = FaissIndex::Create(spec);
  if (!index.ok()) return index.status();
  return std::unique_ptr<Index>(std::move(*index));
}

absl::StatusOr<std::unique_ptr<Index>> Index::Load(const IndexSpec& spec, ByteSource* source) {
  absl::StatusOr<std::unique_ptr<FaissIndex>> index = FaissIndex::Load(spec, source);
  if (!index.ok()) return index.status();
  return std::unique_ptr<Index>(std::move(*index));
}

}  // namespace shardvec::index
