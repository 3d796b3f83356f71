import Foundation
import TalkieCore

/// Prepares the narration for an engine: denoise and tempo from the run's settings,
/// loudness normalisation, resampled to what the engine asked for.
public enum AudioPreprocessor {
    /// The ffmpeg audio filter chain for `settings`.
    public static func filterChain(for settings: RenderSettings) -> String {
        var filters: [String] = []
        if settings.denoise > 0 {
            filters.append("afftdn=nr=\(String(format: "%.1f", 1 + settings.denoise * 40)):nf=-40")
        }
        if settings.tempo != 1 { filters.append("atempo=\(settings.tempo)") }
        filters.append("loudnorm=I=-16:TP=-1.5:LRA=11")
        return filters.joined(separator: ",")
    }

    /// Writes the processed narration to `output` (a WAV) unless it is already there, and
    /// returns its duration in seconds. Written under a temp name and renamed, so a crash
    /// never leaves half a file under the final name.
    public static func prepare(audio: String, settings: RenderSettings, sampleRate: Int?, channels: Int?,
                               output: String) async throws(MediaError) -> Double {
        if FileManager.default.fileExists(atPath: output) {
            // A cached file that does not probe as audio (a power cut can leave the name
            // without its data) is made again, never a reason to stop the run.
            if let info = try? await MediaProbe.probe(output), info.hasAudio, let duration = info.audioDuration,
               duration > 0 {
                return duration
            }
            unlink(output)
        }
        let temp = output + ".tmp-\(UUID().uuidString.prefix(8)).wav"  // unique: two slots may prepare at once
        var arguments = ["-nostdin", "-v", "error", "-y", "-i", Tool.fileArgument(audio), "-vn",
                         "-af", filterChain(for: settings)]
        arguments += ["-ar", String(sampleRate ?? 48_000)]
        if let channels { arguments += ["-ac", String(channels)] }
        arguments += ["-c:a", "pcm_s16le", Tool.fileArgument(temp)]
        let result: Tool.Result
        do { result = try await Tool.run("ffmpeg", arguments) } catch {
            try? FileManager.default.removeItem(atPath: temp)  // stopped: no half-made file stays behind
            throw error
        }
        guard result.exitCode == 0 else {
            try? FileManager.default.removeItem(atPath: temp)
            throw MediaError(code: "media.audio_preprocessing",
                             message: "cannot preprocess \(audio): \(result.error.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        // Durable before it gets its final name: a power cut must never leave the name
        // without the data (ffmpeg does not fsync).
        let fd = open(temp, O_RDONLY | O_CLOEXEC)
        guard fd >= 0, fsync(fd) == 0 else {
            let error = String(cString: strerror(errno))
            if fd >= 0 { close(fd) }
            try? FileManager.default.removeItem(atPath: temp)
            throw MediaError(code: "media.io", message: "the disk did not confirm the processed audio \(temp): \(error)")
        }
        close(fd)
        guard rename(temp, output) == 0 else {
            throw MediaError(code: "media.io", message: "cannot move the processed audio to \(output): \(String(cString: strerror(errno)))")
        }
        let folder = open((output as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if folder >= 0 {
            _ = fsync(folder)  // the new name; losing it only costs a second preprocessing
            close(folder)
        }
        let info = try await MediaProbe.probe(output)
        return info.audioDuration ?? info.duration
    }
}
