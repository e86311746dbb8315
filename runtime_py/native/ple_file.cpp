#include "ple_file.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>
#include <unordered_set>

namespace gemma_edge {
namespace {

constexpr char kMagic[8] = {'G', 'E', 'M', 'M', 'A', 'P', 'L', 'E'};
constexpr uint16_t kVersionMajor = 1;
constexpr uint32_t kHeaderBytes = 4096, kPageSize = 4096, kCrcCovered = 176, kIdentityOffset = 144;
constexpr uint32_t kFlagRowCrc = 1, kRowCrcBytes = 4;  // flags bit 0: a CRC-32 after every row (minor 1)
enum Dtype : uint32_t { FP32 = 0, BF16 = 1, INT8 = 2, INT4 = 3 };

template <typename T>
T field(const uint8_t* h, size_t off) {  // little-endian on every target this builds for
  T v;
  std::memcpy(&v, h + off, sizeof(T));
  return v;
}

uint64_t values_bytes(uint32_t dtype, uint64_t count) {
  switch (dtype) {
    case FP32: return 4 * count;
    case BF16: return 2 * count;
    case INT8: return count;
    default: return (count + 1) / 2;
  }
}

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) s += {d[p[i] >> 4], d[p[i] & 15]};
  return s;
}

std::string hex32(uint32_t v) {
  char b[11];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

// Bytes as text for a message: printable ASCII as is, anything else as \xNN (one line, valid UTF-8).
std::string printable(const uint8_t* p, size_t n) {
  std::string s = "'";
  for (size_t i = 0; i < n; ++i) {
    if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\'' && p[i] != '\\') {
      s += char(p[i]);
    } else {
      char b[5];
      std::snprintf(b, sizeof b, "\\x%02x", p[i]);
      s += b;
    }
  }
  return s + "'";
}

const char* file_kind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return "not a regular file";
}

// pread until `n` bytes or end of file / error; the bytes read.
size_t pread_full(int fd, uint8_t* dst, size_t n, uint64_t off, int64_t* calls) {
  size_t done = 0;
  while (done < n) {
    ssize_t got = pread(fd, dst + done, n - done, off_t(off + done));
    if (calls) ++*calls;
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    done += size_t(got);
  }
  return done;
}

}  // namespace

