// The core's AudioEncoder with ExecuTorch's Module: the bundle's audio.pte, loaded for a prompt's clips and destroyed after.
package dev.gemmaedge.demo

import dev.gemmaedge.core.AudioEncoder
import dev.gemmaedge.core.AudioPreprocessor
import dev.gemmaedge.core.Manifest
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/**
 * Wraps `audio.pte` (manifest "audio"): one method, dynamic in the clip's length, `audio.method`(rows f32
 * [1, R, 160], valid f32 [1, R]) -> soft f32 [1, 12m, H], R = 48m − 3 (AudioPreprocessor.programFrames). The log-mel
 * front end runs inside the program; the clip's soft tokens are the first `softTokens` rows of its output (the rest,
 * the padding's, is dropped), as Python's ProgramAudioEncoder takes them.
 *
 * The program is opened on the first clip of a prompt — through [Manifest.loadAudio], which checks its size and
 * SHA-256 first, every time, so a text-only session never reads the file — and destroyed by [release], which the
 * core's Generator calls as soon as the prompt's clips are encoded: the tower's weights are not held while the
 * decoder generates.
 */
class EtAudio(private val manifest: Manifest) : AudioEncoder {
    private val audio: Manifest.Audio =
        requireNotNull(manifest.audio) { "${manifest.source}: audio: expected an audio entry, found none (a bundle without an audio tower)" }
    private var module: Module? = null
    private var loaded = false   // the method, once per load of the program

    override fun encode(clip: AudioPreprocessor.Clip): FloatArray {
        val method = audio.method
        val where = "${manifest.audioFile.path}: method \"$method\""
        require(clip.softTokens in 1..audio.maxTokens) {
            "audio: a clip of ${clip.softTokens} soft tokens, expected 1..${audio.maxTokens} (manifest audio.max_tokens)"
        }
        val r = clip.programFrames()
        require(r > 0 && (r + 3) % AudioPreprocessor.BLOCK_ROWS == 0 && clip.rows.size == r * AudioPreprocessor.HOP) {
            "$method inputs: expected rows [1, R, ${AudioPreprocessor.HOP}] and valid [1, R] with R = 48m - 3, found " +
                "${clip.rows.size} and ${clip.valid.size} values"
        }
        val m = module ?: manifest.loadAudio { f -> Module.load(f.path, Module.LOAD_MODE_MMAP) }.also { module = it; loaded = false }
        if (!loaded) {
            val err = m.loadMethod(method)
            require(err == 0) { "$where: expected it to load (error 0), found ExecuTorch error 0x${err.toString(16)}" }
            loaded = true
        }
        val out = m.execute(method,
            EValue.from(Tensor.fromBlob(clip.rows, longArrayOf(1, r.toLong(), AudioPreprocessor.HOP.toLong()))),
            EValue.from(Tensor.fromBlob(clip.valid, longArrayOf(1, r.toLong()))))
        check(out.isNotEmpty()) { "$where: expected 1 output (soft), found none" }
        val soft = out[0].toTensor()
        val positions = AudioPreprocessor.BLOCK.toLong() * (r + 3) / AudioPreprocessor.BLOCK_ROWS   // 12 per block of 48 rows
        val h = audio.hiddenSize
        check(soft.shape().contentEquals(longArrayOf(1, positions, h.toLong()))) {
            "$where: expected [1, $positions, $h] (the clip's ${clip.softTokens} soft tokens first), found ${soft.shape().contentToString()}"
        }
        return soft.dataAsFloatArray.copyOf(clip.softTokens * h)
    }

    /** Destroys the program (its packed weights go with it); the next clip loads it again. */
    override fun release() {
        module?.destroy()
        module = null
        loaded = false
    }
}
