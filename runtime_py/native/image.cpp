// Images into the vision tower's inputs (image.h): stb_image decoding, Pillow's bicubic resampler, patches.
#include "image.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "errors.h"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_NO_STDIO
#define STBI_FAILURE_USERMSG
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"  // in stb_image.h, which is kept unchanged
#include "third_party/stb/stb_image.h"
#pragma GCC diagnostic pop

namespace gemma_edge {

// ---------------------------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------------------------

namespace {

constexpr size_t kMaxImageFileBytes = size_t(256) << 20;

uint32_t read_u16(const uint8_t* p, bool big) { return big ? (p[0] << 8 | p[1]) : (p[1] << 8 | p[0]); }
uint32_t read_u32(const uint8_t* p, bool big) {
  return big ? (uint32_t(p[0]) << 24 | p[1] << 16 | p[2] << 8 | p[3])
             : (uint32_t(p[3]) << 24 | p[2] << 16 | p[1] << 8 | p[0]);
}

// The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block, 1 (as is) when absent or unreadable:
// PIL's getexif() reads the same entry (a SHORT, or a LONG written by some tools).
int tiff_orientation(const uint8_t* p, size_t n) {
  if (n < 8 || !((p[0] == 'I' && p[1] == 'I') || (p[0] == 'M' && p[1] == 'M'))) return 1;
  const bool big = p[0] == 'M';
  if (read_u16(p + 2, big) != 42) return 1;
  const size_t ifd = read_u32(p + 4, big);
  if (ifd + 2 > n) return 1;
  const size_t count = read_u16(p + ifd, big);
  for (size_t i = 0; i < count && ifd + 2 + 12 * (i + 1) <= n; i++) {
    const uint8_t* e = p + ifd + 2 + 12 * i;
    if (read_u16(e, big) != 0x0112) continue;
    const uint32_t type = read_u16(e + 2, big);
    if (type == 3) return int(read_u16(e + 8, big));
    if (type == 4) return int(read_u32(e + 8, big));
    return 1;
  }
  return 1;
}

// The EXIF orientation of a JPEG (the first APP1 "Exif\0\0" segment before the scan, as PIL takes) or a PNG
// (its eXIf chunk, anywhere before IEND); 1 when there is none.
int exif_orientation(const uint8_t* d, size_t n) {
  static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (n >= 8 && std::memcmp(d, png_sig, 8) == 0) {
    for (size_t at = 8; at + 12 <= n;) {
      const size_t len = read_u32(d + at, true);
      if (len > n - at - 12) return 1;
      const uint8_t* type = d + at + 4;
      const uint8_t* body = d + at + 8;
      if (std::memcmp(type, "eXIf", 4) == 0) {
        const bool prefixed = len >= 6 && std::memcmp(body, "Exif\0\0", 6) == 0;  // PIL strips this prefix
        return prefixed ? tiff_orientation(body + 6, len - 6) : tiff_orientation(body, len);
      }
      if (std::memcmp(type, "IEND", 4) == 0) return 1;
      at += 12 + len;
    }
    return 1;
  }
  if (n < 4 || d[0] != 0xFF || d[1] != 0xD8) return 1;
  for (size_t at = 2; at + 4 <= n;) {
    if (d[at] != 0xFF) return 1;
    const uint8_t marker = d[at + 1];
    if (marker == 0xFF) { at++; continue; }                       // fill byte
    if (marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7)) { at += 2; continue; }
    if (marker == 0xDA || marker == 0xD9) return 1;               // start of scan / end of image: no EXIF
    const size_t len = read_u16(d + at + 2, true);
    if (len < 2 || at + 2 + len > n) return 1;
    if (marker == 0xE1 && len >= 8 && std::memcmp(d + at + 4, "Exif\0\0", 6) == 0)
      return tiff_orientation(d + at + 10, len - 8);
    at += 2 + len;
  }
  return 1;
}

// PIL's Image.transpose for EXIF orientations 2..8 (ImageOps.exif_transpose's table); others leave it as is.
Rgb8Image apply_orientation(Rgb8Image in, int orientation) {
  if (orientation < 2 || orientation > 8) return in;
  const int H = in.height, W = in.width;
  const bool swap = orientation >= 5;  // TRANSPOSE, ROTATE_270, TRANSVERSE, ROTATE_90 exchange the sides
  Rgb8Image out;
  out.height = swap ? W : H;
  out.width = swap ? H : W;
  out.pixels.resize(in.pixels.size());
  for (int y = 0; y < out.height; y++) {
    for (int x = 0; x < out.width; x++) {
      int sy = 0, sx = 0;  // the source pixel of out(y, x)
      switch (orientation) {
        case 2: sy = y; sx = W - 1 - x; break;                  // FLIP_LEFT_RIGHT
        case 3: sy = H - 1 - y; sx = W - 1 - x; break;          // ROTATE_180
        case 4: sy = H - 1 - y; sx = x; break;                  // FLIP_TOP_BOTTOM
        case 5: sy = x; sx = y; break;                          // TRANSPOSE
        case 6: sy = H - 1 - x; sx = y; break;                  // ROTATE_270 (90° clockwise)
        case 7: sy = H - 1 - x; sx = W - 1 - y; break;          // TRANSVERSE
        default: sy = x; sx = W - 1 - y; break;                 // 8: ROTATE_90 (90° counter-clockwise)
      }
      std::memcpy(&out.pixels[(size_t(y) * out.width + x) * 3], &in.pixels[(size_t(sy) * W + sx) * 3], 3);
    }
  }
  return out;
}

}  // namespace

