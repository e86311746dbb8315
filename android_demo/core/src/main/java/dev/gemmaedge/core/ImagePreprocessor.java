// An image's pixels into the vision tower's inputs, bit for bit as transformers' Gemma4ImageProcessorPil makes them.
package dev.gemmaedge.core;

/**
 * The Java host's image preprocessing: {@code gemma_edge/contract/image.py} (budgets, the resize rule) and
 * {@code runtime_py/image.py} (the pixels), whose native twin is {@code runtime_py/native/image.cpp}. From the same
 * RGB8 pixels the three give identical pixel values and positions (ImagePreprocessorGoldenTest replays the
 * golden file Python writes, tests/golden/image_preprocess.json); Python's equal transformers'.
 *
 * <p>The app decodes with BitmapFactory and hands {@code Bitmap.getPixels}' ARGB ints here; the alpha byte is
 * dropped, as transformers' {@code load_image} drops it ({@code convert("RGB")}), and the EXIF orientation is
 * the app's to apply before (ExifInterface), as {@code load_image} applies it.
 *
 * <ol>
 *   <li>Resize to {@link #resizedSize}, aspect ratio kept, with Pillow's bicubic resampler on 8-bit RGB
 *       (src/libImaging/Resample.c): per axis, taps of the cubic (a = -0.5) widened by the downscale factor,
 *       normalised in double and rounded to fixed point with 22 fractional bits; one pass into 8-bit pixels, then
 *       the other (the vertical one first when the height shrinks by more than twice what the width does, as in
 *       Pillow 13); a pass whose size does not change is skipped. Java never fuses a multiply-add, so the
 *       double arithmetic rounds as in Pillow's x86-64 wheels and the native host (-ffp-contract=off).</li>
 *   <li>Rescale: (float) (v * (1.0 / 255)) in double, transformers' {@code rescale}.</li>
 *   <li>Patchify: row-major 16x16 patches, HWC inside a patch, 768 values each; positions (x = column, y = row).</li>
 *   <li>Pad to 9 * budget patches: zero values at position (-1, -1).</li>
 * </ol>
 */
public final class ImagePreprocessor {
    public static final int PATCH = 16;
    public static final int POOL = 3;
    public static final int SIDE = PATCH * POOL;              // 48: resized sides are multiples of it
    public static final int PATCH_DIM = PATCH * PATCH * 3;    // 768
    public static final int DEFAULT_BUDGET = 280;
    public static final long BOI_ID = 255999, IMAGE_TOKEN_ID = 258880, EOI_ID = 258882;  // <|image> <|image|> <image|>
    private static final int[] BUDGETS = {70, 140, 280, 560, 1120};
    private static final int PRECISION_BITS = 32 - 8 - 2;     // Resample.c: 8 bits of result, 2 of overshoot

    private ImagePreprocessor() {}

    /** The tower's inputs for one image. */
    public static final class Prepared {
        public final float[] pixelValues;   // [9 * budget, 768]: real patches, then zero rows
        public final long[] positions;      // [9 * budget, 2]: (x, y) per patch; padding (-1, -1)
        public final int softTokens;        // (height / 48) * (width / 48)
        public final int height, width;     // the resized image
        public final int budget;

        Prepared(float[] pixelValues, long[] positions, int softTokens, int height, int width, int budget) {
            this.pixelValues = pixelValues;
            this.positions = positions;
            this.softTokens = softTokens;
            this.height = height;
            this.width = width;
            this.budget = budget;
        }
    }

    public static void checkBudget(int budget) {
        for (int b : BUDGETS) if (b == budget) return;
        throw new IllegalArgumentException("image budget: expected one of 70, 140, 280, 560, 1120, found " + budget);
    }

