import Foundation
import TalkieCore

/// The metadata every output carries, so the state can be rebuilt from `outputs/` alone.
public struct OutputTags: Sendable, Equatable {
    /// The item key (`<video hex>-<audio hex>`).
    public var itemKey: String
    /// The settings fingerprint that made it.
    public var settingsFingerprint: String
    /// The template's name when it was made.
    public var templateName: String

    /// Creates output tags.
    public init(itemKey: String, settingsFingerprint: String, templateName: String) {
        self.itemKey = itemKey
        self.settingsFingerprint = settingsFingerprint
        self.templateName = templateName
    }

    /// Reads the tags back from a probe; nil when the file was not made by Talkie.
    public init?(_ info: MediaInfo) {
        guard let key = info.tags["talkie_key"], let settings = info.tags["talkie_settings"] else { return nil }
        self.init(itemKey: key, settingsFingerprint: settings, templateName: info.tags["talkie_template"] ?? "")
    }
}

/// Stamps an engine's output with its tags and verifies it before it may count as a success.
public enum OutputFinisher {
    /// Copies `engineOutput` to `destination` (streams copied, not re-encoded) with `tags` in
    /// the container metadata and the index at the front, so browsers play it while it loads.
    public static func stamp(engineOutput: String, tags: OutputTags, destination: String) async throws(MediaError) {
        let result = try await Tool.run("ffmpeg", [
            "-nostdin", "-v", "error", "-y", "-i", Tool.fileArgument(engineOutput), "-map", "0", "-c", "copy",
            "-movflags", "+faststart+use_metadata_tags",
            "-metadata", "talkie_key=\(tags.itemKey)",
            "-metadata", "talkie_settings=\(tags.settingsFingerprint)",
            "-metadata", "talkie_template=\(tags.templateName)",
            "-metadata", "comment=Made by Talkie; item \(tags.itemKey)",
            "-f", "mp4", Tool.fileArgument(destination),
        ])
        guard result.exitCode == 0 else {
            // ffmpeg's last line, without the temp path it starts with: one sentence for a person.
            let last = result.error.split(whereSeparator: \.isNewline).last.map(String.init) ?? "ffmpeg failed"
            let reason = last.replacingOccurrences(of: Tool.fileArgument(engineOutput) + ": ", with: "")
            throw MediaError(code: "media.output_invalid", message: "the engine's output could not be read (\(reason))")
        }
    }

    /// Checks an output: a video stream, an audio stream, a duration within tolerance of
    /// the narration's, and the expected tags.
    public static func verify(_ path: String, expectedDuration: Double, tags: OutputTags) async throws(MediaError) {
        let info: MediaInfo
        do { info = try await MediaProbe.probe(path) } catch {
            throw MediaError(code: "media.output_invalid", message: "the output is not a readable video: \(error.message)")
        }
        guard info.video != nil else { throw MediaError(code: "media.output_invalid", message: "the output has no video stream") }
        guard info.hasAudio else { throw MediaError(code: "media.output_invalid", message: "the output has no audio stream") }
        let tolerance = max(0.5, expectedDuration * 0.02)
        guard abs(info.duration - expectedDuration) <= tolerance else {
            throw MediaError(code: "media.output_invalid",
                             message: String(format: "the output lasts %.2f s but the narration %.2f s", info.duration, expectedDuration))
        }
        guard OutputTags(info) == tags else {
            throw MediaError(code: "media.output_invalid", message: "the output's metadata does not name this item")
        }
    }
}