Rgb8Image decode_image(const uint8_t* data, size_t size, const std::string& name) {
  const bool png = size >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0;
  const bool jpeg = size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
  if (!png && !jpeg)
    throw BadInput(name + ": expected a PNG or JPEG image, found neither signature (" + std::to_string(size) +
                   " bytes)");
  if (size > size_t(INT32_MAX)) throw BadInput(name + ": expected an image file under 2 GiB");
  int w = 0, h = 0, channels = 0;
  Rgb8Image img;
  // 16-bit greyscale (IHDR bit depth 16, colour type 0) opens in PIL as mode I;16, whose convert("RGB") clamps
  // each value to 255 rather than keeping its high byte as stb (and PIL for every other 16-bit PNG) does
  if (png && size >= 26 && std::memcmp(data + 12, "IHDR", 4) == 0 && data[24] == 16 && data[25] == 0) {
    uint16_t* px = stbi_load_16_from_memory(data, int(size), &w, &h, &channels, 1);
    if (!px) throw BadInput(name + ": cannot decode this PNG (" + stbi_failure_reason() + ")");
    img.pixels.resize(size_t(w) * h * 3);
    for (size_t i = 0; i < size_t(w) * h; i++)
      img.pixels[3 * i] = img.pixels[3 * i + 1] = img.pixels[3 * i + 2] = uint8_t(std::min<uint16_t>(px[i], 255));
    stbi_image_free(px);
  } else {
    // 3 channels out: stb drops alpha, replicates grey and expands a palette, as PIL's convert("RGB") does
    uint8_t* px = stbi_load_from_memory(data, int(size), &w, &h, &channels, 3);
    if (!px)
      throw BadInput(name + ": cannot decode this " + (png ? "PNG" : "JPEG") + " (" + stbi_failure_reason() + ")");
    img.pixels.assign(px, px + size_t(w) * h * 3);
    stbi_image_free(px);
  }
  img.height = h;
  img.width = w;
  if (w <= 0 || h <= 0) throw BadInput(name + ": expected at least 1x1 pixels, found " + std::to_string(h) + "x" +
                                       std::to_string(w));
  return apply_orientation(std::move(img), exif_orientation(data, size));
}

Rgb8Image decode_image_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw BadInput(path + ": cannot open the image file");
  f.seekg(0, std::ios::end);
  const std::streamoff end = f.tellg();
  if (end < 0) throw BadInput(path + ": not a regular file (cannot seek)");
  if (size_t(end) > kMaxImageFileBytes)
    throw BadInput(path + ": expected an image file of at most " + std::to_string(kMaxImageFileBytes >> 20) +
                   " MiB, found " + std::to_string(end) + " bytes");
  std::vector<uint8_t> bytes(static_cast<size_t>(end));
  f.seekg(0);
  if (!f.read(reinterpret_cast<char*>(bytes.data()), end)) throw BadInput(path + ": read failed");
  return decode_image(bytes.data(), bytes.size(), path);
}

// ---------------------------------------------------------------------------------------------------------------
// The resize rule (gemma_edge/contract/image.py) and Pillow's bicubic resampler
// ---------------------------------------------------------------------------------------------------------------

void check_image_budget(int budget) {
  for (int b : kImageBudgets)
    if (b == budget) return;
  throw BadInput("image budget: expected one of 70, 140, 280, 560, 1120, found " + std::to_string(budget));
}

