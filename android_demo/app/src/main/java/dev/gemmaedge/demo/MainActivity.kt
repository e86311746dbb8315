// The demo's only screen: pick a pushed bundle, type a prompt (with an image, for a bundle with a vision program),
// watch tokens stream with RSS, PLE bytes and tok/s.
package dev.gemmaedge.demo

import android.app.AlertDialog
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.media.ExifInterface
import android.net.Uri
import android.os.Bundle
import android.widget.Button
import android.widget.CheckBox
import android.widget.EditText
import android.widget.ScrollView
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import dev.gemmaedge.core.Chat
import dev.gemmaedge.core.Generator
import dev.gemmaedge.core.ImagePreprocessor
import dev.gemmaedge.core.Manifest
import dev.gemmaedge.core.PleFile
import dev.gemmaedge.core.Sampler
import dev.gemmaedge.core.Tokenizer
import java.io.File
import java.util.concurrent.Executors

class MainActivity : ComponentActivity() {

    /** What a loaded bundle holds open; [vision] (a bundle with a vision program) loads its program only per image prompt. */
    private class Session(val manifest: Manifest, val program: EtProgram, val ple: PleFile, val tokenizer: Tokenizer?) {
        val vision: EtVision? = if (manifest.vision != null) EtVision(manifest) else null
        val generator: Generator = Generator.forBundle(manifest, program, ple, tokenizer, vision)
        fun close() {
            vision?.release()
            program.close()
            ple.close()
        }
    }

    /** A picked image, preprocessed for the loaded bundle's vision program. */
    private class PickedImage(val name: String, val prepared: ImagePreprocessor.Prepared)

    private val worker = Executors.newSingleThreadExecutor()   // all model work runs here, one job at a time
    private var session: Session? = null
    private var image: PickedImage? = null   // set and read on the UI thread

    private lateinit var bundleDir: EditText
    private lateinit var prompt: EditText
    private lateinit var status: TextView
    private lateinit var stats: TextView
    private lateinit var output: TextView
    private lateinit var scroll: ScrollView
    private lateinit var load: Button
    private lateinit var generate: Button
    private lateinit var stop: Button
    private lateinit var verifySha: CheckBox
    private lateinit var pickImage: Button
    private lateinit var clearImage: Button
    private lateinit var imageInfo: TextView

