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
    }
}
