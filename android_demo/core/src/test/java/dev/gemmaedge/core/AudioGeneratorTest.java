// Audio in the Java loop beyond the shared suite (LoopGoldenTest): a bad or failing encoder, real clips, a bundle's audio entry.
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
import java.util.Map;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class AudioGeneratorTest {
    @Rule public TemporaryFolder tmp = new TemporaryFolder();

    static final int V = 96, BOA = 90, AUDIO = 91, EOA = 92, BOI = 93, IMAGE = 94, EOI = 95, PAD = 0, BOS = 2, H = 3;

    /** Counts encode and release calls; clip j gets rows all 10 + j; may return the wrong size or throw at a clip. */
    static final class Encoder implements AudioEncoder {
        int encoded, released;
        Integer floats;        // null: the right size
        Integer failAt;        // null: never fails
        final List<AudioPreprocessor.Clip> seen = new ArrayList<>();

        @Override public float[] encode(AudioPreprocessor.Clip clip) throws Exception {
            if (failAt != null && encoded == failAt) throw new IOException("audio.pte: method audio: ExecuTorch error 0x12");
            seen.add(clip);
            float[] rows = new float[floats != null ? floats : clip.softTokens * H];
            Arrays.fill(rows, 10 + encoded++);
            return rows;
        }

        @Override public void release() { released++; }
    }

    static Generator generator(Program p, LoopGoldenTest.RecordingPle ple, Encoder enc, VisionGeneratorTest.Encoder vision) {
        Generator.Vision v = vision == null ? null : new Generator.Vision(vision, BOI, IMAGE, EOI, PAD, BOS, H, new int[] {70});
        return new Generator(p, ple, V, 64, 4, new int[] {1}, null, v, new Generator.Audio(enc, BOA, AUDIO, EOA, PAD, BOS, H));
    }

    static List<List<AudioPreprocessor.Clip>> items(int... softTokens) {
        List<List<AudioPreprocessor.Clip>> out = new ArrayList<>();
        for (int n : softTokens) out.add(List.of(LoopGoldenTest.replayClip(n)));
        return out;
    }

    static Generator.Result run(Generator g, int[] prompt, List<List<AudioPreprocessor.Clip>> audio) throws Exception {
        return g.generate(prompt, List.of(), audio, 1, Sampler.greedy(), true, null);
    }

    @Test
    public void aTextPromptNeverTouchesTheAudioTower() throws Exception {
        VisionGeneratorTest.Recorder p = new VisionGeneratorTest.Recorder();
        Encoder enc = new Encoder();
        Generator.Result r = generator(p, new LoopGoldenTest.RecordingPle(), enc, null).generate(new int[] {BOS, 5, 6, 7, 8, 9}, 2, Sampler.greedy(), null);
        assertEquals(Arrays.asList("text@0", "text@4"), p.calls);
        assertEquals("never encoded, never loaded or released", Arrays.asList(0, 0), Arrays.asList(enc.encoded, enc.released));
        assertEquals(Arrays.asList(0, 0), Arrays.asList(r.stats.audioClips, r.stats.audioTokens));
    }

    @Test
    public void realClipsReachTheEncoderAndTheirRowsTheirPositions() throws Exception {
        // 1.5 s: one clip of 38 soft tokens on 189 rows, handed over as AudioPreprocessor cut it; its rows at the audio positions
        float[] samples = new float[24000];
        for (int i = 0; i < samples.length; i++) samples[i] = (float) Math.sin(i * 0.01);
        List<AudioPreprocessor.Clip> clips = AudioPreprocessor.clips(samples);
        assertEquals(1, clips.size());
        assertEquals(38, clips.get(0).softTokens);
        assertEquals(189, clips.get(0).programFrames());
        assertEquals(189 * AudioPreprocessor.HOP, clips.get(0).rows.length);
        VisionGeneratorTest.Recorder p = new VisionGeneratorTest.Recorder();
        LoopGoldenTest.RecordingPle ple = new LoopGoldenTest.RecordingPle();
        Encoder enc = new Encoder();
        Generator.Result r = run(generator(p, ple, enc, null), new int[] {BOS, 5, AUDIO, 6}, List.of(clips));
        assertTrue("the encoder got the clip itself", enc.seen.get(0) == clips.get(0));
        List<Integer> fetched = ple.fetches.get(0);
        assertEquals(2 + 1 + 38 + 1 + 1, fetched.size());
        assertEquals(Arrays.asList(BOS, 5, BOA, PAD), fetched.subList(0, 4));
        assertEquals(Arrays.asList(PAD, EOA, 6), fetched.subList(40, 43));
        float[] first = p.soft.get(0);
        assertEquals("boa row", 0f, first[2 * H], 0f);
        assertEquals("the clip's first row at position 3", 10f, first[3 * H], 0f);
        assertEquals(Arrays.asList(1, 38, 43), Arrays.asList(r.stats.audioClips, r.stats.audioTokens, r.stats.promptTokens));
        assertTrue(r.stats.toString(), r.stats.toString().contains("0 image(s) and 1 audio clip(s) (38 soft tokens)"));
    }

    @Test
    public void anEncoderOfTheWrongSizeIsRefusedAndReleased() throws Exception {
        Encoder enc = new Encoder();
        enc.floats = 2 * H + 1;
        LoopGoldenTest.RecordingPle ple = new LoopGoldenTest.RecordingPle();
        try {
            run(generator(new VisionGeneratorTest.Recorder(), ple, enc, null), new int[] {BOS, AUDIO}, items(2));
            fail("spliced rows of the wrong size");
        } catch (IllegalStateException e) {
            assertEquals("audio encoder, clip 0: expected 2 x 3 = 6 floats (its soft tokens x hidden_size), found 7", e.getMessage());
        }
        assertEquals("released after the failed encode", 1, enc.released);
        assertTrue("nothing fetched", ple.fetches.isEmpty());
    }

    @Test
    public void theEncoderIsReleasedWhenEncodeThrows() throws Exception {
        Encoder enc = new Encoder();
        enc.failAt = 1;   // the second clip
        LoopGoldenTest.RecordingPle ple = new LoopGoldenTest.RecordingPle();
        VisionGeneratorTest.Recorder p = new VisionGeneratorTest.Recorder();
        try {
            run(generator(p, ple, enc, null), new int[] {BOS, AUDIO, 5, AUDIO}, items(2, 3));
            fail("a clip the encoder failed on was dropped");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("ExecuTorch error"));
        }
        assertEquals(Arrays.asList(1, 1), Arrays.asList(enc.encoded, enc.released));
        assertTrue("nothing fetched or prefilled", ple.fetches.isEmpty() && p.calls.isEmpty());
    }

    @Test
    public void aFailedImageLeavesTheAudioTowerUntouched() throws Exception {
        Encoder enc = new Encoder();
        VisionGeneratorTest.Encoder vision = new VisionGeneratorTest.Encoder();
        vision.floats = 1;
        try {
            generator(new VisionGeneratorTest.Recorder(), new LoopGoldenTest.RecordingPle(), enc, vision)
                    .generate(new int[] {BOS, IMAGE, AUDIO}, List.of(VisionGeneratorTest.image(2, 70)), items(3), 1, Sampler.greedy(), true, null);
            fail("an image of the wrong size passed");
        } catch (IllegalStateException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("vision encoder, image 0"));
        }
        assertEquals("the vision tower released", 1, vision.released);
        assertEquals("the audio tower never loaded", Arrays.asList(0, 0), Arrays.asList(enc.encoded, enc.released));
    }

    @Test
    public void itemsWithoutUsableClipsAreRefusedBeforeAnyWork() throws Exception {
        Encoder enc = new Encoder();
        LoopGoldenTest.RecordingPle ple = new LoopGoldenTest.RecordingPle();
        Generator g = generator(new VisionGeneratorTest.Recorder(), ple, enc, null);
        List<List<AudioPreprocessor.Clip>> empty = new ArrayList<>();
        empty.add(List.of());
        Object[][] cases = {
            {empty, "audio item 0: expected at least one clip, found none (its samples make no soft token)"},
            {items(751), "audio item 0 clip 0: expected 1..750 soft tokens (at most 30 s), found 751"},
            {items(4, 0), "audio item 1 clip 0: expected 1..750 soft tokens (at most 30 s), found 0"},
        };
        for (Object[] k : cases) {
            try {
                @SuppressWarnings("unchecked")
                List<List<AudioPreprocessor.Clip>> audio = (List<List<AudioPreprocessor.Clip>>) k[0];
                run(g, new int[] {BOS, 5}, audio);
                fail("accepted " + k[1]);
            } catch (GenerationException e) {
                assertEquals("audio", e.field);
                assertEquals(k[1], e.getMessage());
            }
        }
        assertTrue("nothing encoded or fetched", enc.encoded == 0 && enc.released == 0 && ple.fetches.isEmpty());
    }

    @Test
    public void towersOfTwoWidthsOrSharedIdsAreRefused() {
        Generator.Vision v = new Generator.Vision(new VisionGeneratorTest.Encoder(), BOI, IMAGE, EOI, PAD, BOS, H, new int[] {70});
        try {
            new Generator(new VisionGeneratorTest.Recorder(), new LoopGoldenTest.RecordingPle(), V, 64, 4, new int[] {1}, null, v,
                    new Generator.Audio(new Encoder(), BOA, AUDIO, EOA, PAD, BOS, H + 1));
            fail("one soft_embeds input of two widths");
        } catch (IllegalArgumentException e) {
            assertEquals("audio hidden_size: expected 3 (the vision tower's: one soft_embeds width), found 4", e.getMessage());
        }
        try {
            new Generator(new VisionGeneratorTest.Recorder(), new LoopGoldenTest.RecordingPle(), V, 64, 4, new int[] {1}, null, v,
                    new Generator.Audio(new Encoder(), BOA, IMAGE, EOA, PAD, BOS, H));
            fail("an id both towers expand");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("audio_tokens: expected ids none of image_tokens holds"));
        }
        try {
            new Generator(new VisionGeneratorTest.Recorder(), new LoopGoldenTest.RecordingPle(), V, 64, 4, new int[] {1}, null, null,
                    new Generator.Audio(new Encoder(), BOA, AUDIO, V, PAD, BOS, H));
            fail("an eoa outside the vocabulary");
        } catch (IllegalArgumentException e) {
            assertEquals("audio_tokens.eoa: expected an id in [0, 96) (vocab_size), found 96", e.getMessage());
        }
    }

    // ------------------------------------------------------------------ a bundle's audio entry

    private File copy(String name) throws IOException {
        File src = new File(Golden.dir(), name), dst = tmp.newFolder();
        for (File f : src.listFiles()) Files.copy(f.toPath(), new File(dst, f.getName()).toPath(), StandardCopyOption.REPLACE_EXISTING);
        return dst;
    }

    static Program stub(Manifest m) {
        return new Program() {
            @Override public float[] prefill(int[] t, int s, float[] r) { return new float[m.vocabSize]; }
            @Override public float[] decode(int t, int pos, float[] r) { return new float[m.vocabSize]; }
        };
    }

    @Test
    public void aBundleGeneratorTakesItsAudioEntry() throws Exception {
        File dir = copy("bundle_audio");
        Manifest m = Manifest.load(dir);
        try (PleFile ple = m.openPle()) {
            Generator.Audio a = Generator.Audio.forBundle(m, new Encoder());
            assertEquals(Arrays.asList(m.audio.boa, m.audio.audio, m.audio.eoa, m.padTokenId, m.bosTokenId, m.audio.hiddenSize),
                    Arrays.asList(a.boa, a.audio, a.eoa, a.padId, a.bosId, a.hidden));
            Tokenizer tok = m.loadTokenizer();
            assertEquals("the golden tokenizer has no <|audio|>: nothing to compare", null, tok.tokenToId(Chat.AUDIO));
            Generator.forBundle(m, stub(m), ple, tok, null, new Encoder());
            // A tokenizer whose <|audio|> is another id than the manifest's: a chat's placeholder would be text.
            Map<String, Object> raw = Json.asObject(Json.parseFile(new File(dir, "tokenizer.json")), "tokenizer.json");
            List<Object> added = Json.asArray(raw.get("added_tokens"), "added_tokens");
            Map<String, Object> entry = new java.util.LinkedHashMap<>();
            entry.put("id", 2650L);
            entry.put("content", Chat.AUDIO);
            for (String flag : new String[] {"single_word", "lstrip", "rstrip", "normalized"}) entry.put(flag, false);
            entry.put("special", true);
            added.add(entry);
            Tokenizer withAudio = Tokenizer.fromJson(HostileManifestTest.toJson(raw), "with-audio.json");
            assertEquals(Integer.valueOf(2650), withAudio.tokenToId(Chat.AUDIO));
            try {
                Generator.forBundle(m, stub(m), ple, withAudio, null, new Encoder());
                fail("accepted a tokenizer whose audio placeholder is not the program's");
            } catch (IllegalArgumentException e) {
                assertEquals(m.source + ": audio.audio_tokens.audio: expected 2650 (the id of <|audio|> in with-audio.json), found " + m.audio.audio,
                        e.getMessage());
            }
        }
        for (String other : new String[] {"bundle", "bundle_vision"}) {
            try {
                Generator.Audio.forBundle(Manifest.load(copy(other)), new Encoder());
                fail(other + " got an audio tower");
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("audio: expected an audio entry, found none (a bundle exported without an audio tower)"));
            }
        }
    }

    @Test
    public void theAudioProgramIsHandedOverOnlyHashed() throws Exception {
        File dir = copy("bundle_audio");
        Manifest m = Manifest.load(dir);
        m.checkFiles(false);
        assertEquals(new File(dir, m.audioFile.path).getCanonicalFile(), m.loadAudio(f -> f));
        byte[] b = Files.readAllBytes(new File(dir, m.audioFile.path).toPath());
        b[5] ^= 0x20;   // same size, other bytes
        Files.write(new File(dir, m.audioFile.path).toPath(), b);
        try {
            m.loadAudio(f -> f);
            fail("handed over a tampered audio program");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("files.audio.sha256: expected " + m.audioFile.sha256));
        }
        try {
            Manifest.load(copy("bundle")).loadAudio(f -> f);
            fail("a text-only bundle handed over an audio program");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("files.audio: expected an audio program, found none"));
        }
    }

    @Test
    public void anAudioEntryOverAProgramWithoutSoftEmbedsIsRefused() throws Exception {
        Manifest m = HostileManifestTest.withoutSoftEmbeds(copy("bundle_audio"));
        assertEquals(0, m.softEmbedsWidth);
        try {
            Generator.Audio.forBundle(m, new Encoder());
            fail("an audio tower over a program that cannot splice its rows");
        } catch (IllegalArgumentException e) {
            assertEquals(m.source + ": audio.hidden_size: expected 0 (the width of the program's soft_embeds input; 0: it takes none), found "
                    + m.audio.hiddenSize, e.getMessage());
        }
    }
}
