#include "common/vecs_io.h"

#include <cerrno>
#include <cstring>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace shardvec {
namespace {

absl::Status FileError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

}  // namespace

template <typename T>
absl::StatusOr<std::unique_ptr<VecsReader<T>>> VecsReader<T>::Open(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  int32_t d = 0;
  size_t got = std::fread(&d, sizeof(d), 1, f);
  std::fseek(f, 0, SEEK_END);
  long size = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  if (got != 1) {
    std::fclose(f);
    return FileError(path, "row 0: the file is empty or shorter than one row header");
  }
  if (d < 1 || d > (1 << 20)) {
    std::fclose(f);
    return FileError(path, absl::StrFormat("row 0: dimension %d is not plausible (not a %s file?)", d,
                                           std::is_same_v<T, float> ? ".fvecs" : ".ivecs"));
  }
  int64_t row_bytes = 4 + int64_t{d} * 4;
  return std::unique_ptr<VecsReader>(new VecsReader(path, f, d, size / row_bytes));
}

template <typename T>
VecsReader<T>::~VecsReader() {
  std::fclose(file_);
}

template <typename T>
absl::Status VecsReader<T>::Next(int64_t max_rows, Matrix<T>* out) {
  out->dim = dim_;
  out->rows = 0;
  out->data.resize(static_cast<size_t>(max_rows) * dim_);
  while (out->rows < max_rows) {
    int32_t d = 0;
    size_t got = std::fread(&d, sizeof(d), 1, file_);
    if (got != 1) {
      if (std::feof(file_) && std::ftell(file_) % (4 + int64_t{dim_} * 4) == 0) break;
      return FileError(path_, absl::StrFormat("row %d: truncated row header", row_));
    }
    if (d != dim_) {
      return FileError(path_, absl::StrFormat("row %d: dimension %d differs from the first row's %d", row_,
                                              d, dim_));
    }
    T* dst = out->data.data() + out->rows * dim_;
    if (std::fread(dst, sizeof(T), dim_, file_) != static_cast<size_t>(dim_)) {
      return FileError(path_, absl::StrFormat("row %d: truncated, expected %d values", row_, dim_));
    }
    ++out->rows;
    ++row_;
  }
  out->data.resize(static_cast<size_t>(out->rows) * dim_);
  return absl::OkStatus();
}

template class VecsReader<float>;
template class VecsReader<int32_t>;

namespace {

template <typename T>
absl::StatusOr<Matrix<T>> ReadAll(const std::string& path) {
  auto reader = VecsReader<T>::Open(path);
  if (!reader.ok()) return reader.status();
  Matrix<T> all;
  absl::Status s = (*reader)->Next((*reader)->total_rows() + 1, &all);
  if (!s.ok()) return s;
  return all;
}

template <typename T>
absl::Status WriteAll(const std::string& path, const Matrix<T>& m) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return absl::PermissionDeniedError(absl::StrCat(path, ": cannot create: ", std::strerror(errno)));
  }
  const int32_t d = m.dim;
  bool ok = true;
  for (int64_t i = 0; i < m.rows && ok; ++i) {
    ok = std::fwrite(&d, sizeof(d), 1, f) == 1 &&
         std::fwrite(m.row(i), sizeof(T), m.dim, f) == static_cast<size_t>(m.dim);
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) return absl::DataLossError(absl::StrCat(path, ": write failed: ", std::strerror(errno)));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<FloatMatrix> ReadFvecs(const std::string& path) { return ReadAll<float>(path); }
absl::StatusOr<IntMatrix> ReadIvecs(const std::string& path) { return ReadAll<int32_t>(path); }
absl::Status WriteFvecs(const std::string& path, const FloatMatrix& m) { return WriteAll(path, m); }
absl::Status WriteIvecs(const std::string& path, const IntMatrix& m) { return WriteAll(path, m); }

}  // namespace shardvec
