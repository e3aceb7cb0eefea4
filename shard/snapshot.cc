#include "shard/snapshot.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace shardvec::shard {
namespace {

constexpr char kHeadMagic[8] = {'S', 'V', 'S', 'N', 'A', 'P', '0', '1'};
constexpr char kTailMagic[8] = {'S', 'V', 'S', 'N', 'A', 'P', 'O', 'K'};
// payload length (u64) + crc (u32) + tail magic
constexpr size_t kTrailerBytes = 8 + 4 + 8;

absl::Status IoError(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// Buffered file writer that keeps a running CRC-32 and byte count.
class FileSink final : public index::ByteSink {
 public:
  FileSink(std::FILE* f, std::string path) : file_(f), path_(std::move(path)) {}
  absl::Status Write(const void* data, size_t size) override {
    if (size > 0 && std::fwrite(data, 1, size, file_) != size) return IoError("cannot write", path_);
    Account(data, size);
    return absl::OkStatus();
  }
  void Account(const void* data, size_t size) {
    const auto* p = static_cast<const Bytef*>(data);
    while (size > 0) {
      const uInt chunk = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
      crc_ = crc32(crc_, p, chunk);
      p += chunk;
      size -= chunk;
    }
  }
  uint32_t crc() const { return static_cast<uint32_t>(crc_); }

 private:
  std::FILE* file_;
  std::string path_;
  uLong crc_ = crc32(0L, Z_NULL, 0);
};

// Reads exactly the bytes of one region of a file.
class FileSource final : public index::ByteSource {
 public:
  FileSource(std::FILE* f, uint64_t limit) : file_(f), left_(limit) {}
  absl::Status Read(void* data, size_t size) override {
    if (size > left_) return absl::DataLossError("snapshot payload ends early");
    if (size > 0 && std::fread(data, 1, size, file_) != size) return absl::DataLossError("snapshot file ends early");
    left_ -= size;
    return absl::OkStatus();
  }
  uint64_t left() const { return left_; }

 private:
  std::FILE* file_;
  uint64_t left_;
};

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

absl::Status FsyncDir(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError("cannot open directory of", path);
  int rc = ::fsync(fd);
  ::close(fd);
  return rc == 0 ? absl::OkStatus() : IoError("cannot fsync directory of", path);
}

}  // namespace

absl::Status WriteSnapshot(const std::string& path, const store::SnapshotHeader& header, const index::Index& index) {
  const std::string tmp = path + ".tmp";
  File f(std::fopen(tmp.c_str(), "wb"));
  if (f == nullptr) return IoError("cannot create", tmp);
  std::vector<char> buffer(1 << 20);
  std::setvbuf(f.get(), buffer.data(), _IOFBF, buffer.size());
  if (std::fwrite(kHeadMagic, 1, sizeof(kHeadMagic), f.get()) != sizeof(kHeadMagic)) return IoError("cannot write", tmp);
  FileSink sink(f.get(), tmp);
  const std::string head = header.SerializeAsString();
  const uint32_t head_size = static_cast<uint32_t>(head.size());
  absl::Status status = sink.Write(&head_size, sizeof(head_size));
  if (status.ok()) status = sink.Write(head.data(), head.size());
  // The payload's length is only known afterwards: counted through a wrapper.
  struct CountingSink final : index::ByteSink {
    explicit CountingSink(FileSink* s) : inner(s) {}
    absl::Status Write(const void* data, size_t size) override {
      bytes += size;
      return inner->Write(data, size);
    }
    FileSink* inner;
    uint64_t bytes = 0;
  } payload(&sink);
  if (status.ok()) status = index.Save(&payload);
  if (status.ok()) status = sink.Write(&payload.bytes, sizeof(payload.bytes));
  if (!status.ok()) {
    std::remove(tmp.c_str());
    return status;
  }
  const uint32_t crc = sink.crc();
  if (std::fwrite(&crc, sizeof(crc), 1, f.get()) != 1 ||
      std::fwrite(kTailMagic, 1, sizeof(kTailMagic), f.get()) != sizeof(kTailMagic) || std::fflush(f.get()) != 0 ||
      ::fsync(::fileno(f.get())) != 0) {
    status = IoError("cannot write", tmp);
  }
  if (std::fclose(f.release()) != 0 && status.ok()) status = IoError("cannot close", tmp);
  if (status.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) status = IoError("cannot rename onto", path);
  if (!status.ok()) {
    std::remove(tmp.c_str());
    return status;
  }
  return FsyncDir(path);
}

absl::StatusOr<Snapshot> ReadSnapshot(const std::string& path, uint32_t cid, const index::IndexSpec& spec) {
  File f(std::fopen(path.c_str(), "rb"));
  if (f == nullptr) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no snapshot ", path));
    return IoError("cannot open", path);
  }
  auto corrupt = [&path](const std::string& why) {
    return absl::DataLossError(absl::StrCat("snapshot ", path, ": ", why));
  };
  std::fseek(f.get(), 0, SEEK_END);
  const long size = std::ftell(f.get());
  if (size < static_cast<long>(sizeof(kHeadMagic) + 4 + kTrailerBytes)) return corrupt("too short");
  // Trailer and CRC first: nothing else is parsed from a damaged file.
  char tail[kTrailerBytes];
  std::fseek(f.get(), size - static_cast<long>(kTrailerBytes), SEEK_SET);
  char head_magic[sizeof(kHeadMagic)];
  if (std::fread(tail, 1, sizeof(tail), f.get()) != sizeof(tail)) return corrupt("cannot read the trailer");
  if (std::memcmp(tail + 12, kTailMagic, sizeof(kTailMagic)) != 0) return corrupt("no end marker (truncated?)");
  uint32_t want_crc;
  std::memcpy(&want_crc, tail + 8, sizeof(want_crc));
  std::fseek(f.get(), 0, SEEK_SET);
  if (std::fread(head_magic, 1, sizeof(head_magic), f.get()) != sizeof(head_magic) ||
      std::memcmp(head_magic, kHeadMagic, sizeof(kHeadMagic)) != 0) {
    return corrupt("not a shardvec snapshot");
  }
  uLong crc = crc32(0L, Z_NULL, 0);
  std::vector<unsigned char> buffer(1 << 20);
  uint64_t left = static_cast<uint64_t>(size) - sizeof(kHeadMagic) - 12;  // up to and including the length
  while (left > 0) {
    const size_t n = std::fread(buffer.data(), 1, std::min<uint64_t>(left, buffer.size()), f.get());
    if (n == 0) return corrupt("read error");
    crc = crc32(crc, buffer.data(), static_cast<uInt>(n));
    left -= n;
  }
  if (static_cast<uint32_t>(crc) != want_crc) return corrupt("checksum mismatch");

  std::fseek(f.get(), sizeof(kHeadMagic), SEEK_SET);
  uint32_t head_size = 0;
  if (std::fread(&head_size, sizeof(head_size), 1, f.get()) != 1 || head_size > static_cast<uint32_t>(size)) {
    return corrupt("bad header length");
  }
  std::string head(head_size, '\0');
  Snapshot snap;
  if (std::fread(head.data(), 1, head_size, f.get()) != head_size || !snap.header.ParseFromString(head)) {
    return corrupt("header does not parse");
  }
  if (snap.header.cid() != cid) return corrupt(absl::StrCat("belongs to collection id ", snap.header.cid()));
  uint64_t payload_size;
  std::memcpy(&payload_size, tail, sizeof(payload_size));
  FileSource source(f.get(), payload_size);
  absl::StatusOr<std::unique_ptr<index::Index>> index = index::Index::Load(spec, &source);
  if (!index.ok()) return corrupt(std::string(index.status().message()));
  if (source.left() != 0) return corrupt("payload longer than the index");
  snap.index = *std::move(index);
  return snap;
}

}  // namespace shardvec::shard
