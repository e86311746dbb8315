// Images in the Java loop beyond the shared suite (LoopGoldenTest): a bundle's vision entry, a bad encoder, the budget.
package dev.gemmaedge.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class VisionGeneratorTest {
    @Rule public TemporaryFolder tmp = new TemporaryFolder();

    static final int V = 96, BOI = 93, IMAGE = 94, EOI = 95, PAD = 0, BOS = 2, H = 3;

    /** Logits that always pick token 7; records which prefill each chunk went through. */
    static final class Recorder implements Program {
        final List<String> calls = new ArrayList<>();
        final List<float[]> soft = new ArrayList<>();

        @Override public float[] prefill(int[] t, int s, float[] r) { calls.add("text@" + s); return logits(); }

        @Override public float[] prefill(int[] t, int s, float[] r, float[] softEmbeds) {
            calls.add("soft@" + s);
            soft.add(softEmbeds);
            return logits();
        }

        @Override public float[] decode(int t, int pos, float[] r) { return logits(); }

        static float[] logits() {
            float[] l = new float[V];
            l[7] = 1f;
            return l;
        }
    }

    /** Counts encode and release calls; returns {@code rows} floats per image (n_k * H unless told otherwise). */
    static final class Encoder implements VisionEncoder {
        int encoded, released;
        Integer floats;   // null: the right size

        @Override public float[] encode(ImagePreprocessor.Prepared image) {
            encoded++;
            float[] rows = new float[floats != null ? floats : image.softTokens * H];
            Arrays.fill(rows, 0.5f);
            return rows;
        }

        @Override public void release() { released++; }
    }

    static Generator generator(Program p, LoopGoldenTest.RecordingPle ple, Encoder enc, int... budgets) {
        return new Generator(p, ple, V, 64, 4, new int[] {1}, null, new Generator.Vision(enc, BOI, IMAGE, EOI, PAD, BOS, H, budgets));
    }

    static ImagePreprocessor.Prepared image(int softTokens, int budget) {
        return new ImagePreprocessor.Prepared(new float[0], new long[0], softTokens, 48, 48 * softTokens, budget);
    }

    @Test
    public void aTextPromptNeverTouchesTheTower() throws Exception {
        Recorder p = new Recorder();
        Encoder enc = new Encoder();
        Generator.Result r = generator(p, new LoopGoldenTest.RecordingPle(), enc, 70).generate(new int[] {BOS, 5, 6, 7, 8, 9}, 2, Sampler.greedy(), null);
        assertEquals(Arrays.asList("text@0", "text@4"), p.calls);
        assertEquals("never encoded, never loaded or released", Arrays.asList(0, 0), Arrays.asList(enc.encoded, enc.released));
        assertEquals(0, r.stats.images);
    }

    @Test
    public void anImagePromptFeedsSoftRowsToEveryChunk() throws Exception {
        Recorder p = new Recorder();
        Encoder enc = new Encoder();
        LoopGoldenTest.RecordingPle ple = new LoopGoldenTest.RecordingPle();
        Generator.Result r = generator(p, ple, enc, 70).generate(new int[] {BOS, 5, IMAGE, 6, 8, 9, 10}, List.of(image(2, 70)), 1,
                Sampler.greedy(), true, null);
        // [2, 5, boi, img, img, eoi, 6, 8, 9, 10]: chunks at 0, 4, 8, all with soft_embeds
        assertEquals(Arrays.asList("soft@0", "soft@4", "soft@8"), p.calls);
        assertEquals(Arrays.asList(2, 5, BOI, PAD, PAD, EOI, 6, 8, 9, 10), ple.fetches.get(0));
        float[] first = p.soft.get(0), second = p.soft.get(1);
        assertEquals(4 * H, first.length);
        for (int j = 0; j < H; j++) {
            assertEquals("text row", 0f, first[j], 0f);
            assertEquals("image row 0 at position 3", 0.5f, first[3 * H + j], 0f);
            assertEquals("image row 1 at position 4", 0.5f, second[j], 0f);
            assertEquals("eoi row", 0f, second[H + j], 0f);
        }
        assertEquals(Arrays.asList(1, 1), Arrays.asList(enc.encoded, enc.released));
        assertEquals(1, r.stats.images);
        assertEquals(10, r.stats.promptTokens);
    }

    @Test
    public void anEncoderOfTheWrongWidthIsRefusedAndReleased() throws Exception {
        Encoder enc = new Encoder();
        enc.floats = 2 * H + 1;
        LoopGoldenTest.RecordingPle ple = new LoopGoldenTest.RecordingPle();
        try {
            generator(new Recorder(), ple, enc, 70).generate(new int[] {BOS, IMAGE}, List.of(image(2, 70)), 1, Sampler.greedy(), true, null);
            fail("spliced rows of the wrong size");
        } catch (IllegalStateException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("vision encoder, image 0: expected 2 x 3 = 6 floats"));
        }
        assertEquals("released after the failed encode", 1, enc.released);
        assertTrue("nothing fetched", ple.fetches.isEmpty());
    }

    @Test
    public void aBudgetTheProgramLacksIsRefusedBeforeEncoding() throws Exception {
        Encoder enc = new Encoder();
        try {
            generator(new Recorder(), new LoopGoldenTest.RecordingPle(), enc, 70, 280)
                    .generate(new int[] {BOS, 5}, List.of(image(4, 140)), 1, Sampler.greedy(), true, null);
            fail("encoded at a budget the vision program has no method for");
        } catch (GenerationException e) {
            assertEquals("image_budget", e.field);
            assertTrue(e.getMessage(), e.getMessage().startsWith("image_budget: expected one of [70, 280] (the vision program's budgets), found 140"));
        }
        assertEquals(Arrays.asList(0, 0), Arrays.asList(enc.encoded, enc.released));
    }

    @Test
    public void aProgramWithoutSoftEmbedsRefusesAnImage() throws Exception {
        Program old = new Program() {   // a revision < 6 program: the interface's default for the soft overload
            @Override public float[] prefill(int[] t, int s, float[] r) { return Recorder.logits(); }
            @Override public float[] decode(int t, int pos, float[] r) { return Recorder.logits(); }
        };
        try {
            generator(old, new LoopGoldenTest.RecordingPle(), new Encoder(), 70).generate(new int[] {BOS, 5}, List.of(image(1, 70)), 1,
                    Sampler.greedy(), true, null);
            fail("an image was dropped by a program that cannot splice it");
        } catch (IllegalStateException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("prefill with soft_embeds: expected a program that takes them (revision >= 6)"));
        }
    }

    // ------------------------------------------------------------------ a bundle's vision entry

    private File copy(String name) throws IOException {
        File src = new File(Golden.dir(), name), dst = tmp.newFolder();
        for (File f : src.listFiles()) Files.copy(f.toPath(), new File(dst, f.getName()).toPath(), StandardCopyOption.REPLACE_EXISTING);
        return dst;
    }

    @Test
    public void aBundleGeneratorTakesItsVisionEntry() throws Exception {
        Manifest m = Manifest.load(copy("bundle_vision"));
        try (PleFile ple = m.openPle()) {
            Program p = new Program() {
                @Override public float[] prefill(int[] t, int s, float[] r) { return new float[m.vocabSize]; }
                @Override public float[] decode(int t, int pos, float[] r) { return new float[m.vocabSize]; }
            };
            Generator.Vision v = Generator.Vision.forBundle(m, new Encoder());
            assertEquals(Arrays.asList(m.vision.boi, m.vision.image, m.vision.eoi, m.padTokenId, m.bosTokenId, m.vision.hiddenSize),
                    Arrays.asList(v.boi, v.image, v.eoi, v.padId, v.bosId, v.hidden));
            Generator.forBundle(m, p, ple, null, new Encoder());
            // The golden tokenizer's <|image|> is not this manifest's image id: a chat's placeholders would be text.
            Tokenizer tok = m.loadTokenizer();
            int placeholder = tok.tokenToId(Chat.IMAGE);
            assertTrue("the golden bundle pairs a tokenizer with another image id", placeholder != m.vision.image);
            try {
                Generator.forBundle(m, p, ple, tok, new Encoder());
                fail("accepted a tokenizer whose image placeholder is not the program's");
            } catch (IllegalArgumentException e) {
                assertEquals(m.source + ": vision.image_tokens.image: expected " + placeholder + " (the id of <|image|> in " + tok.source()
                        + "), found " + m.vision.image, e.getMessage());
            }
        }
        try {
            Generator.Vision.forBundle(Manifest.load(copy("bundle")), new Encoder());
            fail("a text-only bundle got a vision tower");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("vision: expected a vision entry, found none (a text-only bundle)"));
        }
    }

    @Test
    public void aVisionEntryOverAProgramWithoutSoftEmbedsIsRefused() throws Exception {
        Manifest m = HostileManifestTest.withoutSoftEmbeds(copy("bundle_vision"));
        assertEquals(0, m.softEmbedsWidth);
        try {
            Generator.Vision.forBundle(m, new Encoder());
            fail("a vision tower over a program that cannot splice its rows");
        } catch (IllegalArgumentException e) {
            assertEquals(m.source + ": vision.hidden_size: expected 0 (the width of the program's soft_embeds input; 0: it takes none), found "
                    + m.vision.hiddenSize, e.getMessage());
        }
    }
}
