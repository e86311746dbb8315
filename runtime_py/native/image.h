// Images into the vision tower's inputs: decode (PNG/JPEG), PIL's bicubic resize, rescale, patchify, pad.
//
// The third implementation of gemma_edge/contract/image.py and runtime_py/image.py, beside the Java core's
// ImagePreprocessor; from the same RGB8 pixels all three give bit-identical pixel_values and positions, and
// those equal transformers' Gemma4ImageProcessorPil (tests/test_image_preprocess.py). The resize is a port of
// Pillow's src/libImaging/Resample.c for 8-bit RGB with the bicubic filter (double coefficients, fixed point with
// 22 fractional bits, one pass into 8-bit pixels and then the other, in Pillow 13's order). It is compiled without
// fused multiply-add (-ffp-contract=off), like Pillow's x86-64 wheels and Java: a fused filter polynomial differs
// by an ulp now and then, which could in principle move a rounded tap by one.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace gemma_edge {

constexpr int kImagePatch = 16;                                  // pixels per patch side
constexpr int kImagePool = 3;                                    // patches per soft token side
constexpr int kImageSide = kImagePatch * kImagePool;             // 48: resized sides are multiples of it
constexpr int kImagePatchDim = kImagePatch * kImagePatch * 3;    // 768 values per patch, HWC within it
constexpr int kImageBudgets[] = {70, 140, 280, 560, 1120};       // soft tokens per image
constexpr int kDefaultImageBudget = 280;
constexpr int64_t kBoiId = 255999, kImageTokenId = 258880, kEoiId = 258882;  // <|image>, <|image|>, <image|>

// 8-bit RGB, row-major, 3 bytes per pixel.
struct Rgb8Image {
  int height = 0;
  int width = 0;
  std::vector<uint8_t> pixels;  // [height, width, 3]
};

struct PreparedImage {
  std::vector<float> pixel_values;  // [9·budget, 768]: real patches (row-major), then zero rows
  std::vector<int64_t> positions;   // [9·budget, 2]: (x = patch column, y = patch row); padding (-1, -1)
  int soft_tokens = 0;              // (H'/48)·(W'/48)
  int height = 0, width = 0;        // H', W': the resized image
  int budget = 0;
};

// The bytes of a PNG or JPEG file decoded to RGB8 as transformers' load_image does (PIL): the EXIF orientation
// (JPEG APP1, PNG eXIf) applied, alpha dropped, grey replicated, a palette expanded. BadInput (errors.h) names
// the file when it is missing, unreadable, not PNG/JPEG or corrupt.
Rgb8Image decode_image_file(const std::string& path);
Rgb8Image decode_image(const uint8_t* data, size_t size, const std::string& name);

// Throws BadInput unless `budget` is one of kImageBudgets.
void check_image_budget(int budget);

// (H', W') for an image of height × width at `budget`: transformers' get_aspect_ratio_preserving_size.
std::pair<int, int> image_resized_size(int height, int width, int budget);

// PIL's Image.resize((width, height), BICUBIC) of an RGB image; the input itself when the size is already right.
Rgb8Image resize_bicubic(const Rgb8Image& in, int height, int width);

// The tower's inputs for one decoded image at `budget` soft tokens at most.
PreparedImage preprocess_image(const Rgb8Image& rgb, int budget);

}  // namespace gemma_edge
