// The demo's only screen: pick a pushed bundle, type a prompt (with an image, for a bundle with a vision program, and a
// recording or an audio file, for one with an audio program), watch tokens stream with RSS, PLE bytes and tok/s.
package dev.gemmaedge.demo

import android.annotation.SuppressLint
import android.app.AlertDialog
import android.content.pm.PackageManager
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.media.AudioFormat
import android.media.AudioRecord
import android.media.ExifInterface
import android.media.MediaCodec
import android.media.MediaExtractor
import android.media.MediaFormat
import android.media.MediaRecorder
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
import dev.gemmaedge.core.AudioPreprocessor
import dev.gemmaedge.core.Chat
import dev.gemmaedge.core.Generator
import dev.gemmaedge.core.ImagePreprocessor
import dev.gemmaedge.core.Manifest
import dev.gemmaedge.core.PleFile
import dev.gemmaedge.core.Sampler
import dev.gemmaedge.core.Tokenizer
import java.io.ByteArrayOutputStream
import java.io.File
import java.util.concurrent.Executors

class MainActivity : ComponentActivity() {

    /**
     * What a loaded bundle holds open; [vision] and [audio] (a bundle with a vision or an audio program) load their
     * program only per prompt with an image or a clip.
     */
    private class Session(val manifest: Manifest, val program: EtProgram, val ple: PleFile, val tokenizer: Tokenizer?) {
        val vision: EtVision? = if (manifest.vision != null) EtVision(manifest) else null
        val audio: EtAudio? = if (manifest.audio != null) EtAudio(manifest) else null
        val generator: Generator = Generator.forBundle(manifest, program, ple, tokenizer, vision, audio)
        fun close() {
            vision?.release()
            audio?.release()
            program.close()
            ple.close()
        }
    }

    /** A picked image, preprocessed for the loaded bundle's vision program. */
    private class PickedImage(val name: String, val prepared: ImagePreprocessor.Prepared)

    /** A recording or an audio file as 16 kHz mono, cut into the clips the audio program takes (one per 30 s). */
    private class PickedAudio(val name: String, val seconds: Double, val clips: List<AudioPreprocessor.Clip>)

    private val worker = Executors.newSingleThreadExecutor()   // all model work runs here, one job at a time
    private var session: Session? = null
    private var image: PickedImage? = null   // set and read on the UI thread
    private var audio: PickedAudio? = null   // set and read on the UI thread
    @Volatile private var recording = false  // the recorder thread reads until this turns false (or 30 s)

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
    private lateinit var record: Button
    private lateinit var pickAudio: Button
    private lateinit var clearAudio: Button
    private lateinit var audioInfo: TextView

