#include "common/vector_source.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

#ifdef SHARDVEC_HAVE_HDF5
#include <hdf5/serial/hdf5.h>
#endif

namespace shardvec {
namespace {

// The binary formats are little-endian and are read in place.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "needs a little-endian host");

// Same plausibility bound as VecsReader: a larger "dimension" means a misread header.
constexpr int64_t kMaxDim = 1 << 20;

absl::Status HeaderError(const std::string& path, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", problem));
}

absl::Status RowError(const std::string& path, int64_t row, const std::string& problem) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": row ", row, ": ", problem));
}

absl::Status CannotOpen(const std::string& path) {
  return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
}

absl::Status CheckMaxRows(int64_t max_rows) {
  if (max_rows >= 1) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("VectorSource::Next: max_rows must be >= 1, got ", max_rows));
}

// Clears *out and sizes it for `rows` rows starting at `first_row`.
void StartBatch(int64_t first_row, int64_t rows, int dim, SourceBatch* out) {
  out->first_row = first_row;
  out->vectors.rows = rows;
  out->vectors.dim = dim;
  out->vectors.data.resize(static_cast<size_t>(rows) * dim);
  out->ids.clear();
  out->texts.clear();
  out->metadata.clear();
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

absl::StatusOr<FilePtr> OpenFile(const std::string& path) {
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (f == nullptr) return CannotOpen(path);
  return f;
}

int64_t FileSize(std::FILE* f) {
  struct stat st;
  return fstat(fileno(f), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

// Element types of the dense binary formats.

enum class Elem { kF32, kF64, kF16, kU8, kI8 };

int ElemSize(Elem e) {
  switch (e) {
    case Elem::kF64:
      return 8;
    case Elem::kF32:
      return 4;
    case Elem::kF16:
      return 2;
    default:
      return 1;
  }
}

float HalfToFloat(uint16_t h) {
  const bool negative = (h & 0x8000u) != 0;
  const int exponent = (h >> 10) & 0x1f;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float f = std::ldexp(static_cast<float>(mantissa), -24);
    return negative ? -f : f;
  }
  const uint32_t bits = (negative ? 0x80000000u : 0u) |
                        (exponent == 31 ? 0x7f800000u : static_cast<uint32_t>(exponent + 112) << 23) |
                        (mantissa << 13);
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

template <typename T>
void Widen(const char* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, src + i * sizeof(T), sizeof(T));
    dst[i] = static_cast<float>(v);
  }
}

void ToFloat(Elem e, const char* src, int64_t n, float* dst) {
  switch (e) {
    case Elem::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      break;
    case Elem::kF64:
      Widen<double>(src, n, dst);
      break;
    case Elem::kU8:
      Widen<uint8_t>(src, n, dst);
      break;
    case Elem::kI8:
      Widen<int8_t>(src, n, dst);
      break;
    case Elem::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = HalfToFloat(h);
      }
      break;
  }
}

// Dense formats: rows * dim elements back to back after a header (.fbin, .u8bin,
// .i8bin, .npy). The file size is checked against the header at Open.

struct DenseLayout {
  const char* format;
  Elem elem;
  int64_t offset;  // bytes before row 0
  int64_t rows;
  int dim;
};

// Says how the file size disagrees with the header, if it does.
absl::Status CheckDenseSize(const std::string& path, const DenseLayout& l, int64_t size) {
  const int64_t row_bytes = int64_t{l.dim} * ElemSize(l.elem);
  if (l.rows > (std::numeric_limits<int64_t>::max() - l.offset) / row_bytes) {
    return HeaderError(path,
                       absl::StrFormat("the header's %d rows of dim %d overflow a file size", l.rows, l.dim));
  }
  const int64_t expected = l.offset + l.rows * row_bytes;
  if (size == expected) return absl::OkStatus();
  const std::string says =
      absl::StrFormat("the header says %d rows of dim %d (%d bytes with the %d-byte header)", l.rows, l.dim,
                      expected, l.offset);
  const int64_t body = size - l.offset;
  if (size > expected) {
    return HeaderError(
        path, absl::StrFormat("%s but the file has %d bytes, %d too many: the header is wrong or the "
                              "file has trailing data",
                              says, size, size - expected));
  }
  if (body % row_bytes != 0) {
    return RowError(path, body / row_bytes,
                    absl::StrFormat("truncated: %s but the file has %d bytes", says, size));
  }
  return HeaderError(path, absl::StrFormat("%s but the file has %d bytes, only %d whole rows: the file is "
                                           "truncated or the header is wrong",
                                           says, size, body / row_bytes));
}