PleFile::PleFile(const std::string& path, const std::string& identity_hex) : path_(path) {
  auto fail = [&](const std::string& what, const std::string& expected, const std::string& found) {
    throw PleFormatError(path_ + ": " + what + ": expected " + expected + ", found " + found);
  };
  auto str = [](auto v) { std::ostringstream o; o << v; return o.str(); };
  // O_NONBLOCK: opening a FIFO for reading would wait for a writer forever; O_NOCTTY: a terminal given as the
  // path must not become ours. Neither changes anything for a regular file.
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd_ < 0) throw PleFormatError(path_ + ": cannot open: " + std::strerror(errno));
  try {
    struct stat st{};
    if (fstat(fd_, &st) != 0) throw PleFormatError(path_ + ": cannot stat: " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) fail("file type", "a regular file", file_kind(st.st_mode));  // what we opened
    fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) & ~O_NONBLOCK);
    uint64_t size = uint64_t(st.st_size);
    if (size < kHeaderBytes) fail("file size (truncated header)", "at least 4096 bytes", str(size) + " bytes");
    uint8_t h[kHeaderBytes];
    if (pread(fd_, h, kHeaderBytes, 0) != ssize_t(kHeaderBytes)) fail("header", "4096 readable bytes", "a short read");
    if (std::memcmp(h, kMagic, 8) != 0) fail("magic", "GEMMAPLE", printable(h, 8) + " (not a .ple file)");
    if (field<uint16_t>(h, 8) != kVersionMajor) fail("version_major", "1", str(field<uint16_t>(h, 8)));
    uint32_t crc = uint32_t(crc32(0L, h, kCrcCovered));
    if (crc != field<uint32_t>(h, 176)) fail("header_crc32", "the CRC-32 of header bytes [0, 176)", "a mismatch");
    if (field<uint32_t>(h, 12) != kHeaderBytes) fail("header_bytes", "4096", str(field<uint32_t>(h, 12)));
    if (field<uint32_t>(h, 56) != kPageSize) fail("page_size", "4096", str(field<uint32_t>(h, 56)));
    if (field<uint64_t>(h, 72) != kHeaderBytes) fail("data_offset", "4096", str(field<uint64_t>(h, 72)));
    vocab_size_ = field<uint32_t>(h, 16);
    num_layers_ = field<uint32_t>(h, 20);
    ple_dim_ = field<uint32_t>(h, 24);
    dtype_ = field<uint32_t>(h, 28);
    uint32_t scheme = field<uint32_t>(h, 32);
    group_size_ = field<uint32_t>(h, 36);
    row_bytes_ = field<uint32_t>(h, 40);
    row_stride_ = field<uint32_t>(h, 44);
    rows_per_group_ = field<uint32_t>(h, 48);
    group_bytes_ = field<uint32_t>(h, 52);
    uint32_t block_groups = field<uint32_t>(h, 60), num_blocks = field<uint32_t>(h, 64);
    block_groups_ = block_groups;
    row_crc_ = (field<uint32_t>(h, 68) & kFlagRowCrc) != 0;  // other flag bits: a reader ignores what it does not know
    data_offset_ = kHeaderBytes;
    embed_scale_ = field<float>(h, 104);
    for (auto [name, v] : {std::pair<const char*, uint32_t>{"vocab_size", vocab_size_}, {"num_layers", num_layers_},
                           {"ple_dim", ple_dim_}, {"rows_per_group", rows_per_group_}, {"block_groups", block_groups}})
      if (v == 0) fail(name, "> 0", "0");
    if (dtype_ > INT4) fail("dtype", "0 fp32, 1 bf16, 2 int8 or 3 int4", str(dtype_));
    uint64_t values = uint64_t(num_layers_) * ple_dim_, want_row;
    if (dtype_ == INT8 || dtype_ == INT4) {
      if (scheme != 1) fail("quant_scheme", "1 (symmetric absmax)", str(scheme));
      if (group_size_ == 0 || values % group_size_) fail("quant_group_size", "a divisor of L·P = " + str(values), str(group_size_));
      want_row = 4 * (values / group_size_) + values_bytes(dtype_, values);
    } else {
      if (scheme != 0) fail("quant_scheme", "0 (none)", str(scheme));
      if (group_size_ != 0) fail("quant_group_size (quant_scheme 0)", "0", str(group_size_));
      want_row = values_bytes(dtype_, values);
    }
    if (row_bytes_ != want_row) fail("row_bytes", str(want_row), str(row_bytes_));
    record_bytes_ = row_bytes_ + (row_crc_ ? kRowCrcBytes : 0);
    const std::string record = "row_bytes " + str(row_bytes_) + (row_crc_ ? " + 4 (flags ROW_CRC)" : "");
    if (row_stride_ % 16 || row_stride_ < record_bytes_) fail("row_stride", "a multiple of 16 ≥ " + record, str(row_stride_));
    uint64_t last_row_end = uint64_t(rows_per_group_ - 1) * row_stride_ + record_bytes_;
    if (group_bytes_ % kPageSize || group_bytes_ < last_row_end)
      fail("group_bytes", "a multiple of 4096 ≥ " + str(last_row_end), str(group_bytes_));
    uint64_t groups = ceil_div(vocab_size_, rows_per_group_);
    uint64_t checksum_offset = data_offset_ + groups * group_bytes_;
    if (num_blocks != ceil_div(groups, block_groups)) fail("num_blocks", str(ceil_div(groups, block_groups)), str(num_blocks));
    if (field<uint64_t>(h, 80) != groups * group_bytes_) fail("data_bytes", str(groups * group_bytes_), str(field<uint64_t>(h, 80)));
    if (field<uint64_t>(h, 88) != checksum_offset) fail("checksum_offset", str(checksum_offset), str(field<uint64_t>(h, 88)));
    uint64_t file_bytes = checksum_offset + ceil_div(4ull * num_blocks, kPageSize) * kPageSize;
    if (field<uint64_t>(h, 96) != file_bytes) fail("file_bytes", str(file_bytes), str(field<uint64_t>(h, 96)));
    if (size != file_bytes) fail("file size (truncated or trailing bytes)", str(file_bytes) + " bytes", str(size) + " bytes");
    if (!std::isfinite(embed_scale_)) fail("embed_scale", "a finite float", str(embed_scale_));
    checksum_offset_ = checksum_offset;
    // The identity, recomputed: SHA-256 of header[0, 144) and the checksum table, which then vouches for
    // every block CRC. Only after this is the header's identity worth comparing with the manifest's.
    std::vector<uint8_t> table(4ull * num_blocks);
    if (pread_full(fd_, table.data(), table.size(), checksum_offset, nullptr) != table.size())
      fail("checksum table", str(table.size()) + " bytes at offset " + str(checksum_offset), "a short read (the file shrank)");
    uint8_t digest[32];
    unsigned int digest_len = 0;
    std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> md(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!md || EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) != 1 || EVP_DigestUpdate(md.get(), h, kIdentityOffset) != 1 ||
        EVP_DigestUpdate(md.get(), table.data(), table.size()) != 1 || EVP_DigestFinal_ex(md.get(), digest, &digest_len) != 1)
      throw PleFormatError(path_ + ": identity: SHA-256 (OpenSSL EVP) failed");
    if (std::memcmp(digest, h + kIdentityOffset, 32) != 0)
      fail("identity", hex(h + kIdentityOffset, 32) + " (header)", hex(digest, 32) + " (sha256 of header[0:144] + checksum table)");
    block_crcs_.resize(num_blocks);
    std::memcpy(block_crcs_.data(), table.data(), table.size());  // little-endian u32s, like every field
    if (!row_crc_) block_ok_.assign(num_blocks, false);
    if (!identity_hex.empty() && hex(h + kIdentityOffset, 32) != identity_hex)
      fail("identity (the manifest's)", identity_hex, hex(h + kIdentityOffset, 32));
    posix_fadvise(fd_, 0, 0, POSIX_FADV_RANDOM);  // a read brings its pages only, no readahead
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

