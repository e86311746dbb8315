// Gemma 4 chat prompts, image turns too: Chat's text and token ids must be transformers' apply_chat_template over Gemma 4's template (golden/make_golden.py records them).
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
        Integer image = tok.tokenToId(Chat.IMAGE);
        assertTrue("the golden tokenizer has the image placeholder", image != null);
        int n = 0, withImages = 0;
        for (Map<String, Object> c : Golden.objects(g.get("cases"))) {
            String name = (String) c.get("name");
            List<Chat.Message> messages = new ArrayList<>();
            for (Map<String, Object> m : Golden.objects(c.get("messages"))) messages.add(message(m));
            boolean thinking = (Boolean) c.get("thinking");
            assertEquals(name + " text", c.get("text"), Chat.render(messages, thinking));
            int[] ids = Chat.encode(tok, messages, thinking);
            assertArrayEquals(name + " ids", Golden.ints(c.get("ids")), ids);
            int placeholders = 0;
            for (int id : ids) if (id == image) placeholders++;
            assertEquals(name + ": one placeholder id per image item", Chat.images(messages), placeholders);
            n++;
            withImages += Chat.images(messages) > 0 ? 1 : 0;
        }
        assertTrue("the chat cases are in the golden file", n >= 5);
        assertTrue("chat cases with images are in the golden file", withImages >= 4);
    }

    /** A golden message: content a string, or a list of {"type": "text", "text"} / {"type": "image"} items. */
    private static Chat.Message message(Map<String, Object> m) {
        String role = (String) m.get("role");
        if (m.get("content") instanceof String) return new Chat.Message(role, (String) m.get("content"));
        List<Chat.Item> items = new ArrayList<>();
        for (Map<String, Object> it : Golden.objects(m.get("content")))
            items.add(it.get("type").equals("image") ? Chat.Item.image() : Chat.Item.text((String) it.get("text")));
        return new Chat.Message(role, items);
    }

    @Test
    public void imageItemsRenderAsTheTemplateDoes() {
        List<Chat.Message> chat = List.of(new Chat.Message("user", List.of(Chat.Item.text(" Look: "), Chat.Item.image(), Chat.Item.text(" ok? "))),
                new Chat.Message("assistant", List.of(Chat.Item.text("<|channel>hmm<channel|> Yes. "))));
        assertEquals("<bos><|turn>user\nLook:\n\n<|image|>\n\nok?<turn|>\n<|turn>model\nYes.<turn|>\n<|turn>model\n", Chat.render(chat, false));
        assertEquals(1, Chat.images(chat));
        try {   // the template trims a leading system turn as a string: an image there has no rendering
            Chat.render(List.of(new Chat.Message("system", List.of(Chat.Item.image())), new Chat.Message("user", "hi")), false);
            fail("rendered an image in the system turn");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().startsWith("chat message 0 content: expected text (a system turn), found 1 image item(s)"));
        }
    }

    @Test
    public void aTokenizerWithoutTheImageTokenIsRefusedForAnImageChat() throws Exception {
        Map<String, Object> g = Golden.load("tokenizer/golden.json");
        for (Map<String, Object> v : Golden.objects(g.get("variants"))) {
            if (!v.get("name").equals("gemma")) continue;
            String json = Json.readUtf8(new java.io.File((String) v.get("path"))).replace("<|image|>", "<|imag e|>");
            Tokenizer tok = Tokenizer.fromJson(json, "no-image.json");
            List<Chat.Message> chat = List.of(new Chat.Message("user", List.of(Chat.Item.image(), Chat.Item.text("what is it?"))));
            try {
                Chat.encode(tok, chat, false);
                fail("encoded an image chat without the image token");
            } catch (IllegalArgumentException e) {
                assertTrue(e.getMessage(), e.getMessage().startsWith("no-image.json: a chat with an image needs the Gemma 4 special token '<|image|>'"));
            }
            assertTrue("a text chat is still encoded", Chat.encode(tok, List.of(new Chat.Message("user", "hi")), false).length > 3);
            return;
        }
        fail("no gemma tokenizer variant in the golden file");
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
