// The per-layer-embedding lookup the generation loop needs: one batched fetch per prompt, one row per decode step.
package dev.gemmaedge.core;

import java.io.IOException;

/** Source of dequantized PLE rows; {@link PleFile} is the real one, tests wrap it to record calls. */
public interface PleRows {
    /** Rows of {@code ids} in prompt order, dequantized × embed_scale: float[T * L * P]. One batched read. */
    float[] fetch(int[] ids) throws IOException;

    /** One row: float[L * P]. */
    float[] fetchOne(int id) throws IOException;

    /** Floats in one row, L * P. */
    int rowFloats();
}
