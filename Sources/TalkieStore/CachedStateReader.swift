import Foundation
import TalkieCore

/// Reads a folder's state for callers that ask often (the studio's API and every page's
/// snapshot): the files are decoded again only when one of them changed. Decoding them
/// on every request cost milliseconds at 100 items, inside the Studio actor, so requests
/// queued behind each other; a check of the files takes four `stat` calls.
public struct CachedStateReader: Sendable {
    private var signature: [FileSignature] = []
    private var cached: StateDocument?
    /// How many times the files were decoded (for tests).
    private(set) var decodes = 0

    /// A reader with nothing read yet.
    public init() {}

    /// The state of `folder`, as `StateStore.read` gives it.
    public mutating func read(folder: String) throws(StoreError) -> StateDocument {
        // Taken before reading: a change during the read shows as a change next time.
        let now = StateStore.stateFileNames.map { FileSignature(path: folder + "/" + $0) }
        if let cached, now == signature { return cached }
        cached = nil
        let document = try StateStore.read(folder: folder).document
        decodes += 1
        (cached, signature) = (document, now)
        return document
    }
}

/// What changes when a file is replaced, appended to, cut back or touched.
private struct FileSignature: Equatable, Sendable {
    var device: UInt64 = 0, inode: UInt64 = 0, size: Int64 = -1
    var modified = timespec(), changed = timespec()

    init(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return }
        (device, inode, size) = (UInt64(info.st_dev), UInt64(info.st_ino), Int64(info.st_size))
        (modified, changed) = (info.st_mtim, info.st_ctim)
    }

    static func == (a: Self, b: Self) -> Bool {
        a.device == b.device && a.inode == b.inode && a.size == b.size
            && a.modified.tv_sec == b.modified.tv_sec && a.modified.tv_nsec == b.modified.tv_nsec
            && a.changed.tv_sec == b.changed.tv_sec && a.changed.tv_nsec == b.changed.tv_nsec
    }
}
