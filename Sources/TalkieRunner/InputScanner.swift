import Foundation
import TalkieCore

/// An error with the run's arguments or workspace: the whole run cannot start (exit code 2).
public struct RunSetupError: TalkieError, Equatable {
    /// A stable identifier.
    public let code: String
    /// What is wrong and what to do.
    public let message: String

    /// Creates a setup error.
    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }
}

/// Finds template videos: files given by name, and video files inside given folders.
public enum InputScanner {
    /// File extensions taken from folders (files named explicitly are taken whatever their name).
    public static let videoExtensions: Set<String> = ["mp4", "mov", "m4v", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "flv", "wmv", "3gp"]

    /// The template paths under `sources`, sorted, without duplicates, skipping hidden files
    /// and `exclude` (the output folder). Warnings for entries that cannot be read.
    public static func scan(_ sources: [String], exclude: String) throws(RunSetupError) -> (paths: [String], warnings: [String]) {
        var paths: [String] = []
        var warnings: [String] = []
        let fileManager = FileManager.default
        let excluded = URL(fileURLWithPath: exclude).standardizedFileURL.resolvingSymlinksInPath().path
        for source in sources {
            var isDirectory: ObjCBool = false
            guard fileManager.fileExists(atPath: source, isDirectory: &isDirectory) else {
                throw RunSetupError(code: "input.missing", message: "\(source) does not exist; check the path given to --videos")
            }
            let absolute = URL(fileURLWithPath: source).standardizedFileURL.path
            if !isDirectory.boolValue {
                guard access(absolute, R_OK) == 0 else {
                    throw RunSetupError(code: "input.unreadable", message: "\(source) cannot be read (permission denied); fix its permissions")
                }
                paths.append(absolute)
                continue
            }
            guard let enumerator = fileManager.enumerator(at: URL(fileURLWithPath: absolute), includingPropertiesForKeys: [.isRegularFileKey],
                                                          options: [.skipsHiddenFiles], errorHandler: { url, error in
                warnings.append("cannot read \(url.path): \(error.localizedDescription)")
                return true
            }) else {
                throw RunSetupError(code: "input.unreadable", message: "\(source) cannot be listed; check its permissions")
            }
            for case let url as URL in enumerator {
                let path = url.standardizedFileURL.path
                if path == excluded || path.hasPrefix(excluded + "/") {
                    enumerator.skipDescendants()
                    continue
                }
                guard videoExtensions.contains(url.pathExtension.lowercased()) else { continue }
                // stat, not the enumerator's lstat: a link to a video is a video
                var status = stat()
                guard stat(path, &status) == 0 else {
                    let reason = errno == ELOOP ? "a link loop" : errno == ENOENT ? "a broken link or vanished" : String(cString: strerror(errno))
                    warnings.append("\(path) is \(reason); skipped")
                    continue
                }
                guard status.st_mode & S_IFMT == S_IFREG else { continue }  // a folder named *.mp4 is searched instead
                paths.append(path)
            }
        }
        let unique = Array(Set(paths)).sorted()
        if unique.isEmpty {
            throw RunSetupError(code: "input.no_videos", message: "no template videos found in \(sources.joined(separator: ", ")) (looked for \(videoExtensions.sorted().joined(separator: ", ")) files)")
        }
        return (unique, warnings)
    }
}