    /** {height', width'}: transformers' get_aspect_ratio_preserving_size, the same double operations in order. */
    public static int[] resizedSize(int height, int width, int budget) {
        checkBudget(budget);
        if (height <= 0 || width <= 0)
            throw new IllegalArgumentException("image: expected a positive size, found " + height + "x" + width
                    + " (an empty image?)");
        long maxPatches = (long) budget * POOL * POOL;
        long targetPx = maxPatches * PATCH * PATCH;
        double factor = Math.sqrt((double) targetPx / (double) ((long) height * width));
        long h = (long) Math.floor(factor * height / SIDE) * SIDE;
        long w = (long) Math.floor(factor * width / SIDE) * SIDE;
        if (h == 0 && w == 0) throw new IllegalArgumentException("image " + height + "x" + width + ": resizes to 0x0");
        long maxSide = (maxPatches / (POOL * POOL)) * SIDE;
        if (h == 0) {
            h = SIDE;
            w = Math.min((long) Math.floor((double) width / (double) height) * SIDE, maxSide);
        } else if (w == 0) {
            w = SIDE;
            h = Math.min((long) Math.floor((double) height / (double) width) * SIDE, maxSide);
        }
        if (h * w > targetPx)
            throw new IllegalArgumentException("image " + height + "x" + width + ": resizes to " + h + "x" + w
                    + ", more than " + maxPatches + " patches");
        return new int[] {(int) h, (int) w};
    }

    /** Soft tokens of an image of height x width at {@code budget}. */
    public static int softTokens(int height, int width, int budget) {
        int[] s = resizedSize(height, width, budget);
        return (s[0] / SIDE) * (s[1] / SIDE);
    }

    /** Pixels turned upright: ARGB ints row-major, and their width and height. */
    public static final class Upright {
        public final int[] argb;
        public final int width, height;

        Upright(int[] argb, int width, int height) {
            this.argb = argb;
            this.width = width;
            this.height = height;
        }
    }

    /**
     * The pixels as the EXIF orientation tag (1..8, ExifInterface's TAG_ORIENTATION; 0, "undefined", as 1) says to
     * show them, as transformers' load_image turns them (PIL's ImageOps.exif_transpose): 2 mirror left-right, 3
     * rotate 180°, 4 mirror top-bottom, 5 transpose, 6 rotate 90° clockwise, 7 transverse, 8 rotate 90°
     * counter-clockwise. A permutation of the pixels, no resampling.
     */
    public static Upright exifTranspose(int[] argb, int width, int height, int orientation) {
        if (width <= 0 || height <= 0 || argb.length != (long) width * height)
            throw new IllegalArgumentException("image pixels: expected width * height = " + ((long) width * height)
                    + " ARGB ints for " + width + "x" + height + ", found " + argb.length);
        if (orientation < 0 || orientation > 8)
            throw new IllegalArgumentException("image EXIF orientation: expected 0..8, found " + orientation);
        if (orientation <= 1) return new Upright(argb, width, height);
        boolean swap = orientation >= 5;   // 5..8 exchange the sides
        int ow = swap ? height : width, oh = swap ? width : height;
        int[] out = new int[argb.length];
        for (int y = 0; y < oh; y++) {
            for (int x = 0; x < ow; x++) {
                int sx, sy;   // the source pixel shown at (x, y)
                switch (orientation) {
                    case 2: sx = width - 1 - x; sy = y; break;
                    case 3: sx = width - 1 - x; sy = height - 1 - y; break;
                    case 4: sx = x; sy = height - 1 - y; break;
                    case 5: sx = y; sy = x; break;
                    case 6: sx = y; sy = height - 1 - x; break;
                    case 7: sx = width - 1 - y; sy = height - 1 - x; break;
                    default: sx = width - 1 - y; sy = x; break;   // 8
                }
                out[y * ow + x] = argb[sy * width + sx];
            }
        }
        return new Upright(out, ow, oh);
    }

    /** RGB8 [height, width, 3] from Bitmap.getPixels' ARGB ints (row-major, stride = width); alpha dropped. */
    public static byte[] rgbFromArgb(int[] argb, int width, int height) {
        if (width <= 0 || height <= 0 || argb.length != (long) width * height)
            throw new IllegalArgumentException("image pixels: expected width * height = " + ((long) width * height)
                    + " ARGB ints for " + width + "x" + height + ", found " + argb.length);
        byte[] rgb = new byte[argb.length * 3];
        for (int i = 0; i < argb.length; i++) {
            int p = argb[i];
            rgb[3 * i] = (byte) (p >>> 16);
            rgb[3 * i + 1] = (byte) (p >>> 8);
            rgb[3 * i + 2] = (byte) p;
        }
        return rgb;
    }