std::pair<int, int> image_resized_size(int height, int width, int budget) {
  check_image_budget(budget);
  if (height <= 0 || width <= 0)
    throw BadInput("image: expected a positive size, found " + std::to_string(height) + "x" + std::to_string(width) +
                   " (an empty image?)");
  const int64_t max_patches = int64_t(budget) * kImagePool * kImagePool;
  const int64_t target_px = max_patches * kImagePatch * kImagePatch;
  // the same double operations in the same order as transformers (each correctly rounded, so equal)
  const double factor = std::sqrt(double(target_px) / double(int64_t(height) * width));
  int64_t h = int64_t(std::floor(factor * height / kImageSide)) * kImageSide;
  int64_t w = int64_t(std::floor(factor * width / kImageSide)) * kImageSide;
  if (h == 0 && w == 0) throw BadInput("image " + std::to_string(height) + "x" + std::to_string(width) + ": resizes to 0x0");
  const int64_t max_side = (max_patches / (kImagePool * kImagePool)) * kImageSide;
  if (h == 0) {
    h = kImageSide;
    w = std::min(int64_t(std::floor(double(width) / double(height))) * kImageSide, max_side);
  } else if (w == 0) {
    w = kImageSide;
    h = std::min(int64_t(std::floor(double(height) / double(width))) * kImageSide, max_side);
  }
  if (h * w > target_px)
    throw BadInput("image " + std::to_string(height) + "x" + std::to_string(width) + ": resizes to " +
                   std::to_string(h) + "x" + std::to_string(w) + ", more than " + std::to_string(max_patches) +
                   " patches");
  return {int(h), int(w)};
}

namespace {

// Resample.c's PRECISION_BITS: 8 bits of result, 2 for the filter's overshoot, the rest fraction.
constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic_filter(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// One axis' taps: output i reads inputs bounds[2i] .. bounds[2i] + bounds[2i+1] - 1 with weights k[i·ksize ..].
struct Taps {
  int ksize = 0;
  std::vector<int> bounds;
  std::vector<int32_t> k;
};

// precompute_coeffs + normalize_coeffs_8bpc over the box (0, in_size): the support widens by the downscale
// factor (antialias), the taps are normalised in double and rounded half away from zero to fixed point.
Taps precompute_taps(int in_size, int out_size) {
  const float in0 = 0.0f, in1 = float(in_size);  // Pillow's box is float
  const double scale = double(in1 - in0) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 2.0 * filterscale;  // bicubic support 2
  Taps t;
  t.ksize = int(std::ceil(support)) * 2 + 1;
  t.bounds.resize(size_t(out_size) * 2);
  t.k.assign(size_t(out_size) * t.ksize, 0);
  std::vector<double> w(t.ksize);
  const double inv_filterscale = 1.0 / filterscale;
  for (int xx = 0; xx < out_size; xx++) {
    const double center = in0 + (xx + 0.5) * scale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; x++) {
      w[x] = bicubic_filter((x + xmin - center + 0.5) * inv_filterscale);
      ww += w[x];
    }
    for (int x = 0; x < xmax; x++) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      t.k[size_t(xx) * t.ksize + x] =
          v < 0 ? int32_t(-0.5 + v * (1 << kPrecisionBits)) : int32_t(0.5 + v * (1 << kPrecisionBits));
    }
    t.bounds[xx * 2] = xmin;
    t.bounds[xx * 2 + 1] = xmax;
  }
  return t;
}

// Resample.c's clip8: the sum's integer part, clamped to a byte (its lookup table spans -640..639).
inline uint8_t clip8(int32_t v) {
  const int32_t i = v >> kPrecisionBits;
  return uint8_t(i < 0 ? 0 : (i > 255 ? 255 : i));
}

}  // namespace

namespace {

// Resample.c's horizontal pass (ImagingResampleHorizontal_8bpc, 3 bands) over rows [row0, row0 + rows) of `in`.
Rgb8Image horizontal_pass(const Rgb8Image& in, int row0, int rows, const Taps& t, int width) {
  Rgb8Image out;
  out.height = rows;
  out.width = width;
  out.pixels.resize(size_t(rows) * width * 3);
  for (int yy = 0; yy < rows; yy++) {
    const uint8_t* line = &in.pixels[size_t(yy + row0) * in.width * 3];
    uint8_t* dst = &out.pixels[size_t(yy) * width * 3];
    for (int xx = 0; xx < width; xx++) {
      const int xmin = t.bounds[xx * 2], xmax = t.bounds[xx * 2 + 1];
      const int32_t* k = &t.k[size_t(xx) * t.ksize];
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < xmax; x++) {
        const uint8_t* p = line + size_t(x + xmin) * 3;
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      dst[xx * 3] = clip8(s0);
      dst[xx * 3 + 1] = clip8(s1);
      dst[xx * 3 + 2] = clip8(s2);
    }
  }
  return out;
}

// Resample.c's vertical pass (ImagingResampleVertical_8bpc): output row yy sums input rows bounds[2yy] + ...
Rgb8Image vertical_pass(const Rgb8Image& in, const Taps& t, int height) {
  Rgb8Image out;
  out.height = height;
  out.width = in.width;
  const size_t stride = size_t(in.width) * 3;
  out.pixels.resize(size_t(height) * stride);
  for (int yy = 0; yy < height; yy++) {
    const int ymin = t.bounds[yy * 2], ymax = t.bounds[yy * 2 + 1];
    const int32_t* k = &t.k[size_t(yy) * t.ksize];
    uint8_t* row = &out.pixels[size_t(yy) * stride];
    for (size_t c = 0; c < stride; c++) {
      int32_t s = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < ymax; y++) s += in.pixels[size_t(y + ymin) * stride + c] * k[y];
      row[c] = clip8(s);
    }
  }
  return out;
}

}  // namespace

