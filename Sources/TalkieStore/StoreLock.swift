import Foundation
import Synchronization

/// One writer per output folder: an exclusive `flock` on `outputs/.talkie.lock`, holding the
/// owner's pid so a second runner can say who is in the way. The kernel releases it when
/// the process dies, however it dies.
public final class StoreLock: Sendable {
    /// The lock file.
    public let path: String
    private let descriptor: Mutex<Int32>

    /// Takes the lock of `folder`, or throws `StoreError.locked` naming the holder's pid.
    public init(folder: String) throws(StoreError) {
        path = (folder as NSString).appendingPathComponent(".talkie.lock")
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .io("cannot create the lock file", path: path, errno: errno) }
        // A few tries: `isHeld` of a reader holds a shared lock for a moment.
        var taken = flock(fd, LOCK_EX | LOCK_NB) == 0
        for _ in 0..<5 where !taken {
            usleep(20_000)
            taken = flock(fd, LOCK_EX | LOCK_NB) == 0
        }
        if !taken {
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))
                .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            Foundation.close(fd)
            throw .locked(path: folder, holderPID: holder)
        }
        let pid = "\(getpid())\n"
        ftruncate(fd, 0)
        _ = pid.withCString { pwrite(fd, $0, strlen($0), 0) }
        descriptor = Mutex(fd)
    }

    /// Whether a live process holds the lock of `folder`, found without taking it for
    /// writing or changing the lock file (for readers such as `talkie status`). The shared
    /// lock it takes for a moment is why `init` tries more than once.
    public static func isHeld(folder: String) -> Bool {
        let fd = open((folder as NSString).appendingPathComponent(".talkie.lock"), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { Foundation.close(fd) }
        guard flock(fd, LOCK_SH | LOCK_NB) == 0 else { return true }
        flock(fd, LOCK_UN)
        return false
    }

    deinit { release() }

    /// Releases the lock (also released when the process exits).
    public func release() {
        descriptor.withLock { fd in
            guard fd >= 0 else { return }
            flock(fd, LOCK_UN)
            Foundation.close(fd)
            fd = -1
        }
    }
}