    public static Prepared preprocess(int[] argb, int width, int height, int budget) {
        return preprocessRgb(rgbFromArgb(argb, width, height), height, width, budget);
    }

    /** The tower's inputs from RGB8 pixels [height, width, 3]. */
    public static Prepared preprocessRgb(byte[] rgb, int height, int width, int budget) {
        if (height <= 0 || width <= 0 || rgb.length != (long) height * width * 3)
            throw new IllegalArgumentException("image pixels: expected height x width x 3 bytes of RGB8 for " + height
                    + "x" + width + ", found " + rgb.length + " bytes");
        int[] size = resizedSize(height, width, budget);
        int h = size[0], w = size[1];
        byte[] img = resize(rgb, height, width, h, w);
        float[] rescale = new float[256];
        for (int v = 0; v < 256; v++) rescale[v] = (float) (v * (1.0 / 255));

        int ph = h / PATCH, pw = w / PATCH;
        int n = budget * POOL * POOL;
        float[] pixels = new float[n * PATCH_DIM];
        long[] positions = new long[n * 2];
        java.util.Arrays.fill(positions, -1L);
        for (int py = 0; py < ph; py++) {
            for (int px = 0; px < pw; px++) {
                int patch = py * pw + px;
                int dst = patch * PATCH_DIM;
                for (int r = 0; r < PATCH; r++) {
                    int src = ((py * PATCH + r) * w + px * PATCH) * 3;
                    for (int i = 0; i < PATCH * 3; i++) pixels[dst + r * PATCH * 3 + i] = rescale[img[src + i] & 0xff];
                }
                positions[2 * patch] = px;
                positions[2 * patch + 1] = py;
            }
        }
        return new Prepared(pixels, positions, (h / SIDE) * (w / SIDE), h, w, budget);
    }

    // ------------------------------------------------------------------------------------------------------------
    // Pillow's bicubic resampler (Resample.c) for 8-bit RGB
    // ------------------------------------------------------------------------------------------------------------

    /** One axis' taps: output i reads inputs bounds[2i] .. bounds[2i] + bounds[2i+1] - 1 with k[i * ksize ..]. */
    private static final class Taps {
        final int ksize;
        final int[] bounds;
        final int[] k;

        Taps(int ksize, int[] bounds, int[] k) {
            this.ksize = ksize;
            this.bounds = bounds;
            this.k = k;
        }
    }

    private static double bicubic(double x) {
        final double a = -0.5;
        if (x < 0.0) x = -x;
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
        return 0.0;
    }

