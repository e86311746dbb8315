// Tests of the manifest reader on a golden bundle: a good bundle loads; missing, resized, altered or foreign files are refused.
package dev.gemmaedge.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class ManifestTest {
    @Rule public TemporaryFolder tmp = new TemporaryFolder();

    private File copyBundle() throws IOException {
        File src = new File(Golden.dir(), "bundle"), dst = tmp.newFolder();
        for (File f : src.listFiles()) Files.copy(f.toPath(), new File(dst, f.getName()).toPath(), StandardCopyOption.REPLACE_EXISTING);
        return dst;
    }

    private static void editManifest(File dir, String from, String to) throws IOException {
        File m = new File(dir, "manifest.json");
        String s = new String(Files.readAllBytes(m.toPath()), StandardCharsets.UTF_8);
        assertTrue("manifest contains " + from, s.contains(from));
        Files.write(m.toPath(), s.replace(from, to).getBytes(StandardCharsets.UTF_8));
    }

    private static void expectRefusal(File dir, boolean sha, String... fragments) throws Exception {
        try {
            Manifest m = Manifest.load(dir);
            m.checkFiles(sha);
            m.openPle().close();
            fail("accepted a bundle that should fail with " + String.join(", ", fragments));
        } catch (IOException | IllegalArgumentException e) {
            for (String f : fragments) assertTrue(e.getMessage() + " should contain " + f, e.getMessage().contains(f));
        }
    }

    @Test
    public void goodBundleLoads() throws Exception {
        File dir = copyBundle();
        Manifest m = Manifest.load(dir);
        m.checkFiles(true);
        assertEquals(256, m.maxContext);
        assertEquals(32, m.prefillChunk);
        assertEquals("forward", m.prefillMethod);   // one dynamic method plays both roles
        assertEquals("forward", m.decodeMethod);
        assertTrue("the golden manifest's methods take attend_len", m.attendLen);
        assertEquals("soft_embeds [1, T, hidden_size]", ((Number) m.config.get("hidden_size")).intValue(), m.softEmbedsWidth);
        assertEquals(2, m.bosTokenId);
        assertArrayEquals(new int[] {1, 106}, m.eosTokenIds);
        assertEquals("int4", m.quantization.get("ple_dtype"));
        try (PleFile p = m.openPle()) {
            assertEquals(m.ple.identity, p.identityHex());
            assertEquals(m.vocabSize, p.header().vocabSize);
        }
        Tokenizer t = m.loadTokenizer();
        assertNotNull(t);
        assertArrayEquals(t.encode("hello world", false), t.encode("hello world", false));
    }

    /** The manifest's text with its first {@code count} inputs named {@code name} (-1: all) taken out of the methods. */
    private static void dropInput(File dir, String name, int count) throws IOException {
        File m = new File(dir, "manifest.json");
        String s = new String(Files.readAllBytes(m.toPath()), StandardCharsets.UTF_8);
        String entry = ",\\s*\\{\\s*\"name\": \"" + name + "\",\\s*\"dtype\": \"[a-z0-9]+\",\\s*\"shape\": \\[[^\\]]*\\]\\s*\\}";
        String t = count < 0 ? s.replaceAll(entry, "") : s.replaceFirst(entry, "");
        assertTrue("the golden manifest lists " + name, !t.equals(s));
        Files.write(m.toPath(), t.getBytes(StandardCharsets.UTF_8));
    }

    @Test
    public void stepInputsFollowTheMethodsInputs() throws Exception {
        File old = copyBundle();   // a revision < 5 bundle: three inputs
        dropInput(old, "soft_embeds", -1);
        dropInput(old, "attend_len", -1);
        assertEquals(false, Manifest.load(old).attendLen);
        assertEquals(0, Manifest.load(old).softEmbedsWidth);
        File five = copyBundle();   // revision 5: attend_len, no soft_embeds
        dropInput(five, "soft_embeds", -1);
        assertEquals(true, Manifest.load(five).attendLen);
        assertEquals(0, Manifest.load(five).softEmbedsWidth);
        File mixed = copyBundle();   // prefill without soft_embeds, decode with it: refused, naming the field
        dropInput(mixed, "soft_embeds", 1);
        expectRefusal(mixed, false, "methods.decode.inputs", "expected attend_len, as methods.prefill.inputs",
                "found attend_len, soft_embeds");
        File renamed = copyBundle();   // inputs this host would feed by position under other names: refused
        editManifest(renamed, "\"soft_embeds\"", "\"some_other_input\"");
        expectRefusal(renamed, false, "methods.prefill.inputs", "expected names [tokens, input_pos, ple_rows]",
                "found [tokens, input_pos, ple_rows, attend_len, some_other_input]");
    }

    @Test
    public void missingFileIsRefused() throws Exception {
        File dir = copyBundle();
        assertTrue(new File(dir, "model.pte").delete());
        expectRefusal(dir, false, "files.program", "model.pte", "no such file");
        assertTrue(new File(dir, "manifest.json").delete());
        expectRefusal(dir, false, "manifest.json", "no such file");
    }

    @Test
    public void sizeMismatchIsRefused() throws Exception {
        File dir = copyBundle();
        try (RandomAccessFile f = new RandomAccessFile(new File(dir, "tokenizer.json"), "rw")) { f.setLength(f.length() + 1); }
        expectRefusal(dir, false, "files.tokenizer.bytes", "expected", "found");
    }

    @Test
    public void shaMismatchIsRefused() throws Exception {
        File dir = copyBundle();   // the program and tokenizer are always hashed (Python's verify="fast")
        try (RandomAccessFile f = new RandomAccessFile(new File(dir, "model.pte"), "rw")) { f.seek(3); f.write('X'); }
        expectRefusal(dir, false, "files.program.sha256", "expected", "found");
        dir = copyBundle();   // a .ple data byte: same size, same header identity; only hashing the table tells
        Manifest m = Manifest.load(dir);
        try (RandomAccessFile f = new RandomAccessFile(new File(dir, "model.ple"), "rw")) {
            long at = f.length() / 2;
            f.seek(at);
            int b = f.read();
            f.seek(at);
            f.write(b ^ 0x5A);
        }
        m.checkFiles(false);
        expectRefusal(dir, true, "files.ple.sha256", "expected", "found");
    }

    @Test
    public void pleIdentityMismatchIsRefused() throws Exception {
        File dir = copyBundle();
        Manifest m = Manifest.load(dir);
        String other = m.ple.identity.replace(m.ple.identity.charAt(0), m.ple.identity.charAt(0) == 'a' ? 'b' : 'a');
        editManifest(dir, "\"identity\": \"" + m.ple.identity + "\"", "\"identity\": \"" + other + "\"");
        expectRefusal(dir, false, "model.ple", "identity", other);
    }

    @Test
    public void schemaErrorsNameTheField() throws Exception {
        File dir = copyBundle();
        editManifest(dir, "\"format_version\": 1", "\"format_version\": 2");
        expectRefusal(dir, false, "format_version", "expected 1", "found 2");
        dir = copyBundle();
        editManifest(dir, "\"num_layers\": ", "\"num_layers\": 1");
        expectRefusal(dir, false, "num_layers");
        dir = copyBundle();
        editManifest(dir, "\"ple_dtype\": \"int4\"", "\"ple_dtype\": \"int8\"");
        expectRefusal(dir, false, "dtype", "int8", "found int4");
        dir = copyBundle();
        editManifest(dir, "\"path\": \"model.ple\"", "\"path\": \"../model.ple\"");
        expectRefusal(dir, false, "files.ple.path");
    }
}