    // The system photo picker: no storage permission, the app sees only the image the user picks.
    private val picker = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri -> uri?.let { prepareImage(it) } }

    // The system document picker for an audio file (WAV or anything MediaExtractor reads): no storage permission.
    private val audioPicker = registerForActivityResult(ActivityResultContracts.OpenDocument()) { uri -> uri?.let { prepareAudioFile(it) } }

    // The microphone needs RECORD_AUDIO, asked for the first time the user taps Record.
    private val micPermission = registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
        if (granted) {
            startRecording()
        } else {
            status.text = "Recording needs the microphone permission (RECORD_AUDIO)"
        }
    }

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
        record = findViewById(R.id.record)
        pickAudio = findViewById(R.id.pickAudio)
        clearAudio = findViewById(R.id.clearAudio)
        audioInfo = findViewById(R.id.audioInfo)
        pickImage.setOnClickListener {
            picker.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        clearImage.setOnClickListener { setImage(null) }
        record.setOnClickListener {
            if (recording) {
                recording = false   // the recorder thread stops, then hands the clip over
            } else if (checkSelfPermission(android.Manifest.permission.RECORD_AUDIO) == PackageManager.PERMISSION_GRANTED) {
                startRecording()
            } else {
                micPermission.launch(android.Manifest.permission.RECORD_AUDIO)
            }
        }
        pickAudio.setOnClickListener { audioPicker.launch(arrayOf("audio/wav", "audio/x-wav", "audio/*")) }
        clearAudio.setOnClickListener { setAudio(null) }
        load.setOnClickListener { pickBundle(File(bundleDir.text.toString().trim())) }
        generate.setOnClickListener { startGeneration() }
        stop.setOnClickListener { session?.generator?.cancel() }
        stats.text = memoryLine()
    }

    override fun onDestroy() {
        recording = false
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
        setAudio(null)   // the next bundle may have no audio tower
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
                            "loaded per image prompt)" } ?: ", no images") +
                        (loaded.audio?.let { ", audio (audio program ${m.audioFile.bytes / (1 shl 20)} MiB, loaded per audio prompt)" }
                            ?: ", no audio") +
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
        val clips = listOfNotNull(audio?.clips)   // one audio item: its clips
        output.text = ""
        setBusy(true, null)
        stop.isEnabled = true
        worker.execute {
            try {
                val ids = promptIds(tok, s.manifest, text, images.size, clips.size)
                // The rest of the context once the images' and clips' spans are in (boi, soft tokens, eoi in place of
                // an image placeholder; boa, soft tokens, eoa per clip in place of an audio one); at least 1, so a
                // prompt that fills it is refused for its length.
                val placeholders = (s.manifest.vision?.let { v -> ids.count { it == v.image } } ?: 0) +
                    (s.manifest.audio?.let { a -> ids.count { it == a.audio } } ?: 0)
                val promptLength = ids.size - placeholders + images.sumOf { it.softTokens + 2 } +
                    clips.sumOf { item -> item.sumOf { it.softTokens + 2 } }
                val maxNew = maxOf(1, s.manifest.maxContext - promptLength)
                val r = s.generator.generate(ids, images, clips, maxNew, Sampler.greedy(), true) { _, delta, st ->
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
     *  its turn tokens — the images first in the user turn, one placeholder each, then the audio item's
     *  placeholder, as transformers' examples put them — else <bos> + the raw text (a base or tiny-vocabulary
     *  model), where the Generator puts the images' and then the audio's spans right after <bos>. Chat has no audio
     *  item yet: the template renders one as the bare `<|audio|>` token, which a text item of that token alone
     *  renders the same (text items are stripped and joined without a separator). A tokenizer without `<|audio|>`
     *  as one special token gets no placeholder (spelled out, it would reach the model as text): the audio then
     *  goes first, after <bos>. */
    private fun promptIds(tok: Tokenizer, m: Manifest, text: String, images: Int, audioItems: Int): IntArray {
        if (tok.tokenToId(Chat.TURN_OPEN) != null && tok.tokenToId(Chat.TURN_CLOSE) != null) {
            val audioPlaceholder = tok.tokenToId(Chat.AUDIO)?.let { id -> tok.encode(Chat.AUDIO, false).contentEquals(intArrayOf(id)) } == true
            val items = List(images) { Chat.Item.image() } +
                (if (audioPlaceholder) List(audioItems) { Chat.Item.text(Chat.AUDIO) } else emptyList()) +
                Chat.Item.text(text)
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

    private fun setAudio(picked: PickedAudio?) {
        audio = picked
        audioInfo.text = picked?.let {
            "${it.name}: %.1f s, %d clip(s), %d soft tokens".format(it.seconds, it.clips.size, it.clips.sumOf { c -> c.softTokens })
        } ?: getString(R.string.no_audio)
        clearAudio.isEnabled = picked != null
    }

    /** 16 kHz mono as the runtime reads it (AudioPreprocessor: downmix, scipy's resampler), cut into clips, off the UI thread. */
    private fun useAudio(name: String, interleaved: FloatArray, channels: Int, rate: Int, t0: Long) {
        val mono = AudioPreprocessor.toMono16k(interleaved, channels, rate)
        val clips = AudioPreprocessor.clips(mono)
        val ms = (System.nanoTime() - t0) / 1e6
        ui {
            setAudio(PickedAudio(name, mono.size / AudioPreprocessor.SAMPLE_RATE.toDouble(), clips))
            setBusy(false, "Audio read ($channels ch at $rate Hz) and cut into ${clips.size} clip(s) in %.0f ms".format(ms))
        }
    }

    /**
     * Records the microphone at 16 kHz mono PCM16 on a thread of its own until the user taps Record again or 30 s
     * (one clip) are in; the recording then becomes the prompt's audio item.
     */
    @SuppressLint("MissingPermission")   // the caller checked RECORD_AUDIO
    private fun startRecording() {
        val rate = AudioPreprocessor.SAMPLE_RATE
        val minBuffer = AudioRecord.getMinBufferSize(rate, AudioFormat.CHANNEL_IN_MONO, AudioFormat.ENCODING_PCM_16BIT)
        if (minBuffer <= 0) {
            status.text = "This device cannot record $rate Hz mono PCM16 (AudioRecord.getMinBufferSize: $minBuffer)"
            return
        }
        val recorder = AudioRecord(MediaRecorder.AudioSource.MIC, rate, AudioFormat.CHANNEL_IN_MONO, AudioFormat.ENCODING_PCM_16BIT,
                                   maxOf(minBuffer, rate / 5 * 2))   // at least 200 ms of PCM16
        if (recorder.state != AudioRecord.STATE_INITIALIZED) {
            recorder.release()
            status.text = "The microphone could not be opened (AudioRecord state ${recorder.state})"
            return
        }
        recording = true
        record.text = getString(R.string.stop_recording)
        status.text = "Recording (up to 30 s) ..."
        Thread {
            val pcm = ByteArray(AudioPreprocessor.MAX_SAMPLES * 2)   // 30 s of PCM16: one clip
            var n = 0
            var error: String? = null
            try {
                recorder.startRecording()
                while (recording && n < pcm.size) {
                    val got = recorder.read(pcm, n, minOf(4096, pcm.size - n))
                    if (got < 0) {
                        error = "AudioRecord.read: error $got"
                        break
                    }
                    n += got
                }
            } catch (e: Exception) {
                error = e.message ?: e.toString()
            } finally {
                try {
                    recorder.stop()
                } catch (ignored: IllegalStateException) {   // never started
                }
                recorder.release()
            }
            val t0 = System.nanoTime()
            ui {
                recording = false
                if (isDestroyed) return@ui   // the worker is shut down: nothing to hand the recording to
                record.text = getString(R.string.record)
                if (error != null) {
                    setBusy(false, "Recording failed: $error")
                    return@ui
                }
                setBusy(true, null)
                worker.execute {
                    try {
                        // PCM16 in the device's byte order (little-endian on every Android ABI), read as a WAV's s16 is
                        val samples = AudioPreprocessor.decodePcm(pcm, 0, n - n % 2, AudioPreprocessor.Encoding.S16, 1)
                        useAudio("recording", samples, 1, rate, t0)
                    } catch (e: Throwable) {
                        ui { setBusy(false, "Refused the recording: ${e.message ?: e.toString()}") }
                    }
                }
            }
        }.start()
    }

    /** Decodes the picked audio file (MediaExtractor + MediaCodec to PCM at its own rate and channels), off the UI thread. */
    private fun prepareAudioFile(uri: Uri) {
        if (session?.audio == null) return
        setBusy(true, "Reading the audio file ...")
        worker.execute {
            try {
                val t0 = System.nanoTime()
                val (samples, channels, rate) = decodeAudio(uri)
                useAudio(uri.lastPathSegment ?: uri.toString(), samples, channels, rate, t0)
            } catch (e: Throwable) {
                ui { setBusy(false, "Refused the audio file: ${e.message ?: e.toString()}") }
            }
        }
    }

    /**
     * The file's first audio track decoded to interleaved floats, with its channel count and rate. The decoder is asked
     * for PCM16 and its output read as a WAV's samples would be (AudioPreprocessor.decodePcm); a decoder that gives
     * float or 8-bit PCM instead is read as such. At most [MAX_FILE_SECONDS], so a long file cannot exhaust memory.
     */
    private fun decodeAudio(uri: Uri): Triple<FloatArray, Int, Int> {
        val extractor = MediaExtractor()
        try {
            contentResolver.openFileDescriptor(uri, "r")?.use { extractor.setDataSource(it.fileDescriptor) }
                ?: throw IllegalArgumentException("$uri: expected an audio file, found nothing to open")
            val track = (0 until extractor.trackCount).firstOrNull {
                extractor.getTrackFormat(it).getString(MediaFormat.KEY_MIME)?.startsWith("audio/") == true
            } ?: throw IllegalArgumentException("$uri: expected an audio track, found ${extractor.trackCount} track(s) of other kinds")
            extractor.selectTrack(track)
            val format = extractor.getTrackFormat(track)
            val mime = format.getString(MediaFormat.KEY_MIME)!!
            var rate = format.getInteger(MediaFormat.KEY_SAMPLE_RATE)
            var channels = format.getInteger(MediaFormat.KEY_CHANNEL_COUNT)
            var encoding = AudioFormat.ENCODING_PCM_16BIT
            format.setInteger(MediaFormat.KEY_PCM_ENCODING, AudioFormat.ENCODING_PCM_16BIT)
            val codec = MediaCodec.createDecoderByType(mime)
            val pcm = ByteArrayOutputStream()
            try {
                codec.configure(format, null, null, 0)
                codec.start()
                val info = MediaCodec.BufferInfo()
                var inputDone = false
                var outputDone = false
                while (!outputDone) {
                    if (!inputDone) {
                        val i = codec.dequeueInputBuffer(10_000)
                        if (i >= 0) {
                            val n = extractor.readSampleData(codec.getInputBuffer(i)!!, 0)
                            if (n < 0) {
                                codec.queueInputBuffer(i, 0, 0, 0, MediaCodec.BUFFER_FLAG_END_OF_STREAM)
                                inputDone = true
                            } else {
                                codec.queueInputBuffer(i, 0, n, extractor.sampleTime, 0)
                                extractor.advance()
                            }
                        }
                    }
                    val o = codec.dequeueOutputBuffer(info, 10_000)
                    if (o == MediaCodec.INFO_OUTPUT_FORMAT_CHANGED) {
                        val out = codec.outputFormat
                        rate = out.getInteger(MediaFormat.KEY_SAMPLE_RATE)
                        channels = out.getInteger(MediaFormat.KEY_CHANNEL_COUNT)
                        if (out.containsKey(MediaFormat.KEY_PCM_ENCODING)) encoding = out.getInteger(MediaFormat.KEY_PCM_ENCODING)
                    } else if (o >= 0) {
                        val buf = codec.getOutputBuffer(o)!!
                        val chunk = ByteArray(info.size)
                        buf.position(info.offset)
                        buf.get(chunk)
                        pcm.write(chunk)
                        codec.releaseOutputBuffer(o, false)
                        if (info.flags and MediaCodec.BUFFER_FLAG_END_OF_STREAM != 0) outputDone = true
                        val width = when (encoding) { AudioFormat.ENCODING_PCM_FLOAT -> 4; AudioFormat.ENCODING_PCM_8BIT -> 1; else -> 2 }
                        val limit = MAX_FILE_SECONDS.toLong() * rate * channels * width
                        require(pcm.size() <= limit) { "$uri: expected at most $MAX_FILE_SECONDS s of audio, found more" }
                    }
                }
            } finally {
                try {
                    codec.stop()
                } catch (ignored: IllegalStateException) {   // never started
                }
                codec.release()
            }
            val pcmEncoding = when (encoding) {
                AudioFormat.ENCODING_PCM_16BIT -> AudioPreprocessor.Encoding.S16
                AudioFormat.ENCODING_PCM_FLOAT -> AudioPreprocessor.Encoding.F32
                AudioFormat.ENCODING_PCM_8BIT -> AudioPreprocessor.Encoding.U8
                else -> throw IllegalArgumentException("$uri: expected the decoder to give PCM16, float or 8-bit PCM, found AudioFormat encoding $encoding")
            }
            val bytes = pcm.toByteArray()
            return Triple(AudioPreprocessor.decodePcm(bytes, pcmEncoding, channels), channels, rate)
        } finally {
            extractor.release()
        }
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
        (if (st.images > 0 || st.audioClips > 0) "%d image(s), %d audio clip(s) (%d soft tokens) encoded in %.0f ms (in the first token's time)\n".format(
            st.images, st.audioClips, st.audioTokens, st.encodeNanos / 1e6) else "") +
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
        record.isEnabled = recording || (!busy && session?.audio != null)   // a recording can always be stopped
        pickAudio.isEnabled = !busy && !recording && session?.audio != null
        clearAudio.isEnabled = !busy && audio != null
        stop.isEnabled = false
        if (message != null) status.text = message
    }

    private fun ui(block: () -> Unit) = runOnUiThread(block)

    private companion object {
        const val MAX_FILE_SECONDS = 120   // an audio file's longest: four 30 s clips
    }
}