// Reads a dense layout in batches, converting to float32.
class DenseSource : public VectorSource {
 public:
  static absl::StatusOr<std::unique_ptr<VectorSource>> Make(const std::string& path, FilePtr file,
                                                            const DenseLayout& layout) {
    absl::Status s = CheckDenseSize(path, layout, FileSize(file.get()));
    if (!s.ok()) return s;
    if (fseeko(file.get(), layout.offset, SEEK_SET) != 0) return CannotOpen(path);
    return std::unique_ptr<VectorSource>(new DenseSource(path, std::move(file), layout));
  }

  int dim() const override { return layout_.dim; }
  int64_t total_rows() const override { return layout_.rows; }
  const char* format() const override { return layout_.format; }

  absl::Status Next(int64_t max_rows, SourceBatch* out) override {
    absl::Status s = CheckMaxRows(max_rows);
    if (!s.ok()) return s;
    const int64_t n = std::min(max_rows, layout_.rows - row_);
    StartBatch(row_, n, layout_.dim, out);
    const size_t values = static_cast<size_t>(n) * layout_.dim;
    const size_t elem = ElemSize(layout_.elem);
    char* dst = reinterpret_cast<char*>(out->vectors.data.data());
    if (layout_.elem != Elem::kF32) {
      scratch_.resize(values * elem);
      dst = scratch_.data();
    }
    const size_t got = std::fread(dst, elem, values, file_.get());
    if (got != values) {
      return RowError(path_, row_ + static_cast<int64_t>(got) / layout_.dim,
                      "truncated (did the file change while it was read?)");
    }
    if (layout_.elem != Elem::kF32) ToFloat(layout_.elem, dst, values, out->vectors.data.data());
    row_ += n;
    return absl::OkStatus();
  }

 private:
  DenseSource(std::string path, FilePtr file, const DenseLayout& layout)
      : path_(std::move(path)), file_(std::move(file)), layout_(layout) {}

  std::string path_;
  FilePtr file_;
  DenseLayout layout_;
  int64_t row_ = 0;
  std::vector<char> scratch_;  // raw rows of a non-float32 file, reused across batches
};

// .fbin / .u8bin / .i8bin: int32 n, int32 d, then the rows.
absl::StatusOr<std::unique_ptr<VectorSource>> OpenBin(const std::string& path, const char* format,
                                                      Elem elem) {
  absl::StatusOr<FilePtr> file = OpenFile(path);
  if (!file.ok()) return file.status();
  int32_t header[2];
  if (std::fread(header, sizeof(int32_t), 2, file->get()) != 2) {
    return HeaderError(path, absl::StrFormat("the file has %d bytes, fewer than the 8-byte header (n, d)",
                                             FileSize(file->get())));
  }
  if (header[0] < 0)
    return HeaderError(path, absl::StrFormat("header row count n=%d is negative", header[0]));
  if (header[1] < 1 || header[1] > kMaxDim) {
    return HeaderError(path, absl::StrFormat("header dimension d=%d is not plausible", header[1]));
  }
  return DenseSource::Make(path, *std::move(file), DenseLayout{format, elem, 8, header[0], header[1]});
}

// .npy: "\x93NUMPY", major, minor, header length (u16 for v1, u32 for v2/v3), then a
// Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (n, d), }.

// The text of `key`'s value in the dict: a quoted string without its quotes, a
// tuple or list with its brackets, or a bare word; nullopt if there is none.
std::optional<std::string> NpyField(const std::string& header, const std::string& key) {
  size_t pos = header.find("'" + key + "'");
  if (pos == std::string::npos) pos = header.find("\"" + key + "\"");
  if (pos == std::string::npos) return std::nullopt;
  pos = header.find(':', pos + key.size() + 2);
  if (pos != std::string::npos) pos = header.find_first_not_of(" \t", pos + 1);
  if (pos == std::string::npos) return std::nullopt;
  const char c = header[pos];
  if (c == '\'' || c == '"') {
    const size_t end = header.find(c, pos + 1);
    if (end == std::string::npos) return std::nullopt;
    return header.substr(pos + 1, end - pos - 1);
  }
  const size_t end =
      (c == '(' || c == '[') ? header.find(c == '(' ? ')' : ']', pos) + 1 : header.find_first_of(",}", pos);
  if (end == std::string::npos || end == 0) return std::nullopt;
  return std::string(absl::StripAsciiWhitespace(header.substr(pos, end - pos)));
}

