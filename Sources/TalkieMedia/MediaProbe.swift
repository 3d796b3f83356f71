import Foundation
import TalkieCore

/// What ffprobe says about a media file.
public struct MediaInfo: Sendable, Equatable {
    /// ffprobe's format name (`mov,mp4,m4a,3gp,3g2,mj2`, `wav`, `png_pipe`, ...).
    public var formatName: String
    /// Container duration in seconds (0 when unknown).
    public var duration: Double
    /// The first real video stream, if any (cover art does not count).
    public var video: VideoStream?
    /// Whether there is an audio stream.
    public var hasAudio: Bool
    /// Audio duration in seconds when the container or stream says.
    public var audioDuration: Double?
    /// Container metadata tags (lowercased keys).
    public var tags: [String: String]

    /// A video stream's facts.
    public struct VideoStream: Sendable, Equatable {
        /// Coded width.
        public var width: Int
        /// Coded height.
        public var height: Int
        /// Average frame rate.
        public var fps: Double
        /// Rotation in degrees from the display matrix or the `rotate` tag.
        public var rotation: Int
        /// Codec name.
        public var codec: String
        /// Frames, when the container says.
        public var frameCount: Int?

        /// Width and height as displayed (swapped for 90° and 270° rotations).
        public var displaySize: (width: Int, height: Int) {
            abs(rotation) % 180 == 90 ? (height, width) : (width, height)
        }
    }
}

/// Probes media with ffprobe and judges whether it can be used.
public enum MediaProbe {
    /// Probes the file at `path`.
    public static func probe(_ path: String) async throws(MediaError) -> MediaInfo {
        var status = stat()
        if stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFREG, status.st_size == 0 {
            throw MediaError(code: "media.empty", message: "\(path) is empty (0 bytes): its copy or download did not finish; copy it again")
        }
        let result = try await Tool.run("ffprobe", ["-v", "error", "-print_format", "json", "-show_format",
                                                    "-show_streams", "-i", Tool.fileArgument(path)])
        guard result.exitCode == 0, let data = result.output.data(using: .utf8),
              let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            let reason = result.error.split(separator: "\n").last.map(String.init) ?? "ffprobe failed"
            throw MediaError(code: "media.unreadable", message: "\(path) is not a media file ffmpeg can read (\(reason))")
        }
        return parse(root)
    }

    /// Turns ffprobe's JSON into `MediaInfo`.
    static func parse(_ root: [String: Any]) -> MediaInfo {
        let format = root["format"] as? [String: Any] ?? [:]
        let streams = root["streams"] as? [[String: Any]] ?? []
        var tags: [String: String] = [:]
        for (key, value) in format["tags"] as? [String: Any] ?? [:] { tags[key.lowercased()] = "\(value)" }
        var info = MediaInfo(formatName: format["format_name"] as? String ?? "",
                             duration: number(format["duration"]) ?? 0, video: nil, hasAudio: false,
                             audioDuration: nil, tags: tags)
        for stream in streams {
            let type = stream["codec_type"] as? String
            let disposition = stream["disposition"] as? [String: Any] ?? [:]
            if type == "video", info.video == nil, (disposition["attached_pic"] as? Int ?? 0) == 0 {
                var rotation = Int(number((stream["tags"] as? [String: Any])?["rotate"]) ?? 0)
                for side in stream["side_data_list"] as? [[String: Any]] ?? [] {
                    if let value = number(side["rotation"]) { rotation = Int(value) }
                }
                info.video = .init(width: stream["width"] as? Int ?? 0, height: stream["height"] as? Int ?? 0,
                                   fps: rate(stream["avg_frame_rate"]) ?? rate(stream["r_frame_rate"]) ?? 0,
                                   rotation: rotation, codec: stream["codec_name"] as? String ?? "",
                                   frameCount: (number(stream["nb_frames"])).map { Int($0) })
            } else if type == "audio" {
                info.hasAudio = true
                info.audioDuration = number(stream["duration"]) ?? info.audioDuration
            }
        }
        if info.audioDuration == nil, info.hasAudio { info.audioDuration = info.duration }
        return info
    }

    /// Checks a template video; throws a message naming the file and the fix.
    public static func validateTemplate(_ info: MediaInfo, path: String) throws(MediaError) -> MediaSummary {
        let name = (path as NSString).lastPathComponent
        guard let video = info.video else {
            throw MediaError(code: "media.no_video", message: "\(name) has no video stream (\(info.hasAudio ? "it is audio only" : "nothing to render")); use a video of the presenter")
        }
        if info.formatName.hasSuffix("_pipe") || info.formatName == "image2" || video.frameCount == 1 && info.duration < 0.05 {
            throw MediaError(code: "media.still_image", message: "\(name) is a still image (\(video.codec)), not a video; convert it to a video first, for example: ffmpeg -loop 1 -i \(name) -t 10 template.mp4")
        }
        guard video.width >= 16, video.height >= 16 else {
            throw MediaError(code: "media.bad_size", message: "\(name) has an unusable frame size \(video.width)×\(video.height)")
        }
        guard info.duration >= 0.2 else {
            throw MediaError(code: "media.too_short", message: "\(name) is \(String(format: "%.2f", info.duration)) s long; a template needs at least 0.2 s of video")
        }
        guard video.fps > 0 && video.fps <= 240 else {
            throw MediaError(code: "media.bad_fps", message: "\(name) has no usable frame rate (\(video.fps) fps)")
        }
        let size = video.displaySize
        return MediaSummary(duration: info.duration, width: size.width, height: size.height, fps: video.fps)
    }

    /// Decodes the first video frame. An MP4 cut short after its index (a download that
    /// stopped) passes ffprobe, promising frames whose data is not there; this catches it
    /// before any engine time is spent.
    public static func checkFirstFrame(_ path: String) async throws(MediaError) {
        let result = try await Tool.run("ffmpeg", ["-nostdin", "-v", "error", "-i", Tool.fileArgument(path),
                                                   "-map", "0:v:0", "-frames:v", "1", "-f", "null", "-"])
        guard result.exitCode == 0 else {
            let name = (path as NSString).lastPathComponent
            throw MediaError(code: "media.undecodable", message: "\(name) is damaged or incomplete: not even its first frame can be decoded (a copy or download cut short?); copy it again")
        }
    }

    /// Checks the narration; returns its duration in seconds.
    public static func validateAudio(_ info: MediaInfo, path: String) throws(MediaError) -> Double {
        guard info.hasAudio else {
            throw MediaError(code: "media.no_audio", message: "\(path) has no audio stream; --audio needs a speech recording (wav, mp3, m4a, ...)")
        }
        let duration = info.audioDuration ?? info.duration
        guard duration >= 0.2 else {
            throw MediaError(code: "media.audio_too_short", message: "\(path) is \(String(format: "%.2f", duration)) s long; the narration needs at least 0.2 s")
        }
        return duration
    }

    private static func number(_ value: Any?) -> Double? {
        if let value = value as? Double { return value }
        if let value = value as? Int { return Double(value) }
        if let value = value as? String { return Double(value) }
        return nil
    }

    private static func rate(_ value: Any?) -> Double? {
        guard let text = value as? String else { return nil }
        let parts = text.split(separator: "/").compactMap { Double($0) }
        guard parts.count == 2, parts[1] > 0, parts[0] > 0 else { return nil }
        return parts[0] / parts[1]
    }
}