    /** precompute_coeffs + normalize_coeffs_8bpc over the box (0, inSize) (a float box in Pillow). */
    private static Taps taps(int inSize, int outSize) {
        float in0 = 0.0f, in1 = (float) inSize;
        double scale = (double) (in1 - in0) / outSize;
        double filterscale = scale < 1.0 ? 1.0 : scale;
        double support = 2.0 * filterscale;
        int ksize = (int) Math.ceil(support) * 2 + 1;
        int[] bounds = new int[outSize * 2];
        int[] k = new int[outSize * ksize];
        double[] w = new double[ksize];
        double invFilterscale = 1.0 / filterscale;
        for (int xx = 0; xx < outSize; xx++) {
            double center = in0 + (xx + 0.5) * scale;
            int xmin = (int) (center - support + 0.5);
            if (xmin < 0) xmin = 0;
            int xmax = (int) (center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            double ww = 0.0;
            for (int x = 0; x < xmax; x++) {
                w[x] = bicubic((x + xmin - center + 0.5) * invFilterscale);
                ww += w[x];
            }
            for (int x = 0; x < xmax; x++) {
                double v = ww != 0.0 ? w[x] / ww : w[x];
                k[xx * ksize + x] = v < 0 ? (int) (-0.5 + v * (1 << PRECISION_BITS))
                                          : (int) (0.5 + v * (1 << PRECISION_BITS));
            }
            bounds[2 * xx] = xmin;
            bounds[2 * xx + 1] = xmax;
        }
        return new Taps(ksize, bounds, k);
    }

    private static byte clip8(int v) {
        int i = v >> PRECISION_BITS;
        return (byte) (i < 0 ? 0 : (i > 255 ? 255 : i));
    }

    /** The horizontal pass over rows [row0, row0 + rows) of an image inWidth wide. */
    private static byte[] horizontal(byte[] in, int inWidth, int row0, int rows, Taps t, int width) {
        byte[] out = new byte[rows * width * 3];
        int half = 1 << (PRECISION_BITS - 1);
        for (int yy = 0; yy < rows; yy++) {
            int line = (yy + row0) * inWidth * 3;
            int dst = yy * width * 3;
            for (int xx = 0; xx < width; xx++) {
                int xmin = t.bounds[2 * xx], xmax = t.bounds[2 * xx + 1];
                int kb = xx * t.ksize;
                int s0 = half, s1 = half, s2 = half;
                for (int x = 0; x < xmax; x++) {
                    int p = line + (x + xmin) * 3;
                    int kx = t.k[kb + x];
                    s0 += (in[p] & 0xff) * kx;
                    s1 += (in[p + 1] & 0xff) * kx;
                    s2 += (in[p + 2] & 0xff) * kx;
                }
                out[dst + 3 * xx] = clip8(s0);
                out[dst + 3 * xx + 1] = clip8(s1);
                out[dst + 3 * xx + 2] = clip8(s2);
            }
        }
        return out;
    }

    /** The vertical pass: output row yy sums input rows bounds[2yy] .. of an image `width` wide. */
    private static byte[] vertical(byte[] in, int width, Taps t, int height) {
        int stride = width * 3;
        byte[] out = new byte[height * stride];
        int half = 1 << (PRECISION_BITS - 1);
        for (int yy = 0; yy < height; yy++) {
            int ymin = t.bounds[2 * yy], ymax = t.bounds[2 * yy + 1];
            int kb = yy * t.ksize;
            for (int c = 0; c < stride; c++) {
                int s = half;
                for (int y = 0; y < ymax; y++) s += (in[(y + ymin) * stride + c] & 0xff) * t.k[kb + y];
                out[yy * stride + c] = clip8(s);
            }
        }
        return out;
    }

    /** PIL's Image.resize((outW, outH), BICUBIC) of RGB8 [inH, inW, 3]; the input itself when the size is right. */
    public static byte[] resize(byte[] rgb, int inH, int inW, int outH, int outW) {
        if (inH == outH && inW == outW) return rgb;
        if (inH <= 0 || inW <= 0 || outH <= 0 || outW <= 0 || rgb.length != (long) inH * inW * 3)
            throw new IllegalArgumentException("resize: expected positive sizes and inH x inW x 3 bytes, found " + inH
                    + "x" + inW + " (" + rgb.length + " bytes) -> " + outH + "x" + outW);
        boolean needHorizontal = outW != inW, needVertical = outH != inH;
        if (!needVertical) return horizontal(rgb, inW, 0, inH, taps(inW, outW), outW);
        Taps vert = taps(inH, outH);
        if (!needHorizontal) return vertical(rgb, inW, vert, outH);
        Taps hor = taps(inW, outW);
        boolean verticalFirst = outH < inH && (inH - outH) > 2 * (inW - outW);
        if (verticalFirst) return horizontal(vertical(rgb, inW, vert, outH), inW, 0, outH, hor, outW);
        int yFirst = vert.bounds[0];
        int yLast = vert.bounds[2 * outH - 2] + vert.bounds[2 * outH - 1];
        for (int i = 0; i < outH; i++) vert.bounds[2 * i] -= yFirst;
        return vertical(horizontal(rgb, inW, yFirst, yLast - yFirst, hor, outW), outW, vert, outH);
    }
}
