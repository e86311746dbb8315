// gemma-edge-image-golden: the native image preprocessing (image.h) on one image, its arrays written raw so
// tests/test_image_preprocess.py compares them with Python's and transformers' exactly.
//
//   gemma-edge-image-golden --image FILE --budget N --out PREFIX [--repeat R]
//   gemma-edge-image-golden --rgb FILE HEIGHT WIDTH --budget N --out PREFIX [--repeat R]
//   gemma-edge-image-golden --rgb FILE HEIGHT WIDTH --resize H W --out PREFIX
//
// --image decodes a PNG/JPEG (stb_image, the EXIF orientation applied); --rgb reads HEIGHT·WIDTH·3 raw RGB8
// bytes. Writes PREFIX.decoded.u8 (the RGB8 input, [h, w, 3]), PREFIX.resized.u8 ([H', W', 3]),
// PREFIX.pixels.f32 ([9·N, 768]) and PREFIX.positions.i64 ([9·N, 2]), little-endian as this machine stores
// them, and prints {"height", "width", "resized": [H', W'], "soft_tokens", "budget", "preprocess_ms"} — the
// median of R runs of the resize + patchify (decoding excluded). --resize writes only PREFIX.resized.u8, the
// bicubic resize to H x W (any size: the resampler alone, checked against PIL's over random size pairs).
// Exit status 2 on bad input, with its message.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "errors.h"
#include "image.h"

namespace {

void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream f(path, std::ios::binary);
  if (!f || !f.write(static_cast<const char*>(data), std::streamsize(bytes)))
    throw std::runtime_error(path + ": cannot write");
}

int parse_int(const char* s, const char* what) {
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (!*s || *end || v < 0 || v > 1 << 30)
    throw gemma_edge::BadInput(std::string(what) + ": expected a non-negative integer, found '" + s + "'");
  return int(v);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace gemma_edge;
  try {
    std::string image, rgb, out;
    int height = 0, width = 0, budget = 0, repeat = 1, resize_h = 0, resize_w = 0;
    for (int i = 1; i < argc; i++) {
      const std::string a = argv[i];
      auto next = [&](const char* flag) -> const char* {
        if (i + 1 >= argc) throw BadInput(std::string(flag) + ": expected a value, found none");
        return argv[++i];
      };
      if (a == "--image") image = next("--image");
      else if (a == "--rgb") {
        rgb = next("--rgb");
        height = parse_int(next("--rgb HEIGHT"), "--rgb HEIGHT");
        width = parse_int(next("--rgb WIDTH"), "--rgb WIDTH");
      } else if (a == "--budget") budget = parse_int(next("--budget"), "--budget");
      else if (a == "--out") out = next("--out");
      else if (a == "--resize") {
        resize_h = parse_int(next("--resize H"), "--resize H");
        resize_w = parse_int(next("--resize W"), "--resize W");
      }
      else if (a == "--repeat") repeat = std::max(1, parse_int(next("--repeat"), "--repeat"));
      else throw BadInput("unknown argument '" + a + "'");
    }
    if (image.empty() == rgb.empty() || out.empty())
      throw BadInput("usage: gemma-edge-image-golden (--image FILE | --rgb FILE HEIGHT WIDTH) --budget N --out PREFIX "
                     "[--repeat R]");
    if (!resize_h) check_image_budget(budget);

    Rgb8Image img;
    if (!image.empty()) {
      img = decode_image_file(image);
    } else {
      img.height = height;
      img.width = width;
      img.pixels.resize(size_t(height) * width * 3);
      std::ifstream f(rgb, std::ios::binary | std::ios::ate);
      if (!f) throw BadInput(rgb + ": cannot open");
      if (size_t(f.tellg()) != img.pixels.size())
        throw BadInput(rgb + ": expected " + std::to_string(img.pixels.size()) + " bytes (" + std::to_string(height) +
                       "x" + std::to_string(width) + "x3), found " + std::to_string(f.tellg()));
      f.seekg(0);
      f.read(reinterpret_cast<char*>(img.pixels.data()), std::streamsize(img.pixels.size()));
    }

    if (resize_h) {
      const Rgb8Image resized = resize_bicubic(img, resize_h, resize_w);
      write_file(out + ".resized.u8", resized.pixels.data(), resized.pixels.size());
      std::printf("{\"height\": %d, \"width\": %d, \"resized\": [%d, %d]}\n", img.height, img.width,
                  resized.height, resized.width);
      return 0;
    }
    std::vector<double> ms;
    PreparedImage prep;
    for (int r = 0; r < repeat; r++) {
      const auto t0 = std::chrono::steady_clock::now();
      prep = preprocess_image(img, budget);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const Rgb8Image resized = resize_bicubic(img, prep.height, prep.width);

    write_file(out + ".decoded.u8", img.pixels.data(), img.pixels.size());
    write_file(out + ".resized.u8", resized.pixels.data(), resized.pixels.size());
    write_file(out + ".pixels.f32", prep.pixel_values.data(), prep.pixel_values.size() * sizeof(float));
    write_file(out + ".positions.i64", prep.positions.data(), prep.positions.size() * sizeof(int64_t));
    std::printf("{\"height\": %d, \"width\": %d, \"resized\": [%d, %d], \"soft_tokens\": %d, \"budget\": %d, "
                "\"preprocess_ms\": %.3f}\n",
                img.height, img.width, prep.height, prep.width, prep.soft_tokens, prep.budget, ms[ms.size() / 2]);
    return 0;
  } catch (const BadInput& e) {
    std::fprintf(stderr, "gemma-edge-image-golden: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gemma-edge-image-golden: %s\n", e.what());
    return 1;
  }
}
