// Gemma 4 chat prompts: Chat's text and token ids must be transformers' apply_chat_template over Gemma 4's template (golden/make_golden.py records them).
package dev.gemmaedge.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.Test;

public class ChatGoldenTest {

    @Test
    public void chatPromptsEqualApplyChatTemplate() throws Exception {
        Map<String, Object> g = Golden.load("tokenizer/chat.json");
        Tokenizer tok = Tokenizer.fromFile((String) g.get("tokenizer"));
        int n = 0;
        for (Map<String, Object> c : Golden.objects(g.get("cases"))) {
            String name = (String) c.get("name");
            List<Chat.Message> messages = new ArrayList<>();
            for (Map<String, Object> m : Golden.objects(c.get("messages"))) messages.add(new Chat.Message((String) m.get("role"), (String) m.get("content")));
            boolean thinking = (Boolean) c.get("thinking");
            assertEquals(name + " text", c.get("text"), Chat.render(messages, thinking));
            assertArrayEquals(name + " ids", Golden.ints(c.get("ids")), Chat.encode(tok, messages, thinking));
            n++;
        }
        assertTrue("the chat cases are in the golden file", n >= 5);
    }

    @Test
    public void theAppBuildsNoChatTurnsOfItsOwn() throws Exception {
        // The Kotlin app cannot be compiled here, so its chat prompt must come from Chat: no turn marker of
        // Gemma 4 or Gemma 3 spelled out in its sources (run_tests.sh passes their folder as app.src).
        java.io.File dir = new java.io.File(System.getProperty("app.src", "../app/src/main/java"));
        List<java.io.File> sources = new ArrayList<>();
        try (java.util.stream.Stream<java.nio.file.Path> s = java.nio.file.Files.walk(dir.toPath())) {
            s.filter(p -> p.toString().endsWith(".kt") || p.toString().endsWith(".java")).forEach(p -> sources.add(p.toFile()));
        }
        assertTrue(dir + ": expected the app's sources", !sources.isEmpty());
        boolean usesChat = false;
        for (java.io.File f : sources) {
            String text = Json.readUtf8(f);
            for (String marker : new String[] {"<|turn>", "<turn|>", "<start_of_turn>", "<end_of_turn>", "<|think|>"})
                assertTrue(f + " spells out the chat marker " + marker + ": build the prompt with Chat", !text.contains(marker));
            usesChat |= text.contains("Chat.encode(");
        }
        assertTrue(dir + ": the app builds its chat prompt with Chat.encode", usesChat);
    }

    @Test
    public void aTokenizerWithoutTurnTokensIsRefused() throws Exception {
        Map<String, Object> g = Golden.load("tokenizer/golden.json");
        for (Map<String, Object> v : Golden.objects(g.get("variants"))) {
            if (!v.get("name").equals("gemma")) continue;
            String json = Json.readUtf8(new java.io.File((String) v.get("path"))).replace("<|turn>", "<|tur n>");
            Tokenizer tok = Tokenizer.fromJson(json, "no-turns.json");
            try {
                Chat.encode(tok, List.of(new Chat.Message("user", "hi")), false);
                fail("encoded a chat prompt without the turn tokens");
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().startsWith("no-turns.json: a chat prompt needs the Gemma 4 token '<|turn>'"));
            }
            return;
        }
        fail("no gemma tokenizer variant in the golden file");
    }
}
