// ImagePreprocessor against the golden Python writes (tests/golden/image_preprocess.json): identical arrays.
package dev.gemmaedge.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.util.List;
import java.util.Map;
import org.junit.Test;

public class ImagePreprocessorGoldenTest {

    /** The golden file: system property image.golden, else the repository's copy (run_tests.sh runs in core/). */
    static Map<String, Object> load() throws Exception {
        File f = new File(System.getProperty("image.golden", "../../tests/golden/image_preprocess.json"));
        if (!f.isFile())
            throw new IllegalStateException(f + ": expected the image golden (tests/golden/image_preprocess.json, "
                    + "written by tests/golden/make_image_golden.py), found none");
        return Json.asObject(Json.parse(new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8), f.getPath()),
                f.getPath());
    }

    static String sha256(byte[] b) throws Exception {
        StringBuilder s = new StringBuilder();
        for (byte x : MessageDigest.getInstance("SHA-256").digest(b)) s.append(String.format("%02x", x));
        return s.toString();
    }

    static byte[] le(float[] a) {
        ByteBuffer b = ByteBuffer.allocate(a.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        b.asFloatBuffer().put(a);
        return b.array();
    }

    static byte[] le(long[] a) {
        ByteBuffer b = ByteBuffer.allocate(a.length * 8).order(ByteOrder.LITTLE_ENDIAN);
        b.asLongBuffer().put(a);
        return b.array();
    }

    /** The ARGB ints Bitmap.getPixels would give for these RGB8 pixels, with an arbitrary alpha (it is dropped). */
    static int[] argb(byte[] rgb) {
        int[] p = new int[rgb.length / 3];
        for (int i = 0; i < p.length; i++)
            p[i] = ((i * 37) & 0xff) << 24 | (rgb[3 * i] & 0xff) << 16 | (rgb[3 * i + 1] & 0xff) << 8 | (rgb[3 * i + 2] & 0xff);
        return p;
    }

    @Test
    public void everyImageAtEveryBudgetEqualsPython() throws Exception {
        int n = 0;
        for (Map<String, Object> c : Golden.objects(load().get("images"))) {
            String name = Json.asString(c.get("name"), "name");
            int h = (int) Json.asLong(c.get("height"), name + " height");
            int w = (int) Json.asLong(c.get("width"), name + " width");
            byte[] rgb = Golden.unhex(Json.asString(c.get("rgb_hex"), name + " rgb_hex"));
            int[] argb = argb(rgb);
            assertArrayEquals(name + ": ARGB -> RGB8", rgb, ImagePreprocessor.rgbFromArgb(argb, w, h));
            for (Map<String, Object> r : Golden.objects(c.get("runs"))) {
                int budget = (int) Json.asLong(r.get("budget"), "budget");
                String at = name + " at budget " + budget;
                ImagePreprocessor.Prepared p = ImagePreprocessor.preprocess(argb, w, h, budget);
                assertArrayEquals(at + ": resized size", Golden.ints(r.get("resized")), new int[] {p.height, p.width});
                assertEquals(at + ": soft tokens", Json.asLong(r.get("soft_tokens"), "soft_tokens"), p.softTokens);
                assertEquals(at + ": soft tokens from the size rule", p.softTokens, ImagePreprocessor.softTokens(h, w, budget));
                assertEquals(at + ": resized pixels", Json.asString(r.get("resized_sha256"), "resized_sha256"),
                        sha256(ImagePreprocessor.resize(rgb, h, w, p.height, p.width)));
                for (Object s : Json.asArray(r.get("samples"), "samples")) {
                    List<Object> iv = Json.asArray(s, "sample");
                    int i = (int) Json.asLong(iv.get(0), "sample index");
                    float want = (float) Json.asDouble(iv.get(1), "sample value");
                    assertEquals(at + ": pixel_values[" + i + "] bits", Float.floatToIntBits(want),
                            Float.floatToIntBits(p.pixelValues[i]));
                }
                int real = p.softTokens * 9;
                assertArrayEquals(at + ": last real position", Golden.ints(r.get("last_real_position")),
                        new int[] {(int) p.positions[2 * real - 2], (int) p.positions[2 * real - 1]});
                assertEquals(at + ": pixel_values", Json.asString(r.get("pixel_values_sha256"), "pixel_values_sha256"),
                        sha256(le(p.pixelValues)));
                assertEquals(at + ": positions", Json.asString(r.get("positions_sha256"), "positions_sha256"),
                        sha256(le(p.positions)));
                n++;
            }
        }
        assertTrue("the golden holds image runs", n >= 25);
    }

    @Test
    public void bareResizesTakeEachPassOrderAsPillow() throws Exception {
        int n = 0;
        for (Map<String, Object> c : Golden.objects(load().get("resizes"))) {
            int h = (int) Json.asLong(c.get("height"), "height"), w = (int) Json.asLong(c.get("width"), "width");
            int[] out = Golden.ints(c.get("out"));
            byte[] got = ImagePreprocessor.resize(Golden.unhex(Json.asString(c.get("rgb_hex"), "rgb_hex")), h, w, out[0], out[1]);
            assertArrayEquals(h + "x" + w + " -> " + out[0] + "x" + out[1],
                    Golden.unhex(Json.asString(c.get("resized_hex"), "resized_hex")), got);
            n++;
        }
        assertTrue("the golden holds resizes", n >= 4);
    }

    @Test
    public void refusesWhatTheProcessorRefuses() {
        for (int budget : new int[] {0, 69, 281, 2240}) {
            try {
                ImagePreprocessor.preprocessRgb(new byte[3], 1, 1, budget);
                fail("accepted budget " + budget);
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("expected one of 70, 140, 280, 560, 1120, found " + budget));
            }
        }
        try {
            ImagePreprocessor.preprocess(new int[0], 0, 0, 280);
            fail("accepted an empty image");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("0x0"));
        }
        try {
            ImagePreprocessor.preprocess(new int[5], 2, 2, 280);
            fail("accepted 5 pixels for 2x2");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("found 5"));
        }
    }

    @Test
    public void thinImagesKeepOneRowOfSoftTokens() {
        // a side that rounds to 0 becomes 48, the other floor(long / short) * 48 capped at budget * 48
        assertArrayEquals(new int[] {48, 70 * 48}, ImagePreprocessor.resizedSize(10, 100000, 70));
        assertArrayEquals(new int[] {48, 1776}, ImagePreprocessor.resizedSize(100, 2000, 70));   // the doc's table
        assertArrayEquals(new int[] {3264, 48}, ImagePreprocessor.resizedSize(4000, 60, 70));
        assertArrayEquals(new int[] {1200, 2112}, ImagePreprocessor.resizedSize(1080, 1920, 1120));
    }

    @Test
    public void exifOrientationsTurnAsPilTurnsThem() throws Exception {
        // golden/make_golden.py: PIL's ImageOps.exif_transpose (transformers' load_image) of a 5x3 image per tag
        Map<String, Object> g = Golden.load("exif.json");
        int w = (int) Json.asLong(g.get("width"), "width"), h = (int) Json.asLong(g.get("height"), "height");
        int[] src = argb(bytes(g.get("rgb")));
        int n = 0;
        for (Map<String, Object> c : Golden.objects(g.get("cases"))) {
            int o = (int) Json.asLong(c.get("orientation"), "orientation");
            ImagePreprocessor.Upright u = ImagePreprocessor.exifTranspose(src, w, h, o);
            assertEquals("orientation " + o + " width", Json.asLong(c.get("width"), "width"), u.width);
            assertEquals("orientation " + o + " height", Json.asLong(c.get("height"), "height"), u.height);
            assertArrayEquals("orientation " + o + " pixels", bytes(c.get("rgb")), ImagePreprocessor.rgbFromArgb(u.argb, u.width, u.height));
            n++;
        }
        assertEquals(8, n);
        assertEquals("0 (undefined) is upright", src, ImagePreprocessor.exifTranspose(src, w, h, 0).argb);
        try {
            ImagePreprocessor.exifTranspose(src, w, h, 9);
            fail("took an orientation EXIF does not have");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("expected 0..8, found 9"));
        }
    }

    private static byte[] bytes(Object v) {
        int[] a = Golden.ints(v);
        byte[] b = new byte[a.length];
        for (int i = 0; i < a.length; i++) b[i] = (byte) a[i];
        return b;
    }
}