PleFile::~PleFile() {
  if (fd_ >= 0) ::close(fd_);
}

uint64_t PleFile::row_offset(int64_t t) const {
  return data_offset_ + uint64_t(t / rows_per_group_) * group_bytes_ + uint64_t(t % rows_per_group_) * row_stride_;
}

void PleFile::decode_row(const uint8_t* stored, float* out) const {
  const size_t n = row_values();
  const float es = embed_scale_;
  if (dtype_ == FP32) {
    std::memcpy(out, stored, 4 * n);
  } else if (dtype_ == BF16) {
    for (size_t i = 0; i < n; ++i) {
      uint32_t bits = uint32_t(field<uint16_t>(stored, 2 * i)) << 16;
      std::memcpy(out + i, &bits, 4);
    }
  } else {
    const size_t nscale = n / group_size_;
    const uint8_t* body = stored + 4 * nscale;
    for (size_t g = 0; g < nscale; ++g) {
      const float s = field<float>(stored, 4 * g);
      for (size_t i = g * group_size_; i < (g + 1) * group_size_; ++i) {
        int q;
        if (dtype_ == INT8) {
          q = int8_t(body[i]);
        } else {
          const int8_t b = int8_t(body[i / 2]);
          q = (i % 2 == 0) ? int8_t(uint8_t(b) << 4) >> 4 : b >> 4;  // arithmetic shifts sign-extend
        }
        out[i] = float(q) * s;
      }
    }
  }
  for (size_t i = 0; i < n; ++i) out[i] *= es;  // (q · s) · embed_scale, as the Python reader rounds it
}

