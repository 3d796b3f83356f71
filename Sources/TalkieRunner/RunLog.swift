import Foundation
import TalkieCore

/// The run log `outputs/talkie.log`: every event, one JSON line each with a timestamp.
/// Not synced: it is a record for people, the state lives in the store.
public final class RunLog {
    private let handle: FileHandle?

    /// Opens the log for appending, creating it. A `talkie.log` that is a symbolic link is
    /// not followed (nothing is logged): the log must never write outside the workspace.
    public init(path: String) {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o644)
        handle = fd >= 0 ? FileHandle(fileDescriptor: fd, closeOnDealloc: true) : nil
    }

    /// Appends one event.
    public func write(_ event: TimedEvent) {
        try? handle?.write(contentsOf: Data((event.jsonLine + "\n").utf8))
    }
}
