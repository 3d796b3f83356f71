import Foundation
import TalkieCore

/// An error from the media pipeline, naming the file and what to do.
public struct MediaError: TalkieError, Equatable {
    /// A stable identifier: `media.unusable_video`, `media.unusable_audio`, `media.tool_missing`, ...
    public let code: String
    /// What went wrong with which file, and what to do.
    public let message: String

    /// Creates a media error.
    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }
}

/// Runs ffmpeg and ffprobe (from Debian's ffmpeg package) and collects their output.
public enum Tool {
    /// What a finished tool run left.
    public struct Result: Sendable {
        /// Exit code (or 128 + signal).
        public var exitCode: Int32
        /// Standard output.
        public var output: String
        /// Standard error.
        public var error: String
    }

    /// Runs `name` (a path, or a name looked up on PATH) with `arguments` to the end: standard
    /// input empty, at most 64 MiB of standard output and 4 MiB of standard error kept.
    /// Throws `media.tool_missing` when the tool cannot be started (or the run is cancelled).
    public static func run(_ name: String, _ arguments: [String]) async throws(MediaError) -> Result {
        do {
            let result = try await ChildProcess.run(name, arguments, outputLimit: 64 << 20, errorLimit: 4 << 20)
            return Result(exitCode: result.exitCode, output: result.output, error: result.error)
        } catch is CancellationError {
            throw MediaError(code: "media.tool_missing", message: "\(name) was stopped: the run was cancelled")
        } catch {
            throw MediaError(code: "media.tool_missing",
                             message: "cannot run \(name) (\(error)); install it with: apt-get install -y ffmpeg")
        }
    }

    /// The argument that names a local file to ffmpeg/ffprobe whatever its name: `file:` keeps
    /// a name starting with `-` from being read as an option, and one with `:` as a protocol.
    public static func fileArgument(_ path: String) -> String {
        "file:" + (path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path)
    }
}