// Parses "(3, 4)" (or "(3L, 4L)" from Python 2).
bool ParseNpyShape(const std::string& text, std::vector<int64_t>* shape) {
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') return false;
  for (absl::string_view part :
       absl::StrSplit(text.substr(1, text.size() - 2), ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    absl::ConsumeSuffix(&part, "L");
    int64_t v;
    if (!absl::SimpleAtoi(part, &v) || v < 0) return false;
    shape->push_back(v);
  }
  return true;
}

absl::StatusOr<Elem> NpyElem(const std::string& path, const std::string& descr) {
  if (descr == "<f4") return Elem::kF32;
  if (descr == "<f8") return Elem::kF64;
  if (descr == "<f2") return Elem::kF16;
  if (descr == "|u1") return Elem::kU8;
  if (descr == "|i1") return Elem::kI8;
  if (absl::StartsWith(descr, ">")) {
    return HeaderError(path, absl::StrFormat("dtype '%s' is big-endian; only little-endian is supported "
                                             "(save a.astype('<f4'))",
                                             descr));
  }
  return HeaderError(path, absl::StrFormat("dtype '%s' is not supported; expected '<f4' (float32), or '<f8', "
                                           "'<f2', '|u1', '|i1' (converted to float32)",
                                           descr));
}

// Reads the header of an .npy file, leaving `f` at the first row.
absl::StatusOr<DenseLayout> ReadNpyHeader(const std::string& path, std::FILE* f) {
  unsigned char prefix[8];
  if (std::fread(prefix, 1, 8, f) != 8 || std::memcmp(prefix, "\x93NUMPY", 6) != 0) {
    return HeaderError(path, "not a NumPy .npy file (no \\x93NUMPY magic)");
  }
  const int major = prefix[6];
  if (major < 1 || major > 3) {
    return HeaderError(path, absl::StrFormat("unsupported .npy version %d.%d", major, prefix[7]));
  }
  const int len_bytes = major == 1 ? 2 : 4;
  unsigned char len[4] = {0, 0, 0, 0};
  if (std::fread(len, 1, len_bytes, f) != static_cast<size_t>(len_bytes))
    return HeaderError(path, "truncated header");
  const uint32_t header_len = len[0] | len[1] << 8 | len[2] << 16 | uint32_t{len[3]} << 24;
  if (header_len > (1u << 20))
    return HeaderError(path, absl::StrFormat("header length %d is implausible", header_len));
  std::string header(header_len, '\0');
  if (std::fread(header.data(), 1, header_len, f) != header_len) return HeaderError(path, "truncated header");

  const std::optional<std::string> descr = NpyField(header, "descr");
  const std::optional<std::string> fortran = NpyField(header, "fortran_order");
  const std::optional<std::string> shape_text = NpyField(header, "shape");
  std::vector<int64_t> shape;
  if (!descr || !fortran || !shape_text || !ParseNpyShape(*shape_text, &shape)) {
    return HeaderError(path,
                       absl::StrCat("cannot parse the header dict: ", absl::StripAsciiWhitespace(header)));
  }
  if (absl::StartsWith(*descr, "[")) return HeaderError(path, "structured dtypes are not supported");
  absl::StatusOr<Elem> elem = NpyElem(path, *descr);
  if (!elem.ok()) return elem.status();
  if (*fortran != "False") {
    return HeaderError(path, absl::StrFormat("fortran_order is %s; save a C-order array "
                                             "(np.ascontiguousarray)",
                                             *fortran));
  }
  if (shape.size() != 2) {
    return HeaderError(path, absl::StrFormat("shape %s has %d dimensions; expected 2 (rows, dim)",
                                             *shape_text, shape.size()));
  }
  if (shape[1] < 1 || shape[1] > kMaxDim) {
    return HeaderError(path,
                       absl::StrFormat("shape %s: dimension %d is not plausible", *shape_text, shape[1]));
  }
  return DenseLayout{"npy", *elem, 6 + 2 + len_bytes + int64_t{header_len}, shape[0],
                     static_cast<int>(shape[1])};
}

absl::StatusOr<std::unique_ptr<VectorSource>> OpenNpy(const std::string& path) {
  absl::StatusOr<FilePtr> file = OpenFile(path);
  if (!file.ok()) return file.status();
  absl::StatusOr<DenseLayout> layout = ReadNpyHeader(path, file->get());
  if (!layout.ok()) return layout.status();
  return DenseSource::Make(path, *std::move(file), *layout);
}

// .fvecs through the existing VecsReader.

class FvecsSource : public VectorSource {
 public:
  static absl::StatusOr<std::unique_ptr<VectorSource>> Open(const std::string& path) {
    absl::StatusOr<std::unique_ptr<FvecsReader>> reader = FvecsReader::Open(path);
    if (!reader.ok()) return reader.status();
    return std::unique_ptr<VectorSource>(new FvecsSource(*std::move(reader)));
  }

  int dim() const override { return reader_->dim(); }
  int64_t total_rows() const override { return reader_->total_rows(); }
  const char* format() const override { return "fvecs"; }

  absl::Status Next(int64_t max_rows, SourceBatch* out) override {
    absl::Status s = CheckMaxRows(max_rows);
    if (!s.ok()) return s;
    StartBatch(reader_->rows_read(), 0, dim(), out);
    // VecsReader allocates max_rows rows up front; one past the whole rows lets it see
    // a truncated tail.
    const int64_t n = std::min(max_rows, reader_->total_rows() - reader_->rows_read() + 1);
    return reader_->Next(n, &out->vectors);
  }

 private:
  explicit FvecsSource(std::unique_ptr<FvecsReader> reader) : reader_(std::move(reader)) {}

  std::unique_ptr<FvecsReader> reader_;
};

// .bvecs: per row an int32 dimension, then that many uint8.

class BvecsSource : public VectorSource {
 public:
  static absl::StatusOr<std::unique_ptr<VectorSource>> Open(const std::string& path) {
    absl::StatusOr<FilePtr> file = OpenFile(path);
    if (!file.ok()) return file.status();
    int32_t d = 0;
    if (std::fread(&d, sizeof(d), 1, file->get()) != 1) {
      return RowError(path, 0, "the file is empty or shorter than one row header");
    }
    if (d < 1 || d > kMaxDim) {
      return RowError(path, 0, absl::StrFormat("dimension %d is not plausible (not a .bvecs file?)", d));
    }
    const int64_t size = FileSize(file->get());
    std::rewind(file->get());
    return std::unique_ptr<VectorSource>(new BvecsSource(path, *std::move(file), d, size));
  }

  int dim() const override { return dim_; }
  int64_t total_rows() const override { return total_rows_; }
  const char* format() const override { return "bvecs"; }

  absl::Status Next(int64_t max_rows, SourceBatch* out) override {
    absl::Status s = CheckMaxRows(max_rows);
    if (!s.ok()) return s;
    const int64_t n = std::min(max_rows, total_rows_ - row_);
    if (n == 0 && tail_bytes_ != 0) {
      return RowError(path_, row_,
                      absl::StrFormat("truncated: %d bytes left, a row takes %d", tail_bytes_, row_bytes()));
    }
    StartBatch(row_, n, dim_, out);
    scratch_.resize(n * row_bytes());
    const size_t got = std::fread(scratch_.data(), 1, scratch_.size(), file_.get());
    for (int64_t i = 0; i < n; ++i) {
      const char* src = scratch_.data() + i * row_bytes();
      if (got < static_cast<size_t>((i + 1) * row_bytes())) {
        return RowError(path_, row_ + i, "truncated (did the file change while it was read?)");
      }
      int32_t d;
      std::memcpy(&d, src, sizeof(d));
      if (d != dim_) {
        return RowError(path_, row_ + i,
                        absl::StrFormat("dimension %d differs from the first row's %d", d, dim_));
      }
      ToFloat(Elem::kU8, src + sizeof(d), dim_, out->vectors.data.data() + i * dim_);
    }
    row_ += n;
    return absl::OkStatus();
  }

 private:
  BvecsSource(std::string path, FilePtr file, int dim, int64_t size)
      : path_(std::move(path)),
        file_(std::move(file)),
        dim_(dim),
        total_rows_(size / (4 + int64_t{dim})),
        tail_bytes_(size % (4 + int64_t{dim})) {}

  int64_t row_bytes() const { return 4 + int64_t{dim_}; }

  std::string path_;
  FilePtr file_;
  int dim_;
  int64_t total_rows_;  // whole rows the file size allows
  int64_t tail_bytes_;  // bytes of a partial last row (an error once reached)
  int64_t row_ = 0;
  std::vector<char> scratch_;
};

// .hdf5 / .h5: one 2-D floating-point dataset, read by hyperslabs.

#ifdef SHARDVEC_HAVE_HDF5

// Owns one HDF5 identifier and closes it with the matching H5*close.
class H5Id {
 public:
  H5Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  H5Id(H5Id&& other) noexcept : id_(std::exchange(other.id_, -1)), close_(other.close_) {}
  H5Id& operator=(H5Id&&) = delete;
  ~H5Id() {
    if (id_ >= 0) close_(id_);
  }
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

herr_t KeepInnermostError(unsigned n, const H5E_error2_t* error, void* text) {
  if (n == 0 && error->desc != nullptr) *static_cast<std::string*>(text) = error->desc;
  return 0;
}

// The most specific message on HDF5's error stack (automatic printing is off).
std::string H5ErrorText() {
  std::string text;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, KeepInnermostError, &text);
  return text.empty() ? "unknown HDF5 error" : text;
}

herr_t CollectLinkName(hid_t, const char* name, const H5L_info_t*, void* names) {
  static_cast<std::vector<std::string>*>(names)->push_back(name);
  return 0;
}

std::vector<std::string> RootNames(hid_t file) {
  std::vector<std::string> names;
  H5Literate(file, H5_INDEX_NAME, H5_ITER_INC, nullptr, CollectLinkName, &names);
  return names;
}

const char* H5ClassName(H5T_class_t c) {
  switch (c) {
    case H5T_INTEGER:
      return "integers";
    case H5T_STRING:
      return "strings";
    case H5T_COMPOUND:
      return "compound records";
    default:
      return "a non-float type";
  }
}

class Hdf5Source : public VectorSource {
 public:
  static absl::StatusOr<std::unique_ptr<VectorSource>> Open(const std::string& path, const std::string& name);

  int dim() const override { return dim_; }
  int64_t total_rows() const override { return rows_; }
  const char* format() const override { return "hdf5"; }

  absl::Status Next(int64_t max_rows, SourceBatch* out) override {
    absl::Status s = CheckMaxRows(max_rows);
    if (!s.ok()) return s;
    const int64_t n = std::min(max_rows, rows_ - row_);
    StartBatch(row_, n, dim_, out);
    if (n == 0) return absl::OkStatus();
    const hsize_t start[2] = {static_cast<hsize_t>(row_), 0};
    const hsize_t count[2] = {static_cast<hsize_t>(n), static_cast<hsize_t>(dim_)};
    H5Id memory(H5Screate_simple(2, count, nullptr), H5Sclose);
    // HDF5 converts float64 (or float16) storage to the float32 memory type.
    if (!memory.ok() ||
        H5Sselect_hyperslab(space_.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
        H5Dread(dataset_.get(), H5T_NATIVE_FLOAT, memory.get(), space_.get(), H5P_DEFAULT,
                out->vectors.data.data()) < 0) {
      return RowError(path_, row_, absl::StrCat("HDF5 read failed: ", H5ErrorText()));
    }
    row_ += n;
    return absl::OkStatus();
  }

 private:
  Hdf5Source(std::string path, H5Id file, H5Id dataset, H5Id space, int64_t rows, int dim)
      : path_(std::move(path)),
        file_(std::move(file)),
        dataset_(std::move(dataset)),
        space_(std::move(space)),
        rows_(rows),
        dim_(dim) {}

  std::string path_;
  H5Id file_;  // declared first so that it closes last
  H5Id dataset_;
  H5Id space_;  // the dataset's file space; each Next selects its rows in it
  int64_t rows_;
  int dim_;
  int64_t row_ = 0;
};

absl::StatusOr<std::unique_ptr<VectorSource>> Hdf5Source::Open(const std::string& path,
                                                               const std::string& name) {
  if (absl::StatusOr<FilePtr> probe = OpenFile(path); !probe.ok())
    return probe.status();                      // NOT_FOUND + errno
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors come back as Status, not on stderr
  if (H5Fis_hdf5(path.c_str()) <= 0) return HeaderError(path, "not an HDF5 file");
  H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.ok()) return HeaderError(path, absl::StrCat("HDF5 cannot open it: ", H5ErrorText()));
  if (name.empty() || H5Lexists(file.get(), name.c_str(), H5P_DEFAULT) <= 0) {
    return HeaderError(path, absl::StrFormat("no dataset \"%s\"; the file has: %s", name,
                                             absl::StrJoin(RootNames(file.get()), ", ")));
  }
  H5Id dataset(H5Dopen2(file.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!dataset.ok()) return HeaderError(path, absl::StrFormat("\"%s\" is not a dataset", name));
  H5Id type(H5Dget_type(dataset.get()), H5Tclose);
  const H5T_class_t type_class = H5Tget_class(type.get());
  if (type_class != H5T_FLOAT) {
    return HeaderError(
        path, absl::StrFormat("dataset \"%s\" holds %s, not float vectors", name, H5ClassName(type_class)));
  }
  H5Id space(H5Dget_space(dataset.get()), H5Sclose);
  hsize_t dims[2] = {0, 0};
  const int ndims = H5Sget_simple_extent_ndims(space.get());
  if (ndims != 2 || H5Sget_simple_extent_dims(space.get(), dims, nullptr) != 2) {
    return HeaderError(
        path, absl::StrFormat("dataset \"%s\" has %d dimensions; expected 2 (rows, dim)", name, ndims));
  }
  if (dims[1] < 1 || dims[1] > static_cast<hsize_t>(kMaxDim)) {
    return HeaderError(path, absl::StrFormat("dataset \"%s\": dimension %d is not plausible", name, dims[1]));
  }
  return std::unique_ptr<VectorSource>(new Hdf5Source(path, std::move(file), std::move(dataset),
                                                      std::move(space), static_cast<int64_t>(dims[0]),
                                                      static_cast<int>(dims[1])));
}

absl::StatusOr<std::unique_ptr<VectorSource>> OpenHdf5(const std::string& path,
                                                       const SourceOptions& options) {
  return Hdf5Source::Open(path, options.hdf5_dataset);
}

absl::StatusOr<IntMatrix> ReadHdf5IntsImpl(const std::string& path, const std::string& name) {
  if (absl::StatusOr<FilePtr> probe = OpenFile(path); !probe.ok()) return probe.status();
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  if (H5Fis_hdf5(path.c_str()) <= 0) return HeaderError(path, "not an HDF5 file");
  H5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.ok()) return HeaderError(path, absl::StrCat("HDF5 cannot open it: ", H5ErrorText()));
  if (H5Lexists(file.get(), name.c_str(), H5P_DEFAULT) <= 0) {
    return HeaderError(path, absl::StrFormat("no dataset \"%s\"; the file has: %s", name,
                                             absl::StrJoin(RootNames(file.get()), ", ")));
  }
  H5Id dataset(H5Dopen2(file.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
  H5Id type(H5Dget_type(dataset.get()), H5Tclose);
  if (!dataset.ok() || H5Tget_class(type.get()) != H5T_INTEGER) {
    return HeaderError(path, absl::StrFormat("dataset \"%s\" does not hold integers", name));
  }
  H5Id space(H5Dget_space(dataset.get()), H5Sclose);
  hsize_t dims[2] = {0, 0};
  if (H5Sget_simple_extent_ndims(space.get()) != 2 || H5Sget_simple_extent_dims(space.get(), dims, nullptr) != 2) {
    return HeaderError(path, absl::StrFormat("dataset \"%s\" is not 2-D", name));
  }
  IntMatrix m{static_cast<int64_t>(dims[0]), static_cast<int>(dims[1]),
              std::vector<int32_t>(static_cast<size_t>(dims[0] * dims[1]))};
  if (H5Dread(dataset.get(), H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, m.data.data()) < 0) {
    return HeaderError(path, absl::StrCat("HDF5 read failed: ", H5ErrorText()));
  }
  return m;
}

#else

absl::StatusOr<IntMatrix> ReadHdf5IntsImpl(const std::string& path, const std::string&) {
  return absl::UnimplementedError(absl::StrCat(path, ": this build has no HDF5 support (portable build)"));
}

absl::StatusOr<std::unique_ptr<VectorSource>> OpenHdf5(const std::string& path, const SourceOptions&) {
  return absl::UnimplementedError(
      absl::StrCat(path, ": this build has no HDF5 support (portable build); convert to .fbin or .npy"));
}

#endif  // SHARDVEC_HAVE_HDF5

// .jsonl: one object per line; the accepted keys are documented in the header.

struct JsonRow {
  std::vector<float> vector;
  bool has_vector = false;
  std::optional<uint64_t> id;
  std::string text;                             // "" = none
  std::map<std::string, std::string> metadata;  // empty = none
};

// nlohmann's messages start with "[json.exception.parse_error.101] " and count
// lines within the parsed text, always 1 here; the caller names the file's line.
std::string JsonMessage(const nlohmann::json::exception& e) {
  absl::string_view what = e.what();
  const size_t bracket = what.find("] ");
  if (bracket != absl::string_view::npos) what.remove_prefix(bracket + 2);
  return absl::StrReplaceAll(what, {{"at line 1, column", "at column"}});
}

absl::Status ParseVector(const nlohmann::json& v, std::vector<float>* out) {
  if (!v.is_array() || v.empty())
    return absl::InvalidArgumentError("\"vector\" must be a non-empty array of numbers");
  out->clear();
  for (const nlohmann::json& x : v) {
    if (!x.is_number()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("vector[%d] is %s, not a number", out->size(), x.dump()));
    }
    out->push_back(x.get<float>());
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ParseId(const nlohmann::json& v) {
  // nlohmann stores every non-negative integer literal as unsigned.
  if (v.is_number_unsigned() && v.get<uint64_t>() != std::numeric_limits<uint64_t>::max())
    return v.get<uint64_t>();
  if (v.is_number_integer() && !v.is_number_unsigned()) {
    if (v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());  // "-0"
    return absl::InvalidArgumentError(absl::StrCat("id ", v.dump(), " is negative"));
  }
  return absl::InvalidArgumentError(absl::StrCat("id ", v.dump(), " is not an integer in [0, 2^64-2]"));
}

absl::Status ParseMetadata(const nlohmann::json& v, std::map<std::string, std::string>* out) {
  out->clear();
  if (v.is_null()) return absl::OkStatus();
  if (!v.is_object()) return absl::InvalidArgumentError("\"metadata\" must be an object");
  for (const auto& [key, value] : v.items()) {
    if (value.is_string()) {
      (*out)[key] = value.get<std::string>();
    } else if (value.is_number() || value.is_boolean()) {
      (*out)[key] = value.dump();
    } else if (!value.is_null()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "metadata \"%s\" is %s; values must be strings, numbers or booleans", key, value.type_name()));
    }
  }
  return absl::OkStatus();
}

// Parses one line; the message of an error is the problem alone, without path or row.
absl::Status ParseJsonRow(const std::string& line, JsonRow* row) {
  try {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.is_object())
      return absl::InvalidArgumentError(absl::StrCat("not a JSON object but ", j.type_name()));
    for (const auto& item : j.items()) {
      const std::string& key = item.key();
      if (key != "id" && key != "vector" && key != "text" && key != "metadata") {
        return absl::InvalidArgumentError(
            absl::StrFormat("unknown key \"%s\" (expected id, vector, text, metadata)", key));
      }
    }
    const auto vector = j.find("vector");
    row->has_vector = vector != j.end() && !vector->is_null();
    row->vector.clear();
    if (row->has_vector) {
      absl::Status s = ParseVector(*vector, &row->vector);
      if (!s.ok()) return s;
    }
    row->id.reset();
    if (const auto id = j.find("id"); id != j.end()) {
      absl::StatusOr<uint64_t> parsed = ParseId(*id);
      if (!parsed.ok()) return parsed.status();
      row->id = *parsed;
    }
    row->text.clear();
    if (const auto text = j.find("text"); text != j.end() && !text->is_null()) {
      if (!text->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat("\"text\" must be a string, not ", text->type_name()));
      }
      row->text = text->get<std::string>();
    }
    const auto metadata = j.find("metadata");
    return ParseMetadata(metadata == j.end() ? nlohmann::json() : *metadata, &row->metadata);
  } catch (const nlohmann::json::exception& e) {  // nlohmann throws; nothing escapes this module
    return absl::InvalidArgumentError(absl::StrCat("bad JSON: ", JsonMessage(e)));
  }
}

