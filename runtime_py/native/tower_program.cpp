#include "tower_program.h"

#include <executorch/runtime/platform/runtime.h>
#include <limits.h>
#include <stdlib.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>

#include "errors.h"
#include "text_file.h"

namespace gemma_edge {

using executorch::extension::module::Module;

std::unique_ptr<Module> load_tower_program(std::string& path, int64_t bytes, const std::string& sha256,
                                           const std::string& role, const std::string& method,
                                           const std::string& method_key, double* verify_s) {
  auto t0 = std::chrono::steady_clock::now();
  char real[PATH_MAX];
  if (!realpath(path.c_str(), real)) throw BadInput(path + ": " + std::strerror(errno));
  path = real;
  // the file must be the manifest's, byte for byte, before ExecuTorch parses any of it
  const int64_t found_bytes = regular_file_size(role + " program", path);
  if (found_bytes != bytes)
    throw BadInput(path + ": bytes: expected " + std::to_string(bytes) + " (the manifest's files." + role +
                   "), found " + std::to_string(found_bytes));
  if (const std::string found = sha256_file(path, found_bytes); found != sha256)
    throw BadInput(path + ": sha256: expected " + sha256 + " (the manifest's files." + role + "), found " + found);
  if (verify_s) *verify_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  executorch::runtime::runtime_init();
  auto module = std::make_unique<Module>(path, Module::LoadMode::Mmap);
  if (module->load(executorch::runtime::Program::Verification::InternalConsistency) != executorch::runtime::Error::Ok)
    throw BadInput(path + ": not a program this runtime can run (ExecuTorch error while verifying it)");
  if (module->load_method(method) != executorch::runtime::Error::Ok)
    throw BadInput(path + ": cannot load method '" + method + "' (the manifest's " + method_key +
                   "; missing, or not a program this runtime runs)");
  return module;
}

bool process_maps(const std::string& path) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line))
    if (line.size() >= path.size() && line.compare(line.size() - path.size(), path.size(), path) == 0) return true;
  return false;
}

std::string shape_text(executorch::runtime::Span<const int32_t> sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

}  // namespace gemma_edge
