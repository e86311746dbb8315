// The audio tower the generation loop asks for a clip's soft tokens: the bundle's audio program in the app.
package dev.gemmaedge.core;

/**
 * Turns one clip into its soft tokens, the rows the program splices in at the clip's placeholders
 * (gemma_edge/contract/loop.md, "Audio"). The Android app implements it over the bundle's {@code audio.pte} (the
 * manifest's {@code audio.method}: rows f32 [1, R, 160] and valid f32 [1, R] -> [1, 12m, H], handed over by
 * {@link Manifest#loadAudio} once its SHA-256 matched); tests implement it with recorded rows. The {@link Generator}
 * calls {@link #encode} for a prompt's clips in order (item after item, each item's clips in order), after every
 * check of the request and after the images, and {@link #release} right after them, whether they succeeded or not:
 * the tower's weights are held only while a prompt's clips are encoded.
 */
public interface AudioEncoder {
    /**
     * The clip's soft tokens, {@code float[clip.softTokens * H]} row-major (H = the decoder's hidden size): the first
     * {@code softTokens} of the program's 12m outputs.
     */
    float[] encode(AudioPreprocessor.Clip clip) throws Exception;

    /** Lets go of the tower (loaded again for the next prompt with audio). */
    void release();
}