    // The system photo picker: no storage permission, the app sees only the image the user picks.
    private val picker = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri -> uri?.let { prepareImage(it) } }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        bundleDir = findViewById(R.id.bundleDir)
        prompt = findViewById(R.id.prompt)
        status = findViewById(R.id.status)
        stats = findViewById(R.id.stats)
        output = findViewById(R.id.output)
        scroll = findViewById(R.id.scroll)
        load = findViewById(R.id.load)
        generate = findViewById(R.id.generate)
        stop = findViewById(R.id.stop)
        verifySha = findViewById(R.id.verifySha)
        pickImage = findViewById(R.id.pickImage)
        clearImage = findViewById(R.id.clearImage)
        imageInfo = findViewById(R.id.imageInfo)
        pickImage.setOnClickListener {
            picker.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        clearImage.setOnClickListener { setImage(null) }
        load.setOnClickListener { pickBundle(File(bundleDir.text.toString().trim())) }
        generate.setOnClickListener { startGeneration() }
        stop.setOnClickListener { session?.generator?.cancel() }
        stats.text = memoryLine()
    }

    override fun onDestroy() {
        worker.execute { session?.close() }
        worker.shutdown()
        super.onDestroy()
    }

    /** A bundle directory is used as is; a parent directory offers the bundles inside it. */
    private fun pickBundle(dir: File) {
        if (File(dir, "manifest.json").isFile) return loadBundle(dir)
        val bundles = dir.listFiles()?.filter { File(it, "manifest.json").isFile }?.sortedBy { it.name }.orEmpty()
        when (bundles.size) {
            0 -> status.text = "$dir: expected a bundle (manifest.json) or a directory of bundles, found none. " +
                "Push one with android_demo/push_bundle.sh."
            1 -> loadBundle(bundles[0])
            else -> AlertDialog.Builder(this)
                .setTitle("Pick a bundle")
                .setItems(bundles.map { it.name }.toTypedArray()) { _, i -> loadBundle(bundles[i]) }
                .show()
        }
    }

    private fun loadBundle(dir: File) {
        bundleDir.setText(dir.path)
        setBusy(true, "Loading $dir ...")
        setImage(null)   // preprocessed for the previous bundle's budget
        val checkSha = verifySha.isChecked
        worker.execute {
            try {
                session?.close()
                session = null
                val t0 = System.nanoTime()
                val m = Manifest.load(dir)
                m.checkFiles(checkSha)   // the program and tokenizer are always hashed; the box adds the .ple and vision program
                val ple = m.openPle()
                val loaded = try {
                    val tokenizer = m.loadTokenizer()
                    // loadProgram hands ExecuTorch the file only once its size and SHA-256 match the manifest.
                    val program: EtProgram = m.loadProgram { f ->
                        EtProgram(f.path, m.prefillMethod, m.decodeMethod, m.numLayers, m.pleDim, m.vocabSize, m.attendLen,
                                  m.softEmbedsWidth)
                    }
                    try {
                        Session(m, program, ple, tokenizer)   // runs one probe step: the program's vocabulary
                    } catch (e: Throwable) {
                        program.close()
                        throw e
                    }
                } catch (e: Throwable) {
                    ple.close()
                    throw e
                }
                session = loaded
                val tok = loaded.tokenizer
                val h = ple.header()
                val ms = (System.nanoTime() - t0) / 1e6
                ui {
                    setBusy(false, "${dir.name}: V=${m.vocabSize} L=${m.numLayers} P=${m.pleDim}, PLE ${h.dtypeName()} " +
                        "(${m.ple.bytes / (1 shl 20)} MiB in flash), context ${m.maxContext}, loaded in %.0f ms".format(ms) +
                        (loaded.vision?.let { ", images at budget ${it.budget} (vision program ${m.visionFile.bytes / (1 shl 20)} MiB, " +
                            "loaded per image prompt)" } ?: ", text only") +
                        if (tok == null) " — no tokenizer.json in the bundle" else "")
                    generate.isEnabled = tok != null
                    stats.text = memoryLine()
                }
            } catch (e: Throwable) {
                ui { setBusy(false, "Refused ${dir.path}:\n${e.message ?: e.toString()}") }
            }
        }
    }

    private fun startGeneration() {
        val s = session ?: return
        val tok = s.tokenizer ?: return
        val text = prompt.text.toString()
        val images = listOfNotNull(image?.prepared)
        output.text = ""
        setBusy(true, null)
        stop.isEnabled = true
        worker.execute {
            try {
                val ids = promptIds(tok, s.manifest, text, images.size)
                // The rest of the context once the images' spans are in (boi, soft tokens, eoi in place of a
                // placeholder); at least 1, so a prompt that fills it is refused for its length.
                val placeholders = s.manifest.vision?.let { v -> ids.count { it == v.image } } ?: 0
                val promptLength = ids.size - placeholders + images.sumOf { it.softTokens + 2 }
                val maxNew = maxOf(1, s.manifest.maxContext - promptLength)
                val r = s.generator.generate(ids, images, maxNew, Sampler.greedy(), true) { _, delta, st ->
                    val line = statsLine(st, s.ple)
                    ui {
                        output.append(delta)
                        stats.text = line
                        scroll.post { scroll.fullScroll(ScrollView.FOCUS_DOWN) }
                    }
                }
                ui { stats.text = statsLine(r.stats, s.ple); setBusy(false, null) }
            } catch (e: Throwable) {
                ui { setBusy(false, "Generation failed: ${e.message ?: e.toString()}") }
            }
        }
    }

    /** The Gemma 4 chat prompt (the core's Chat, the one Java statement of the format) when the tokenizer has
     *  its turn tokens — the images first in the user turn, one placeholder each, as transformers' examples put
     *  them — else <bos> + the raw text (a base or tiny-vocabulary model), where the Generator puts the images'
     *  spans right after <bos>. */
    private fun promptIds(tok: Tokenizer, m: Manifest, text: String, images: Int): IntArray {
        if (tok.tokenToId(Chat.TURN_OPEN) != null && tok.tokenToId(Chat.TURN_CLOSE) != null) {
            val items = List(images) { Chat.Item.image() } + Chat.Item.text(text)
            return Chat.encode(tok, listOf(Chat.Message("user", items)), false)
        }
        return intArrayOf(m.bosTokenId) + tok.encode(text, false)
    }

    private fun setImage(picked: PickedImage?) {
        image = picked
        imageInfo.text = picked?.let {
            "${it.name}: ${it.prepared.width}x${it.prepared.height}, ${it.prepared.softTokens} soft tokens (budget ${it.prepared.budget})"
        } ?: getString(R.string.no_image)
        clearImage.isEnabled = picked != null
    }

    /** Decodes the picked image, turns it upright (EXIF) and preprocesses it at the bundle's budget, off the UI thread. */
    private fun prepareImage(uri: Uri) {
        val vision = session?.vision ?: return
        setBusy(true, "Reading the image ...")
        worker.execute {
            try {
                val t0 = System.nanoTime()
                val (argb, w, h) = decodeUpright(uri)
                val prepared = ImagePreprocessor.preprocess(argb, w, h, vision.budget)
                val ms = (System.nanoTime() - t0) / 1e6
                val name = uri.lastPathSegment ?: uri.toString()
                ui {
                    setImage(PickedImage(name, prepared))
                    setBusy(false, "Image ${w}x$h read and preprocessed in %.0f ms".format(ms))
                }
            } catch (e: Throwable) {
                ui { setBusy(false, "Refused the image: ${e.message ?: e.toString()}") }
            }
        }
    }

    /**
     * The image's ARGB pixels, width and height, as transformers' load_image sees them: decoded at full size
     * without premultiplying (alpha is dropped, as convert("RGB") drops it, so the colour bytes must be the file's),
     * then turned as its EXIF orientation says (ImagePreprocessor.exifTranspose: PIL's exif_transpose).
     */
    private fun decodeUpright(uri: Uri): Triple<IntArray, Int, Int> {
        val opts = BitmapFactory.Options().apply {
            inPreferredConfig = Bitmap.Config.ARGB_8888
            inPremultiplied = false
        }
        val bitmap = contentResolver.openInputStream(uri)?.use { BitmapFactory.decodeStream(it, null, opts) }
            ?: throw IllegalArgumentException("$uri: expected an image BitmapFactory can decode, found none")
        val w = bitmap.width
        val h = bitmap.height
        val argb = IntArray(w * h)
        bitmap.getPixels(argb, 0, w, 0, 0, w, h)
        bitmap.recycle()
        val orientation = contentResolver.openInputStream(uri)?.use {
            ExifInterface(it).getAttributeInt(ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL)
        } ?: ExifInterface.ORIENTATION_NORMAL
        val upright = ImagePreprocessor.exifTranspose(argb, w, h, orientation)
        return Triple(upright.argb, upright.width, upright.height)
    }

    private fun statsLine(st: Generator.Stats, ple: PleFile): String =
        (if (st.images > 0) "%d image(s) encoded in %.0f ms (in the first token's time)\n".format(st.images, st.encodeNanos / 1e6) else "") +
        "prompt %d tok | prefill %.0f ms (%.1f tok/s) | first token %.0f ms\n".format(
            st.promptTokens, st.prefillNanos / 1e6, st.prefillTokPerS(), st.firstTokenNanos / 1e6) +
        "decode %d tok, %.2f tok/s | PLE read %.2f MiB (%d pages) this run, %.2f MiB total\n".format(
            st.generatedTokens, st.decodeTokPerS(), st.pleBytesRequested / 1048576.0, st.plePagesTouched,
            ple.totalBytesRequested() / 1048576.0) +
        memoryLine() + (st.stopReason?.let { " | stop: $it" } ?: "")

    /** Resident set size of this process, from /proc/self/status. */
    private fun memoryLine(): String {
        val rss = try {
            File("/proc/self/status").readLines().firstOrNull { it.startsWith("VmRSS:") }
                ?.split(Regex("\\s+"))?.getOrNull(1)?.toLong()?.let { "%.0f MiB".format(it / 1024.0) } ?: "?"
        } catch (e: Exception) {
            "?"
        }
        return "RSS $rss"
    }

    private fun setBusy(busy: Boolean, message: String?) {
        load.isEnabled = !busy
        generate.isEnabled = !busy && session?.tokenizer != null
        pickImage.isEnabled = !busy && session?.vision != null
        clearImage.isEnabled = !busy && image != null
        stop.isEnabled = false
        if (message != null) status.text = message
    }

    private fun ui(block: () -> Unit) = runOnUiThread(block)
}
