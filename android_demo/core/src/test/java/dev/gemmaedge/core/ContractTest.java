// The Java manifest reader's key lists equal the Python contract's (gemma_edge/contract/bundle_format.py, via the golden files).
package dev.gemmaedge.core;

import static org.junit.Assert.assertEquals;

import java.io.IOException;
import java.util.Map;
import org.junit.Test;

public class ContractTest {
    @Test
    public void keyListsEqualPythons() throws IOException {
        Map<String, Object> c = Golden.load("contract.json");
        assertEquals(c.get("required_keys"), Manifest.REQUIRED_KEYS);
        assertEquals(c.get("config_required_keys"), Manifest.CONFIG_REQUIRED_KEYS);
        assertEquals(c.get("input_names"), Manifest.INPUT_NAMES);
        // JSON integers parse as Long
        java.util.List<Long> budgets = new java.util.ArrayList<>();
        for (int b : Manifest.SUPPORTED_BUDGETS) budgets.add((long) b);
        assertEquals(c.get("supported_budgets"), budgets);
        assertEquals(c.get("vision_quant"), Manifest.VISION_QUANT);
        assertEquals(c.get("vision_config_ints"), Manifest.VISION_CONFIG_INTS);
        Map<String, Object> image = Json.asObject(c.get("image_tokens"), "image_tokens");
        assertEquals(image.get("image"), Chat.IMAGE);
    }
}