Rgb8Image resize_bicubic(const Rgb8Image& in, int height, int width) {
  if (in.height == height && in.width == width) return in;
  if (height <= 0 || width <= 0 || in.height <= 0 || in.width <= 0)
    throw BadInput("resize: expected positive sizes, found " + std::to_string(in.height) + "x" +
                   std::to_string(in.width) + " -> " + std::to_string(height) + "x" + std::to_string(width));
  // A pass whose size does not change is skipped (the other pass alone gives the result).
  const bool need_horizontal = width != in.width, need_vertical = height != in.height;
  if (!need_vertical) return horizontal_pass(in, 0, in.height, precompute_taps(in.width, width), width);
  Taps vert = precompute_taps(in.height, height);
  if (!need_horizontal) return vertical_pass(in, vert, height);
  // Which pass goes first changes the result (the first one rounds to 8 bits). Pillow 13 runs the vertical one
  // first when the height shrinks by more than twice what the width does (Pillow PR #9549). The condition
  // is read off the installed Pillow 13.0.0's results (the fetched source snapshot has an earlier form of that
  // PR): tests/test_image_preprocess.py checks both orders against it.
  const bool vertical_first = height < in.height && (in.height - height) > 2 * (in.width - width);
  const Taps hor = precompute_taps(in.width, width);
  if (vertical_first) return horizontal_pass(vertical_pass(in, vert, height), 0, height, hor, width);
  // horizontal first, over only the rows the vertical pass reads
  const int y_first = vert.bounds[0];
  const int y_last = vert.bounds[height * 2 - 2] + vert.bounds[height * 2 - 1];
  for (int i = 0; i < height; i++) vert.bounds[i * 2] -= y_first;
  return vertical_pass(horizontal_pass(in, y_first, y_last - y_first, hor, width), vert, height);
}

// ---------------------------------------------------------------------------------------------------------------
// Rescale, patchify, pad
// ---------------------------------------------------------------------------------------------------------------

PreparedImage preprocess_image(const Rgb8Image& rgb, int budget) {
  if (rgb.height <= 0 || rgb.width <= 0 || rgb.pixels.size() != size_t(rgb.height) * rgb.width * 3)
    throw BadInput("image pixels: expected height x width x 3 bytes of RGB8, found " + std::to_string(rgb.height) +
                   "x" + std::to_string(rgb.width) + " with " + std::to_string(rgb.pixels.size()) + " bytes");
  const auto [h, w] = image_resized_size(rgb.height, rgb.width, budget);
  const Rgb8Image img = resize_bicubic(rgb, h, w);
  // transformers' rescale: float64(v) · (1/255), then float32
  float rescale[256];
  for (int v = 0; v < 256; v++) rescale[v] = float(double(v) * (1.0 / 255));

  const int ph = h / kImagePatch, pw = w / kImagePatch;
  const size_t n = size_t(budget) * kImagePool * kImagePool;
  PreparedImage out;
  out.budget = budget;
  out.height = h;
  out.width = w;
  out.soft_tokens = (h / kImageSide) * (w / kImageSide);
  out.pixel_values.assign(n * kImagePatchDim, 0.0f);
  out.positions.assign(n * 2, -1);
  for (int py = 0; py < ph; py++) {
    for (int px = 0; px < pw; px++) {
      const size_t patch = size_t(py) * pw + px;
      float* dst = &out.pixel_values[patch * kImagePatchDim];
      for (int r = 0; r < kImagePatch; r++) {  // HWC within the patch: row, column, channel
        const uint8_t* src = &img.pixels[(size_t(py * kImagePatch + r) * w + size_t(px) * kImagePatch) * 3];
        for (int i = 0; i < kImagePatch * 3; i++) dst[r * kImagePatch * 3 + i] = rescale[src[i]];
      }
      out.positions[patch * 2] = px;
      out.positions[patch * 2 + 1] = py;
    }
  }
  return out;
}

}  // namespace gemma_edge
