import Foundation
import TalkieCore

/// What identifies a file's content without reading it: if none of these changed, the
/// content did not either (the same rule as make, rsync and git's index).
public struct FileIdentity: Hashable, Codable, Sendable {
    /// Device number.
    public var device: UInt64
    /// Inode number.
    public var inode: UInt64
    /// Size in bytes.
    public var size: Int64
    /// Modification time in nanoseconds since 1970.
    public var mtimeNanoseconds: Int64

    /// The identity of the file at `path` (following symbolic links).
    public static func of(path: String) throws(StoreError) -> FileIdentity {
        var info = stat()
        guard stat(path, &info) == 0 else { throw .io("cannot read file information", path: path, errno: errno) }
        return FileIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
                            mtimeNanoseconds: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec))
    }
}

/// Remembers the identity hash of each input by `FileIdentity`, so a restart never re-reads
/// an unchanged input. Stored in `outputs/.talkie/hash-cache.json`; losing it costs only time.
public final class HashCache {
    private struct Entry: Codable {
        var file: FileIdentity
        var hash: ContentHash
        var md5: String?
        var path: String
    }

    private struct Document: Codable {
        var algorithm: String
        var entries: [Entry]
    }

    private let path: String
    private var entries: [FileIdentity: Entry] = [:]
    private var changed = false

    /// Hashes served from the cache since it was opened.
    public private(set) var hits = 0
    /// Files read and hashed since it was opened.
    public private(set) var misses = 0

    /// Loads the cache at `path`; a missing or unreadable cache is an empty one.
    public init(path: String) {
        self.path = path
        if let data = try? Data(contentsOf: URL(fileURLWithPath: path)),
           let document = try? JSONDecoder().decode(Document.self, from: data),
           document.algorithm == FileHasher.algorithm {
            for entry in document.entries { entries[entry.file] = entry }
        }
    }

    /// The XXH3-128 of the file at `path`, from the cache when its identity is unchanged.
    ///
    /// The identity is taken before and after hashing: a file that changed while it was
    /// read is reported, not cached with a hash of half old, half new content.
    public func hash(path file: String) throws(StoreError) -> ContentHash {
        let before = try FileIdentity.of(path: file)
        if let entry = entries[before] {
            hits += 1
            return entry.hash
        }
        let hash = try FileHasher.xxh3(path: file)
        let after = try FileIdentity.of(path: file)
        guard after == before else {
            throw .changedWhileReading(path: file)
        }
        misses += 1
        entries[before] = Entry(file: before, hash: hash, md5: nil, path: file)
        changed = true
        return hash
    }

    /// The MD5 of the file at `path` (only for legacy import), cached like the main hash.
    public func md5(path file: String) throws(StoreError) -> String {
        let identity = try FileIdentity.of(path: file)
        if let md5 = entries[identity]?.md5 { return md5 }
        let md5 = try FileHasher.md5(path: file)
        if entries[identity] != nil {
            entries[identity]?.md5 = md5
            changed = true
        }
        return md5
    }

    /// Writes the cache if it changed, keeping only entries for `keep` (the inputs seen now).
    public func save(keeping keep: Set<String>? = nil) throws(StoreError) {
        if let keep {
            let before = entries.count
            entries = entries.filter { keep.contains($0.value.path) }
            if entries.count != before { changed = true }
        }
        guard changed else { return }
        let document = Document(algorithm: FileHasher.algorithm,
                                entries: entries.values.sorted { $0.path < $1.path })
        let data = (try? JSONEncoder().encode(document)) ?? Data()
        try FileOps.system.replaceAtomically(path, with: data)
        changed = false
    }
}
