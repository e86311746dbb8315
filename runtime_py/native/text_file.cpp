#include "text_file.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "errors.h"

namespace gemma_edge {

namespace {
std::string named(const std::string& what, const std::string& path) { return what.empty() ? path : what + " " + path; }
}  // namespace

std::string read_text_file(const std::string& what, const std::string& path, size_t limit) {
  int fd = path == "-" ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw BadInput(named(what, path) + ": " + std::strerror(errno));
  struct stat st{};
  if (path != "-" && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
    ::close(fd);
    throw BadInput(named(what, path) + ": expected a regular file");
  }
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, size_t(n));
    if (text.size() > limit) {
      if (fd != STDIN_FILENO) ::close(fd);
      throw BadInput(named(what, path) + ": more than " + std::to_string(limit) + " bytes");
    }
  }
  if (fd != STDIN_FILENO) ::close(fd);
  return text;
}

void check_utf8(const std::string& s, const std::string& where) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char b = p[i];
    size_t len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    bool ok = len != 0 && i + len <= n && !(len == 2 && b < 0xC2) && !(len == 4 && b > 0xF4);
    for (size_t k = 1; ok && k < len; ++k) ok = (p[i + k] & 0xC0) == 0x80;
    if (ok && len == 3) ok = !(b == 0xE0 && p[i + 1] < 0xA0) && !(b == 0xED && p[i + 1] >= 0xA0);  // overlong, surrogates
    if (ok && len == 4) ok = !(b == 0xF0 && p[i + 1] < 0x90) && !(b == 0xF4 && p[i + 1] >= 0x90);
    if (!ok) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "%#04x", b);
      throw BadInput(where + ": not valid UTF-8 text (byte " + hex + " at offset " + std::to_string(i) + ")");
    }
    i += len;
  }
}

int64_t regular_file_size(const std::string& what, const std::string& path) {
  struct stat st{};
  if (lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return -1;
    throw BadInput(named(what, path) + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) throw BadInput(named(what, path) + ": expected a regular file (not a link, FIFO or folder)");
  return int64_t(st.st_size);
}

std::string sha256_file(const std::string& path, int64_t size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw BadInput(path + ": " + std::strerror(errno));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    ::close(fd);
    throw std::runtime_error("OpenSSL: SHA-256 unavailable");
  }
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  std::vector<unsigned char> buf(1 << 20);
  int64_t total = 0;
  for (;;) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      std::string err = std::strerror(errno);
      ::close(fd);
      throw BadInput(path + ": read failed: " + err);
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx.get(), buf.data(), size_t(n));
    total += n;
  }
  ::close(fd);
  if (total != size)
    throw BadInput(path + ": changed while it was read (" + std::to_string(total) + " bytes, " +
                   std::to_string(size) + " before)");
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) out += {hex[md[i] >> 4], hex[md[i] & 15]};
  return out;
}

}  // namespace gemma_edge