class JsonlSource : public VectorSource {
 public:
  // Reads the first row at once so that dim() is known after Open.
  static absl::StatusOr<std::unique_ptr<VectorSource>> Open(const std::string& path) {
    std::ifstream in(path);
    if (!in) return CannotOpen(path);
    std::unique_ptr<JsonlSource> source(new JsonlSource(path, std::move(in)));
    absl::StatusOr<bool> got = source->ReadRow(&source->pending_);
    if (!got.ok()) return got.status();
    source->has_pending_ = *got;
    return std::unique_ptr<VectorSource>(std::move(source));
  }

  int dim() const override { return dim_; }
  // 0 for a file without records (Open read no row), else unknown until read.
  int64_t total_rows() const override { return row_ == 0 ? 0 : -1; }
  const char* format() const override { return "jsonl"; }

  absl::Status Next(int64_t max_rows, SourceBatch* out) override {
    absl::Status s = CheckMaxRows(max_rows);
    if (!s.ok()) return s;
    StartBatch(row_ - (has_pending_ ? 1 : 0), 0, dim_, out);
    bool any_text = false;
    bool any_metadata = false;
    while (out->vectors.rows < max_rows) {
      if (!has_pending_) {
        absl::StatusOr<bool> got = ReadRow(&pending_);
        if (!got.ok()) return got.status();
        if (!*got) break;
      }
      has_pending_ = false;
      out->vectors.data.insert(out->vectors.data.end(), pending_.vector.begin(), pending_.vector.end());
      ++out->vectors.rows;
      if (pending_.id) out->ids.push_back(*pending_.id);
      any_text |= !pending_.text.empty();
      any_metadata |= !pending_.metadata.empty();
      out->texts.push_back(std::move(pending_.text));
      out->metadata.push_back(std::move(pending_.metadata));
    }
    if (!any_text) out->texts.clear();
    if (!any_metadata) out->metadata.clear();
    return absl::OkStatus();
  }