void PleFile::check_block(uint32_t b) {
  if (block_ok_[b]) return;
  const uint64_t block_bytes = uint64_t(block_groups_) * group_bytes_;
  const uint64_t start = data_offset_ + b * block_bytes, length = std::min(block_bytes, checksum_offset_ - start);
  std::vector<uint8_t> buf(std::min<uint64_t>(length, 8u << 20));
  uLong crc = crc32(0L, Z_NULL, 0);
  for (uint64_t done = 0; done < length;) {
    size_t want = size_t(std::min<uint64_t>(buf.size(), length - done));
    if (pread_full(fd_, buf.data(), want, start + done, nullptr) != want)
      throw PleFormatError(path_ + ": data block " + std::to_string(b) + ": expected " + std::to_string(want) +
                           " bytes at offset " + std::to_string(start + done) + ", found a short read (the file shrank)");
    crc = crc32(crc, buf.data(), uInt(want));
    done += want;
  }
  posix_fadvise(fd_, off_t(start), off_t(length), POSIX_FADV_DONTNEED);  // a check must not fill the page cache
  if (uint32_t(crc) != block_crcs_[b]) {
    const uint64_t r0 = uint64_t(b) * block_groups_ * rows_per_group_;
    const uint64_t r1 = std::min<uint64_t>(vocab_size_, r0 + uint64_t(block_groups_) * rows_per_group_);
    throw PleFormatError(path_ + ": data block " + std::to_string(b) + " (bytes [" + std::to_string(start) + ", " +
                         std::to_string(start + length) + "), rows [" + std::to_string(r0) + ", " + std::to_string(r1) +
                         ")): CRC-32 expected " + hex32(block_crcs_[b]) + " (checksum table), found " + hex32(uint32_t(crc)));
  }
  block_ok_[b] = true;
}

FetchStats PleFile::fetch(const int64_t* ids, size_t n, float* out) {
  auto t0 = std::chrono::steady_clock::now();
  FetchStats st;
  st.tokens = int64_t(n);
  for (size_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= int64_t(vocab_size_))
      throw std::out_of_range(path_ + ": token id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                              ": expected 0 ≤ id < vocab_size " + std::to_string(vocab_size_));
  std::vector<int64_t> uniq(ids, ids + n);
  std::sort(uniq.begin(), uniq.end());  // file order: rows are token-major
  uniq.erase(std::unique(uniq.begin(), uniq.end()), uniq.end());
  st.unique_rows = int64_t(uniq.size());
  st.bytes_requested = st.unique_rows * row_bytes_;
  if (!row_crc_)  // a minor-0 file: each touched block against the table, before any of its rows is used
    for (int64_t t : uniq) check_block(uint32_t(uint64_t(t) / rows_per_group_ / block_groups_));
  std::unordered_set<uint64_t> pages;
  for (int64_t t : uniq) {  // announce every read first: the kernel queues them all before the first wait
    uint64_t a = row_offset(t), b = a + record_bytes_;
    posix_fadvise(fd_, off_t(a), off_t(record_bytes_), POSIX_FADV_WILLNEED);
    for (uint64_t p = a / kPageSize; p <= (b - 1) / kPageSize; ++p) pages.insert(p);
  }
  st.pages_touched = int64_t(pages.size());
  stored_.resize(uniq.size() * size_t(record_bytes_));
  for (size_t u = 0; u < uniq.size(); ++u) {
    uint8_t* dst = stored_.data() + u * record_bytes_;
    const uint64_t off = row_offset(uniq[u]);
    if (pread_full(fd_, dst, record_bytes_, off, &st.read_calls) != record_bytes_)
      throw PleFormatError(path_ + ": row " + std::to_string(uniq[u]) + ": expected " + std::to_string(record_bytes_) +
                           " bytes at offset " + std::to_string(off) + ", found a short read (the file shrank)");
    if (row_crc_) {  // the payload against the CRC-32 stored after it, over the very bytes about to be decoded
      const uint32_t want = field<uint32_t>(dst, row_bytes_), found = uint32_t(crc32(0L, dst, row_bytes_));
      if (found != want)
        throw PleFormatError(path_ + ": row " + std::to_string(uniq[u]) + " (bytes [" + std::to_string(off) + ", " +
                             std::to_string(off + row_bytes_) + ")): CRC-32 expected " + hex32(want) +
                             " (stored after the row), found " + hex32(found));
    }
  }
  const size_t rv = row_values();
  for (size_t i = 0; i < n; ++i) {
    size_t u = size_t(std::lower_bound(uniq.begin(), uniq.end(), ids[i]) - uniq.begin());
    decode_row(stored_.data() + u * record_bytes_, out + i * rv);
  }
  st.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace gemma_edge
