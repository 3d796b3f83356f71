import Foundation
import TalkieCore

/// The run log `outputs/talkie.log`: every event, one JSON line each with a timestamp.
/// Not synced: it is a record for people, the state lives in the store.
final class RunLog {
    private let handle: FileHandle?

    init(path: String) {
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        handle = FileHandle(forWritingAtPath: path)
        _ = try? handle?.seekToEnd()
    }

    deinit { try? handle?.close() }

    func write(_ event: TimedEvent) {
        try? handle?.write(contentsOf: Data((event.jsonLine + "\n").utf8))
    }
}
