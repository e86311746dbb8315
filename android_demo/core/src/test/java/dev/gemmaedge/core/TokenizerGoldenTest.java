// Cross-language golden test of the tokenizer: Java must give HF tokenizers' ids and decoded text for every string.
package dev.gemmaedge.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

public class TokenizerGoldenTest {

    private static String show(String s) {
        StringBuilder b = new StringBuilder("\"");
        s.codePoints().forEach(c -> b.append(c < 0x20 || c > 0x7e ? String.format("\\u{%x}", c) : String.valueOf((char) c)));
        return b.append('"').toString();
    }

    @Test
    public void encodeAndDecodeMatchHfTokenizers() throws Exception {
        Map<String, Object> g = Golden.load("tokenizer/golden.json");
        List<String> bad = new ArrayList<>();
        int total = 0;
        for (Map<String, Object> v : Golden.objects(g.get("variants"))) {
            String name = (String) v.get("name");
            Tokenizer t = Tokenizer.fromFile((String) v.get("path"));
            for (Map<String, Object> c : Golden.objects(v.get("cases"))) {
                String text = (String) c.get("text");
                int[] ids = Golden.ints(c.get("ids")), idsSp = Golden.ints(c.get("ids_special"));
                int[] got = t.encode(text, false), gotSp = t.encode(text, true);
                if (!Arrays.equals(ids, got)) bad.add(name + " encode " + show(text) + ": expected " + Arrays.toString(ids) + ", found " + Arrays.toString(got));
                if (!Arrays.equals(idsSp, gotSp)) bad.add(name + " encode+special " + show(text) + ": expected " + Arrays.toString(idsSp) + ", found " + Arrays.toString(gotSp));
                String dec = t.decode(ids, true), decSp = t.decode(idsSp, false);
                if (!c.get("decoded").equals(dec)) bad.add(name + " decode " + Arrays.toString(ids) + ": expected " + show((String) c.get("decoded")) + ", found " + show(dec));
                if (!c.get("decoded_special").equals(decSp)) bad.add(name + " decode(keep special) " + Arrays.toString(idsSp) + ": expected " + show((String) c.get("decoded_special")) + ", found " + show(decSp));
                total++;
            }
        }
        if (!bad.isEmpty()) fail(bad.size() + " mismatches of " + total + " strings; first:\n" + String.join("\n", bad.subList(0, Math.min(10, bad.size()))));
        assertTrue("strings checked: " + total, total >= 1000);
    }

    @Test
    public void streamingDecodeHoldsBackIncompleteUtf8() throws Exception {
        Map<String, Object> g = Golden.load("tokenizer/golden.json");
        Map<String, Object> v = Golden.objects(g.get("variants")).get(0);
        Tokenizer t = Tokenizer.fromFile((String) v.get("path"));
        String text = "héllo 你好 😀 world";
        int[] ids = t.encode(text, false);
        Generator.TextStream s = new Generator.TextStream(t);
        StringBuilder out = new StringBuilder();
        for (int id : ids) {
            String d = s.push(id);
            assertTrue("delta must never carry U+FFFD: " + d, !d.contains("\uFFFD"));
            out.append(d);
        }
        assertEquals(t.decode(ids, true), out.toString());
        assertEquals(text, out.toString());
    }

    @Test
    public void refusesUnsupportedComponentsByName() {
        String base = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"normalizer\": %s, \"decoder\": %s}";
        String[][] bad = {
            {"{\"type\": \"NFKC\"}", "null", "normalizer.type"},
            {"null", "{\"type\": \"ByteLevel\"}", "decoder.type"},
            {"{\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Lowercase\"}]}", "null", "normalizer.type"},
        };
        for (String[] b : bad) {
            try {
                Tokenizer.fromJson(String.format(base, b[0], b[1]), "tok.json");
                fail("accepted " + b[0] + " / " + b[1]);
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().startsWith("tok.json: " + b[2]) && e.getMessage().contains("unsupported"));
            }
        }
        try {
            Tokenizer.fromJson("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", "tok.json");
            fail("accepted Unigram");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("model.type"));
        }
        try {
            Tokenizer.fromJson("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}", "tok.json");
            fail("accepted a merge of unknown tokens");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("model.merges[0]"));
        }
    }

    @Test
    public void refusesHostileValuesAtLoadByName() throws Exception {
        String base = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": %s}, \"merges\": []}, \"pre_tokenizer\": %s, \"decoder\": %s}";
        String[][] bad = {
            // 2^32 would become id 0 through an int cast: a silently different token
            {"4294967296", "null", "null", "model.vocab[\"a\"]: expected an integer in [0, 2147483646], found 4294967296"},
            {"-1", "null", "null", "model.vocab[\"a\"]: expected an integer in [0, 2147483646], found -1"},
            {"0", "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"}", "null",
             "pre_tokenizer Split.pattern.Regex: expected a regular expression, found string \"(\""},
            // an empty Strip.content failed inside decode, mid-generation (StringIndexOutOfBoundsException)
            {"0", "null", "{\"type\": \"Strip\", \"content\": \"\", \"start\": 1, \"stop\": 0}",
             "decoder Strip.content: expected a non-empty string, found \"\""},
            {"0", "null", "{\"type\": \"Strip\", \"content\": \" \", \"start\": 4294967297, \"stop\": 0}",
             "decoder Strip.start: expected an integer in [0, 2147483647], found 4294967297"},
        };
        for (String[] b : bad) {
            try {
                Tokenizer.fromJson(String.format(base, b[0], b[1], b[2]), "tok.json");
                fail("accepted " + Arrays.toString(b));
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().startsWith("tok.json: " + b[3]));
            }
        }
        File f = File.createTempFile("tokenizer", ".json");
        try {
            byte[] text = String.format(base, "0", "null", "null").getBytes(StandardCharsets.UTF_8);
            text[text.length - 2] = (byte) 0x80;   // a continuation byte with no lead byte
            Files.write(f.toPath(), text);
            Tokenizer.fromFile(f.getPath());
            fail("read invalid UTF-8");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith(f.getPath() + ": expected UTF-8 text"));
        } finally {
            assertTrue(f.delete());
        }
    }
}
