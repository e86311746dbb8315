// Small files the host reads whole (manifest, prompt, ids, tokenizer.json) and the program's digest.
#pragma once

#include <cstdint>
#include <string>

namespace gemma_edge {

// The whole of a regular file (or stdin for "-"), at most `limit` bytes; a FIFO or device is refused
// without blocking on it. `what` (a flag, or "") opens each message, before the path.
std::string read_text_file(const std::string& what, const std::string& path, size_t limit);

// BadInput "`where`: not valid UTF-8 text (byte 0xNN at offset K)" unless `text` is UTF-8.
void check_utf8(const std::string& text, const std::string& where);

// The size of `path` if it is a regular file (not followed through a link); -1 if it does not exist;
// anything else under that name is refused (BadInput naming `what` and the path).
int64_t regular_file_size(const std::string& what, const std::string& path);

// SHA-256 of a regular file (OpenSSL EVP), lowercase hex; `size` must be its length (else it changed).
std::string sha256_file(const std::string& path, int64_t size);

}  // namespace gemma_edge
