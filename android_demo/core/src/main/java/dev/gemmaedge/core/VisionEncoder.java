// The image tower the generation loop asks for an image's soft tokens: the bundle's vision program in the app.
package dev.gemmaedge.core;

/**
 * Turns one preprocessed image into its soft tokens, the rows the program splices in at the image's placeholders
 * (gemma_edge/contract/loop.md, "Images"). The Android app implements it over the bundle's {@code vision.pte}
 * (method {@code vision_{budget}}, handed over by {@link Manifest#loadVision} once its SHA-256 matched); tests
 * implement it with recorded rows. The {@link Generator} calls {@link #encode} for the images of a prompt in
 * order, after every check of the request, and {@link #release} right after them, whether they succeeded or not:
 * the tower's weights are held only while a prompt's images are encoded.
 */
public interface VisionEncoder {
    /**
     * The image's soft tokens, {@code float[image.softTokens * H]} row-major (H = the decoder's hidden size): the
     * rows the tower marks valid, which must be the first {@code softTokens} of its {@code budget} outputs.
     */
    float[] encode(ImagePreprocessor.Prepared image) throws Exception;

    /** Lets go of the tower (loaded again for the next prompt with images). */
    void release();
}
