import Foundation

/// The file operations the store makes, each a point where a test can inject a crash or an
/// I/O error. `FileOps.system` is the real thing.
public struct FileOps: Sendable {
    /// The kinds of operation, named as the system calls they stand for.
    public enum Operation: Sendable, Equatable {
        case write(String)
        case fsync(String)
        case rename(String, String)
        case link(String, String)
        case truncate(String)
        case unlink(String)
    }

    /// Called before each operation; throwing makes the operation fail with that error.
    public var beforeOperation: @Sendable (Operation) throws(StoreError) -> Void

    /// Creates file operations with a hook.
    public init(beforeOperation: @escaping @Sendable (Operation) throws(StoreError) -> Void) {
        self.beforeOperation = beforeOperation
    }

    /// The real file system, no faults.
    public static let system = FileOps { _ throws(StoreError) in }

    /// Writes all of `data` to `fd`.
    func write(fd: Int32, _ data: Data, path: String) throws(StoreError) {
        try beforeOperation(.write(path))
        let result: Int32? = data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let count = Foundation.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if count < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                offset += count
            }
            return nil
        }
        if let error = result { throw .io("cannot write", path: path, errno: error) }
    }

    /// fdatasync (`dataOnly`) or fsync.
    func sync(fd: Int32, path: String, dataOnly: Bool = false) throws(StoreError) {
        try beforeOperation(.fsync(path))
        if (dataOnly ? fdatasync(fd) : fsync(fd)) != 0 { throw .syncFailed(path: path, errno: errno) }
    }

    /// fsync of a folder, so that renames and new names in it survive a power cut.
    func syncDirectory(_ path: String) throws(StoreError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .io("cannot open folder", path: path, errno: errno) }
        defer { close(fd) }
        try sync(fd: fd, path: path)
    }

    func rename(_ from: String, _ to: String) throws(StoreError) {
        try beforeOperation(.rename(from, to))
        if Foundation.rename(from, to) != 0 { throw .io("cannot rename to \(to)", path: from, errno: errno) }
    }

    func link(_ from: String, _ to: String) throws(StoreError) {
        try beforeOperation(.link(from, to))
        if Foundation.link(from, to) != 0 { throw .io("cannot link to \(to)", path: from, errno: errno) }
    }

    func truncate(fd: Int32, length: Int, path: String) throws(StoreError) {
        try beforeOperation(.truncate(path))
        if ftruncate(fd, off_t(length)) != 0 { throw .io("cannot truncate", path: path, errno: errno) }
    }

    func unlink(_ path: String) throws(StoreError) {
        try beforeOperation(.unlink(path))
        if Foundation.unlink(path) != 0 && errno != ENOENT { throw .io("cannot remove", path: path, errno: errno) }
    }

    /// Writes `data` to `path` so that after a crash `path` holds either its old content or
    /// all of `data`: temp file in the same folder, fsync, (hard link the old file to
    /// `backup`), rename over, fsync the folder.
    func replaceAtomically(_ path: String, with data: Data, backup: String? = nil) throws(StoreError) {
        let folder = (path as NSString).deletingLastPathComponent
        let temp = path + ".tmp-\(getpid())"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .io("cannot create", path: temp, errno: errno) }
        do {
            try write(fd: fd, data, path: temp)
            try sync(fd: fd, path: temp)
            close(fd)
        } catch {
            close(fd)
            Foundation.unlink(temp)
            throw error
        }
        if let backup, access(path, F_OK) == 0 {
            let backupTemp = backup + ".tmp-\(getpid())"
            Foundation.unlink(backupTemp)
            try link(path, backupTemp)
            try rename(backupTemp, backup)
            // rename() does nothing when both names are already links to one file (a snapshot
            // whose own rename failed last time): the temp name must not stay behind.
            Foundation.unlink(backupTemp)
        }
        try rename(temp, path)
        try syncDirectory(folder.isEmpty ? "." : folder)
    }
}

/// Reads a whole file; `nil` when it does not exist.
func readFileIfPresent(_ path: String) throws(StoreError) -> Data? {
    guard FileManager.default.fileExists(atPath: path) else { return nil }
    do { return try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
        throw .io("cannot read", path: path, errno: (error as NSError).code == 0 ? EIO : Int32((error as NSError).code))
    }
}