 private:
  JsonlSource(std::string path, std::ifstream in) : path_(std::move(path)), in_(std::move(in)) {}

  // Reads the next non-blank line into *row; false at the end of the file.
  absl::StatusOr<bool> ReadRow(JsonRow* row) {
    std::string line;
    do {
      if (!std::getline(in_, line)) {
        if (in_.bad()) return absl::DataLossError(absl::StrCat(path_, ": read error after line ", line_));
        return false;
      }
      ++line_;
    } while (absl::StripAsciiWhitespace(line).empty());
    absl::Status s = ParseJsonRow(line, row);
    if (s.ok()) s = CheckConsistent(*row);
    if (!s.ok()) return RowError(path_, row_, absl::StrCat(s.message(), " (line ", line_, ")"));
    ++row_;
    return true;
  }

  // The first row fixes the dimension and whether rows carry ids and vectors.
  absl::Status CheckConsistent(const JsonRow& row) {
    const int64_t n = static_cast<int64_t>(row.vector.size());
    if (!row.has_vector && row.text.empty()) {
      return absl::InvalidArgumentError(
          "no \"vector\" and no \"text\" (a row without a vector needs the text to embed)");
    }
    if (row_ == 0) {
      if (n > kMaxDim) return absl::InvalidArgumentError(absl::StrFormat("dimension %d is not plausible", n));
      dim_ = static_cast<int>(n);
      has_ids_ = row.id.has_value();
      has_vectors_ = row.has_vector;
      return absl::OkStatus();
    }
    if (row.has_vector != has_vectors_) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s \"vector\" but row 0 %s; either every row has a vector or none does",
                          has_vectors_ ? "has no" : "has a", has_vectors_ ? "has one" : "has none"));
    }
    if (n != dim_) {
      return absl::InvalidArgumentError(
          absl::StrFormat("vector has %d components; the first row's has %d", n, dim_));
    }
    if (row.id.has_value() != has_ids_) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s \"id\" but row 0 %s; either every row has an id or none does",
                          has_ids_ ? "has no" : "has an", has_ids_ ? "has one" : "has none"));
    }
    return absl::OkStatus();
  }

  std::string path_;
  std::ifstream in_;
  int dim_ = 0;
  bool has_ids_ = false;
  bool has_vectors_ = true;
  int64_t row_ = 0;   // rows parsed so far
  int64_t line_ = 0;  // lines read so far, blank ones included
  JsonRow pending_;   // read but not yet returned: the first row, read by Open
  bool has_pending_ = false;
};

