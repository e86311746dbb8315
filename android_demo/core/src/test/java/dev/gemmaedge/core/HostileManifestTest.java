// Issue 18 for the Java host: manifests a careless or hostile user could push are refused by name, never run.
package dev.gemmaedge.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class HostileManifestTest {
    @Rule public TemporaryFolder tmp = new TemporaryFolder();

    private File copyBundle() throws IOException {
        return copyBundle("bundle");
    }

    private File copyBundle(String name) throws IOException {
        File src = new File(Golden.dir(), name), dst = tmp.newFolder();
        for (File f : src.listFiles()) Files.copy(f.toPath(), new File(dst, f.getName()).toPath(), StandardCopyOption.REPLACE_EXISTING);
        return dst;
    }

    // ------------------------------------------------------------------ structured manifest edits

    private static Map<String, Object> read(File dir) throws IOException {
        return Json.asObject(Json.parseFile(new File(dir, "manifest.json")), "manifest");
    }

    private static void write(File dir, Map<String, Object> m) throws IOException {
        Files.write(new File(dir, "manifest.json").toPath(), toJson(m).getBytes(StandardCharsets.UTF_8));
    }

    /** Sets (or, with {@code REMOVE}, deletes) the value at a dotted path such as "files.tokenizer.path". */
    private static void set(Map<String, Object> m, String path, Object value) {
        String[] keys = path.split("\\.");
        Map<String, Object> at = m;
        for (int k = 0; k < keys.length - 1; k++) at = Json.asObject(at.get(keys[k]), path);
        if (value == REMOVE) assertNotNull(path + " is in the golden manifest", at.remove(keys[keys.length - 1]));
        else at.put(keys[keys.length - 1], value);
    }

    private static final Object REMOVE = new Object();

    /** JSON text of parsed values (what Json.parse returns), enough for manifests. */
    /** The bundle in {@code dir} with its program's soft_embeds input taken out of the manifest (a program that cannot
     *  splice a tower's rows), loaded. */
    static Manifest withoutSoftEmbeds(File dir) throws Exception {
        File mf = new File(dir, "manifest.json");
        Map<String, Object> raw = Json.asObject(Json.parseFile(mf), "manifest");
        Map<String, Object> methods = Json.asObject(raw.get("methods"), "methods");
        for (String role : new String[] {"prefill", "decode"}) {
            List<Object> inputs = Json.asArray(Json.asObject(methods.get(role), role).get("inputs"), "inputs");
            assertEquals("soft_embeds", Json.asObject(inputs.remove(inputs.size() - 1), "input").get("name"));
        }
        Files.write(mf.toPath(), toJson(raw).getBytes(StandardCharsets.UTF_8));
        return Manifest.load(dir);
    }

    static String toJson(Object v) {
        if (v == null) return "null";
        if (v instanceof String) {
            StringBuilder b = new StringBuilder("\"");
            for (char c : ((String) v).toCharArray()) {
                if (c == '"' || c == '\\') b.append('\\').append(c);
                else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
                else b.append(c);
            }
            return b.append('"').toString();
        }
        if (v instanceof Map) {
            List<String> parts = new ArrayList<>();
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) parts.add(toJson(e.getKey()) + ": " + toJson(e.getValue()));
            return "{" + String.join(", ", parts) + "}";
        }
        if (v instanceof List) {
            List<String> parts = new ArrayList<>();
            for (Object x : (List<?>) v) parts.add(toJson(x));
            return "[" + String.join(", ", parts) + "]";
        }
        return String.valueOf(v);   // Long, BigInteger, Double, Boolean
    }

    /** Loads, checks the files, opens the .ple and the tokenizer: every step a host takes before running. */
    private static void loadEverything(File dir) throws Exception {
        Manifest m = Manifest.load(dir);
        m.checkFiles(false);
        m.openPle().close();
        m.loadTokenizer();
        m.loadProgram(f -> null);
    }

    private static String refusal(File dir) throws Exception {
        try {
            loadEverything(dir);
        } catch (IOException | IllegalArgumentException e) {
            return e.getMessage();
        }
        fail("accepted " + dir + "/manifest.json:\n" + new String(Files.readAllBytes(new File(dir, "manifest.json").toPath()), StandardCharsets.UTF_8));
        return null;
    }

    /** The bundle with {@code path} set to {@code value} is refused with a message holding every fragment. */
    private void expectRefusal(String path, Object value, String... fragments) throws Exception {
        File dir = copyBundle();
        Map<String, Object> m = read(dir);
        set(m, path, value);
        write(dir, m);
        String msg = refusal(dir);
        assertTrue(msg + " should start with the manifest's path", msg.startsWith(new File(dir, "manifest.json").getPath() + ": "));
        for (String f : fragments) assertTrue(msg + "\n  should contain: " + f, msg.contains(f));
        assertEquals("one line: " + msg, -1, msg.indexOf('\n'));
    }

    // ------------------------------------------------------------------ item 6: the .ple entry is required

    @Test
    public void aManifestWithoutThePleEntryIsRefused() throws Exception {
        expectRefusal("files.ple", REMOVE, "files.ple: expected an entry {path, bytes, sha256}, found none");
        expectRefusal("files.ple", null, "files.ple: expected a JSON object, found null");
        expectRefusal("files.program", REMOVE, "files.program: expected an entry");
    }

    // ------------------------------------------------------------------ item 8: paths stay in the bundle folder

    @Test
    public void pathsOutsideTheBundleAreRefused() throws Exception {
        expectRefusal("files.tokenizer.path", "/etc/passwd", "files.tokenizer.path", "absolute");
        expectRefusal("files.tokenizer.path", "../bundle/tokenizer.json", "files.tokenizer.path", "a '..' component");
        expectRefusal("files.program.path", "sub/../../model.pte", "files.program.path", "a '..' component");
        expectRefusal("files.ple.path", "", "files.ple.path", "empty");
        expectRefusal("files.ple.path", "model.ple\u0000.txt", "files.ple.path", "a NUL character");
        expectRefusal("files.onnx", Json.parse("{\"path\": \"/etc/passwd\", \"bytes\": 1, \"sha256\": \"" + "0".repeat(64) + "\"}"),
                "files.onnx.path", "absolute");   // an entry this host never reads is still refused
        expectRefusal("files.tokenizer.path", ".", "files.tokenizer.path", "expected a file inside the bundle folder");
        expectRefusal("files.program.path", 7L, "files.program.path: expected a string, found integer 7");
    }

    @Test
    public void symlinksOutOfTheBundleAreRefused() throws Exception {
        File dir = copyBundle(), other = copyBundle();
        File link = new File(dir, "tok_link.json");
        Files.createSymbolicLink(link.toPath(), new File(other, "tokenizer.json").toPath());   // another bundle's file
        Map<String, Object> m = read(dir);
        set(m, "files.tokenizer.path", "tok_link.json");
        write(dir, m);
        String msg = refusal(dir);
        assertTrue(msg, msg.contains("files.tokenizer.path: expected a file inside the bundle folder " + dir.getCanonicalPath()));
        assertTrue(msg, msg.contains("resolving to " + new File(other, "tokenizer.json").getCanonicalPath()));

        File sub = new File(dir, "sub");   // a folder symlinked out of the bundle: the same, one level down
        Files.createSymbolicLink(sub.toPath(), other.toPath());
        set(m, "files.tokenizer.path", "sub/tokenizer.json");
        write(dir, m);
        assertTrue(refusal(dir).contains("files.tokenizer.path: expected a file inside the bundle folder"));
    }

    @Test
    public void symlinksInsideTheBundleAndASymlinkedBundleLoad() throws Exception {
        File dir = copyBundle();
        File real = new File(dir, "data");
        assertTrue(real.mkdir());
        Files.move(new File(dir, "tokenizer.json").toPath(), new File(real, "tokenizer.json").toPath());
        Files.createSymbolicLink(new File(dir, "tokenizer.json").toPath(), new File(real, "tokenizer.json").toPath());
        loadEverything(dir);   // the link resolves inside the folder
        File linkedBundle = new File(tmp.getRoot(), "linked_bundle");
        Files.createSymbolicLink(linkedBundle.toPath(), dir.toPath());   // e.g. /sdcard -> /storage/emulated/0
        loadEverything(linkedBundle);
    }

    @Test
    public void specialFilesAreRefusedWithoutBlocking() throws Exception {
        File dir = copyBundle();
        File tok = new File(dir, "tokenizer.json");
        assertTrue(tok.delete());
        Process p = new ProcessBuilder("mkfifo", tok.getPath()).inheritIO().start();
        assertEquals("mkfifo", 0, p.waitFor());
        // Opening a FIFO for reading would block this test forever; the check refuses it first.
        String msg = refusal(dir);
        assertTrue(msg, msg.contains("files.tokenizer: expected " + tok.getCanonicalPath() + " to be a regular file, found a special file"));
        assertTrue(tok.delete());
        assertTrue(tok.mkdir());
        assertTrue(refusal(dir).contains("to be a regular file, found a directory"));

        File m = new File(dir, "manifest.json");   // the manifest itself
        assertTrue(m.delete());
        p = new ProcessBuilder("mkfifo", m.getPath()).inheritIO().start();
        assertEquals("mkfifo", 0, p.waitFor());
        try {
            Manifest.load(dir);
            fail("opened a FIFO as the manifest");
        } catch (IOException e) {
            assertEquals(m.getPath() + ": expected a regular file, found a special file (FIFO, socket or device)", e.getMessage());
        }
    }

    // ------------------------------------------------------------------ item 10: types and ranges, once, by name

    @Test
    public void wrongTypesAreNamedWithWhatWasFound() throws Exception {
        expectRefusal("eos_token_ids", "1", "eos_token_ids: expected a JSON array, found string \"1\"");
        expectRefusal("eos_token_ids", Json.parse("[1, \"106\"]"), "eos_token_ids[1]: expected an integer, found string \"106\"");
        expectRefusal("eos_token_ids", Json.parse("[]"), "eos_token_ids: expected at least one id, found []");
        expectRefusal("files.program.bytes", "1545088", "files.program.bytes: expected an integer, found string \"1545088\"");
        expectRefusal("files.program.bytes", 370.0, "files.program.bytes: expected an integer, found number 370.0");
        expectRefusal("files.program.bytes", -1L, "files.program.bytes: expected a size >= 0, found -1");
        expectRefusal("vocab_size", true, "vocab_size: expected an integer, found boolean true");
        expectRefusal("quantization.ple_dtype", 3L, "quantization.ple_dtype: expected fp32 or bf16 or int8 or int4, found integer 3");
        expectRefusal("quantization.linear", "4bit", "quantization.linear: expected none or 8da4w or 8da8w, found string \"4bit\"");
        expectRefusal("quantization.group_size", -32L, "quantization.group_size: expected an integer in [0, 2147483647], found -32");
        expectRefusal("files.ple.sha256", "ABC", "files.ple.sha256: expected 64 lowercase hex digits, found string \"ABC\"");
        expectRefusal("model_hash", "0".repeat(63) + "G", "model_hash: expected 64 lowercase hex digits");
        expectRefusal("methods.prefill.method", "", "methods.prefill.method: expected a method name");
        expectRefusal("methods.decode", "forward", "methods.decode: expected a JSON object, found string \"forward\"");
        expectRefusal("chat_template", 1L, "chat_template: expected a string, found integer 1");
        expectRefusal("config", "gemma", "config: expected a JSON object, found string \"gemma\"");
    }

    @Test
    public void integersOutOfRangeAreRefusedNotTruncated() throws Exception {
        BigInteger two63 = BigInteger.ONE.shiftLeft(63);
        // 2^32 + 1 would become id 1 (an eos) through an int cast: a silently different stop token.
        expectRefusal("eos_token_ids", Arrays.asList(4294967297L), "eos_token_ids[0]: expected an id in [0, 3000) (vocab_size), found 4294967297");
        expectRefusal("eos_token_ids", Arrays.asList(two63), "eos_token_ids[0]: expected an integer in [-2^63, 2^63), found 9223372036854775808");
        expectRefusal("bos_token_id", 3000L, "bos_token_id: expected an id in [0, 3000) (vocab_size), found 3000");
        expectRefusal("pad_token_id", -1L, "pad_token_id: expected an id in [0, 3000) (vocab_size), found -1");
        expectRefusal("max_context", 2147483648L, "max_context: expected an integer in [1, 2147483647], found 2147483648");
        expectRefusal("max_context", 0L, "max_context: expected an integer in [1, 2147483647], found 0");
        expectRefusal("prefill_chunk", 512L, "prefill_chunk: expected an integer in [1, 256], found 512");
        // 2^32 + 32 would pass as 32 through an int cast.
        expectRefusal("methods.prefill.max_tokens", 4294967328L, "methods.prefill.max_tokens: expected an integer in [32, 32], found 4294967328");
        expectRefusal("methods.decode.max_tokens", 2L, "methods.decode.max_tokens: expected an integer in [1, 1], found 2");
        expectRefusal("files.ple.bytes", two63, "files.ple.bytes: expected an integer in [-2^63, 2^63)");
        expectRefusal("num_layers", 5L, "config.num_hidden_layers: expected 5 (= num_layers), found 4");
    }

    @Test
    public void missingKeysAreNamedNotDefaulted() throws Exception {
        expectRefusal("quantization", REMOVE, "keys: expected every one of [", "found [quantization] missing");
        expectRefusal("config.num_hidden_layers", REMOVE, "config: expected every key an export writes, found [num_hidden_layers] missing");
        expectRefusal("config.sliding_window", REMOVE, "found [sliding_window] missing");
        expectRefusal("quantization.ple_dtype", REMOVE, "quantization.ple_dtype: expected fp32 or bf16 or int8 or int4, found null");
        expectRefusal("files.tokenizer.sha256", REMOVE, "files.tokenizer.sha256: expected a string, found null");
    }

    @Test
    public void malformedJsonAndTextAreOneLineErrors() throws Exception {
        File dir = copyBundle();
        File mf = new File(dir, "manifest.json");
        byte[] good = Files.readAllBytes(mf.toPath());
        Files.write(mf.toPath(), Arrays.copyOf(good, good.length / 2));   // truncated
        String msg = refusal(dir);
        assertTrue(msg, msg.startsWith(mf.getPath() + ": invalid JSON at line ") && msg.contains("expected"));
        // An invalid UTF-8 byte inside a key nobody reads: refused, not read as U+FFFD and ignored.
        String text = new String(good, StandardCharsets.UTF_8).replace("\"unknown_top_level_key\"", "\"unknown_top_level_keyX\"");
        byte[] bad = text.getBytes(StandardCharsets.UTF_8);
        int at = text.indexOf("keyX") + 3;
        bad[at] = (byte) 0xC3;   // a lead byte followed by '"': malformed
        Files.write(mf.toPath(), bad);
        assertEquals(mf.getPath() + ": expected UTF-8 text, found an invalid byte sequence at byte offset " + at, refusal(dir));
    }

    @Test
    public void mutatedManifestsGiveOnlyNamedErrors() throws Exception {
        // Seeded byte-level damage: every outcome is a load or a one-line error naming the manifest, never
        // another exception type (ClassCastException, NumberFormatException, IndexOutOfBounds ...).
        File dir = copyBundle();
        File mf = new File(dir, "manifest.json");
        byte[] good = Files.readAllBytes(mf.toPath());
        Random rnd = new Random(18);
        byte[] alphabet = "{}[]\":,-0123456789.eE truefalsn\\u/\n\u00ff".getBytes(StandardCharsets.ISO_8859_1);
        int refused = 0, loaded = 0;
        for (int k = 0; k < 1500; k++) {
            byte[] b = good.clone();
            int edits = 1 + rnd.nextInt(3);
            for (int e = 0; e < edits; e++) {
                int at = rnd.nextInt(b.length);
                switch (rnd.nextInt(3)) {
                    case 0: b[at] = alphabet[rnd.nextInt(alphabet.length)]; break;                 // replace
                    case 1: b = concat(Arrays.copyOf(b, at), Arrays.copyOfRange(b, at + 1, b.length)); break;   // delete
                    default: b = concat(Arrays.copyOf(b, at + 1), Arrays.copyOfRange(b, at, b.length));         // duplicate
                }
            }
            Files.write(mf.toPath(), b);
            try {
                Manifest.load(dir);
                loaded++;
            } catch (IllegalArgumentException | IOException e) {
                assertTrue("mutation " + k + ": " + e.getMessage(), e.getMessage().startsWith(mf.getPath() + ": "));
                assertEquals("mutation " + k + " one line: " + e.getMessage(), -1, e.getMessage().indexOf('\n'));
                refused++;
            }
        }
        assertTrue("most mutations are refused: " + refused + " refused, " + loaded + " loaded", refused > 1000);
    }

    private static byte[] concat(byte[] a, byte[] b) {
        byte[] out = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }

    // ------------------------------------------------------------------ items 1 and 4: the program's digest

    @Test
    public void aCorruptedProgramNeverReachesTheRuntime() throws Exception {
        File dir = copyBundle();
        try (RandomAccessFile f = new RandomAccessFile(new File(dir, "model.pte"), "rw")) {
            f.seek(100);
            int b = f.read();
            f.seek(100);
            f.write(b ^ 0x01);   // one bit: same size
        }
        List<File> handed = new ArrayList<>();
        Manifest m = Manifest.load(dir);
        try {
            m.loadProgram(f -> { handed.add(f); return null; });   // without checkFiles first: hashed here
            fail("handed a corrupted program to the runtime");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("files.program.sha256: expected " + m.program.sha256 + ", found "));
        }
        assertTrue("the loader was never called", handed.isEmpty());
        try {
            m.checkFiles(false);   // the program is hashed even when the .ple is not
            fail("checkFiles(false) accepted a corrupted program");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("files.program.sha256"));
        }
        try (RandomAccessFile f = new RandomAccessFile(new File(dir, "model.pte"), "rw")) { f.setLength(f.length() - 1); }
        try {
            Manifest.load(dir).loadProgram(f -> { handed.add(f); return null; });
            fail("handed a truncated program to the runtime");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("files.program.bytes: expected"));
        }
        assertTrue("the loader was never called", handed.isEmpty());
    }

    @Test
    public void aGoodProgramIsHandedOverOnceVerified() throws Exception {
        File dir = copyBundle();
        Manifest m = Manifest.load(dir);
        List<File> handed = new ArrayList<>();
        m.checkFiles(false);
        assertEquals(null, m.loadProgram(f -> { handed.add(f); return null; }));
        assertEquals(Arrays.asList(new File(dir, "model.pte").getCanonicalFile()), handed);
    }

    @Test
    public void aTokenizerSwappedAfterTheCheckIsRefused() throws Exception {
        File dir = copyBundle();
        Manifest m = Manifest.load(dir);
        m.checkFiles(false);
        File tok = new File(dir, "tokenizer.json");
        byte[] b = Files.readAllBytes(tok.toPath());
        int at = new String(b, StandardCharsets.ISO_8859_1).indexOf("\"<unk>\"") + 1;
        b[at] = (byte) '[';   // same size, another token string
        Files.write(tok.toPath(), b);
        try {
            m.loadTokenizer();
            fail("parsed a tokenizer that differs from the manifest");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("files.tokenizer.sha256"));
        }
    }

    // ------------------------------------------------------------------ issue 20: the vision entry

    @Test
    public void aVisionBundleLoadsWithItsEntryAsWritten() throws Exception {
        File dir = copyBundle("bundle_vision");
        Map<String, Object> raw = read(dir);
        Map<String, Object> v = Json.asObject(raw.get("vision"), "vision");
        Manifest m = Manifest.load(dir);
        assertNotNull("vision entry", m.vision);
        assertTrue(Arrays.equals(new int[] {70, 280}, m.vision.budgets));
        Map<String, Object> methods = Json.asObject(v.get("methods"), "methods");
        assertEquals(methods.get("70"), m.vision.method(70));
        assertEquals(methods.get("280"), m.vision.method(280));
        assertEquals(null, m.vision.method(140));
        assertEquals(((Long) v.get("hidden_size")).intValue(), m.vision.hiddenSize);
        assertEquals(m.softEmbedsWidth, m.vision.hiddenSize);
        assertEquals(ImagePreprocessor.PATCH_DIM, m.vision.patchDim);
        Map<String, Object> ids = Json.asObject(v.get("image_tokens"), "image_tokens");
        assertEquals(Arrays.asList(ids.get("boi"), ids.get("image"), ids.get("eoi")),
                Arrays.asList((long) m.vision.boi, (long) m.vision.image, (long) m.vision.eoi));
        assertEquals(Arrays.asList(m.vocabSize - 3, m.vocabSize - 2, m.vocabSize - 1), Arrays.asList(m.vision.boi, m.vision.image, m.vision.eoi));
        assertEquals("8da8w", m.vision.quantization);
        assertEquals(Integer.valueOf(512), m.vision.blockQ);
        assertEquals(v.get("config"), m.vision.config);
        loadEverything(dir);
        List<File> handed = new ArrayList<>();
        m.loadVision(f -> handed.add(f));
        assertEquals(Arrays.asList(new File(dir, "vision.pte").getCanonicalFile()), handed);
        assertEquals("a text-only bundle has no vision entry", null, Manifest.load(copyBundle()).vision);
        try {
            Manifest.load(copyBundle()).loadVision(f -> handed.add(f));
            fail("loaded a vision program from a text-only bundle");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("files.vision: expected a vision program, found none"));
        }
    }

    @Test
    public void aCorruptedVisionProgramIsRefusedWhenItIsLoaded() throws Exception {
        File dir = copyBundle("bundle_vision");
        try (RandomAccessFile f = new RandomAccessFile(new File(dir, "vision.pte"), "rw")) {
            f.seek(10);
            int b = f.read();
            f.seek(10);
            f.write(b ^ 0x01);   // one bit: same size
        }
        Manifest m = Manifest.load(dir);
        m.checkFiles(false);   // hashed when loaded, as the .ple is by request: a text-only run never reads it
        List<File> handed = new ArrayList<>();
        for (int k = 0; k < 2; k++) {
            try {
                m.loadVision(f -> handed.add(f));
                fail("handed a corrupted vision program to the runtime");
            } catch (IOException e) {
                assertTrue(e.getMessage(), e.getMessage().contains("files.vision.sha256: expected " + m.visionFile.sha256 + ", found "));
            }
        }
        assertTrue("the loader was never called", handed.isEmpty());
        try {
            m.checkFiles(true);
            fail("checkFiles(true) accepted a corrupted vision program");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("files.vision.sha256"));
        }
        try (RandomAccessFile f = new RandomAccessFile(new File(dir, "vision.pte"), "rw")) { f.setLength(f.length() - 1); }
        try {
            m.checkFiles(false);
            fail("checkFiles(false) accepted a truncated vision program");
        } catch (IOException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("files.vision.bytes: expected"));
        }
    }

    @Test
    public void visionEntryDamageIsRefusedNamingPythonsField() throws Exception {
        // golden/make_golden.py applies each damage to the vision bundle's manifest and records the field
        // Python's validate_manifest names; Java must refuse the same manifest naming the same field.
        Map<String, Object> g = Golden.load("vision_refusals.json");
        int n = 0;
        for (Map<String, Object> c : Golden.objects(g.get("cases"))) {
            String path = (String) c.get("path"), field = (String) c.get("field");
            File dir = copyBundle("bundle_vision");
            Map<String, Object> m = read(dir);
            set(m, path, Boolean.TRUE.equals(c.get("remove")) ? REMOVE : c.get("value"));
            write(dir, m);
            String msg = refusal(dir);
            String prefix = new File(dir, "manifest.json").getPath() + ": " + field + ": expected ";
            assertTrue(path + " = " + c.get("value") + ": Java says\n  " + msg + "\nPython says\n  " + c.get("python"), msg.startsWith(prefix));
            assertEquals("one line: " + msg, -1, msg.indexOf('\n'));
            n++;
        }
        assertTrue("the vision refusals are in the golden file", n >= 25);
    }

    @Test
    public void audioEntryDamageIsRefusedNamingPythonsField() throws Exception {
        // as visionEntryDamageIsRefusedNamingPythonsField, for the audio entry (make_golden.py AUDIO_MUTATIONS)
        File ok = copyBundle("bundle_audio");
        Manifest m0 = Manifest.load(ok);
        assertNotNull("audio entry", m0.audio);
        assertEquals(750, m0.audio.maxTokens);
        assertEquals(m0.softEmbedsWidth, m0.audio.hiddenSize);
        Map<String, Object> g = Golden.load("audio_refusals.json");
        int n = 0;
        for (Map<String, Object> c : Golden.objects(g.get("cases"))) {
            String path = (String) c.get("path"), field = (String) c.get("field");
            File dir = copyBundle("bundle_audio");
            Map<String, Object> m = read(dir);
            set(m, path, Boolean.TRUE.equals(c.get("remove")) ? REMOVE : c.get("value"));
            write(dir, m);
            String msg = refusal(dir);
            String prefix = new File(dir, "manifest.json").getPath() + ": " + field + ": expected ";
            assertTrue(path + " = " + c.get("value") + ": Java says\n  " + msg + "\nPython says\n  " + c.get("python"), msg.startsWith(prefix));
            assertEquals("one line: " + msg, -1, msg.indexOf('\n'));
            n++;
        }
        assertTrue("the audio refusals are in the golden file", n >= 25);
    }
}