using Opener = absl::StatusOr<std::unique_ptr<VectorSource>> (*)(const std::string&, const SourceOptions&);

struct Format {
  const char* extension;
  Opener open;
};

const Format kFormats[] = {
    {".fvecs", [](const std::string& p, const SourceOptions&) { return FvecsSource::Open(p); }},
    {".bvecs", [](const std::string& p, const SourceOptions&) { return BvecsSource::Open(p); }},
    {".fbin", [](const std::string& p, const SourceOptions&) { return OpenBin(p, "fbin", Elem::kF32); }},
    {".u8bin", [](const std::string& p, const SourceOptions&) { return OpenBin(p, "u8bin", Elem::kU8); }},
    {".i8bin", [](const std::string& p, const SourceOptions&) { return OpenBin(p, "i8bin", Elem::kI8); }},
    {".npy", [](const std::string& p, const SourceOptions&) { return OpenNpy(p); }},
    {".hdf5", OpenHdf5},
    {".h5", OpenHdf5},
    {".jsonl", [](const std::string& p, const SourceOptions&) { return JsonlSource::Open(p); }},
};

}  // namespace

absl::StatusOr<std::unique_ptr<VectorSource>> VectorSource::Open(const std::string& path,
                                                                 const SourceOptions& options) {
  const std::string lower = absl::AsciiStrToLower(path);
  std::vector<std::string> known;
  for (const Format& f : kFormats) {
    if (absl::EndsWith(lower, f.extension)) return f.open(path, options);
    known.push_back(f.extension);
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": unknown vector file extension; expected one of ", absl::StrJoin(known, " ")));
}

absl::StatusOr<IntMatrix> ReadHdf5Ints(const std::string& path, const std::string& name) {
  return ReadHdf5IntsImpl(path, name);
}

}  // namespace shardvec
