import CXXHash
import Foundation
import TalkieCore

/// The identity hash: XXH3-128 over the file's bytes, streamed in 1 MiB reads with constant memory.
public enum FileHasher {
    /// The name recorded in state files.
    public static let algorithm = "xxh3-128"

    /// The XXH3-128 digest of the file at `path`.
    public static func xxh3(path: String) throws(StoreError) -> ContentHash {
        guard let state = XXH3_createState() else { throw StoreError.io("cannot allocate a hash state", path: path, errno: ENOMEM) }
        defer { XXH3_freeState(state) }
        XXH3_128bits_reset(state)
        try stream(path: path) { pointer, count in xxh3Update(state, pointer, count) }
        let digest = XXH3_128bits_digest(state)
        return ContentHash(high: digest.high64, low: digest.low64)
    }

    /// The XXH3-128 digest of bytes in memory.
    public static func xxh3(_ bytes: some ContiguousBytes) -> ContentHash {
        let digest = bytes.withUnsafeBytes { buffer in
            #if arch(x86_64)
            XXH3_128bits_dispatch(buffer.baseAddress, buffer.count)
            #else
            XXH3_128bits(buffer.baseAddress, buffer.count)
            #endif
        }
        return ContentHash(high: digest.high64, low: digest.low64)
    }

    /// The MD5 of the file at `path`, as 32 hex digits: only to match state written by older tools.
    public static func md5(path: String) throws(StoreError) -> String {
        var md5 = MD5()
        try stream(path: path) { pointer, count in md5.update(UnsafeRawBufferPointer(start: pointer, count: count)) }
        return md5.finalize()
    }

    private static let chunkSize = 1 << 20

    private static func stream(path: String, _ consume: (UnsafeRawPointer, Int) -> Void) throws(StoreError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw StoreError.io("cannot open for reading", path: path, errno: errno) }
        defer { close(fd) }
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        while true {
            let count = read(fd, buffer, chunkSize)
            if count < 0 {
                if errno == EINTR { continue }
                throw StoreError.io("cannot read", path: path, errno: errno)
            }
            if count == 0 { break }
            consume(UnsafeRawPointer(buffer), count)
        }
    }
}

/// MD5 (RFC 1321), streamed. Kept only to import `task_status.json` files of the seed's
/// design, which keyed items by the MD5 of the video.
struct MD5 {
    private var state: (UInt32, UInt32, UInt32, UInt32) = (0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476)
    private var buffer: [UInt8] = []
    private var length: UInt64 = 0

    private static let shifts: [UInt32] = [7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
                                           5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
                                           4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
                                           6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21]
    private static let constants: [UInt32] = (0..<64).map { UInt32(truncatingIfNeeded: Int64(abs(sin(Double($0 + 1))) * 4_294_967_296)) }

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        length &+= UInt64(bytes.count)
        var offset = 0
        if !buffer.isEmpty {
            let take = min(64 - buffer.count, bytes.count)
            buffer.append(contentsOf: bytes[0..<take])
            offset = take
            if buffer.count == 64 {
                buffer.withUnsafeBytes { process(block: $0.baseAddress!) }
                buffer.removeAll(keepingCapacity: true)
            }
        }
        while bytes.count - offset >= 64 {
            process(block: bytes.baseAddress! + offset)
            offset += 64
        }
        if offset < bytes.count { buffer.append(contentsOf: bytes[offset...]) }
    }

    mutating func finalize() -> String {
        let bitLength = length &* 8
        var padding: [UInt8] = [0x80]
        while (buffer.count + padding.count) % 64 != 56 { padding.append(0) }
        for index in 0..<8 { padding.append(UInt8(truncatingIfNeeded: bitLength >> (8 * UInt64(index)))) }
        let savedLength = length
        padding.withUnsafeBytes { update($0) }
        length = savedLength
        return [state.0, state.1, state.2, state.3].map { word in
            (0..<4).map { String(format: "%02x", (word >> (8 * UInt32($0))) & 0xff) }.joined()
        }.joined()
    }

    private mutating func process(block: UnsafeRawPointer) {
        var (a, b, c, d) = state
        for index in 0..<64 {
            var f: UInt32
            let g: Int
            switch index {
            case 0..<16: f = (b & c) | (~b & d); g = index
            case 16..<32: f = (d & b) | (~d & c); g = (5 * index + 1) % 16
            case 32..<48: f = b ^ c ^ d; g = (3 * index + 5) % 16
            default: f = c ^ (b | ~d); g = (7 * index) % 16
            }
            f = f &+ a &+ Self.constants[index] &+ UInt32(littleEndian: block.loadUnaligned(fromByteOffset: g * 4, as: UInt32.self))
            a = d; d = c; c = b
            b = b &+ ((f << Self.shifts[index]) | (f >> (32 - Self.shifts[index])))
        }
        state = (state.0 &+ a, state.1 &+ b, state.2 &+ c, state.3 &+ d)
    }
}

/// Adds bytes to an XXH3-128 state. Debian's libxxhash is built for SSE2 and reaches AVX2
/// or AVX-512 only through its `_dispatch` entry points, which check the CPU at run time:
/// a third of the CPU time on an AVX2 machine, and as fast as `xxhsum`, which uses them.
@inline(__always) func xxh3Update(_ state: OpaquePointer, _ bytes: UnsafeRawPointer?, _ count: Int) {
    #if arch(x86_64)
    XXH3_128bits_update_dispatch(state, bytes, count)
    #else
    XXH3_128bits_update(state, bytes, count)
    #endif
}

/// XXH3-128 over bytes that arrive in pieces (an upload), with constant memory.
public final class StreamingHasher {
    private let state: OpaquePointer

    /// A fresh hasher.
    public init() {
        state = XXH3_createState()!
        XXH3_128bits_reset(state)
    }

    deinit { XXH3_freeState(state) }

    /// Adds bytes.
    public func update(_ bytes: UnsafeRawBufferPointer) {
        xxh3Update(state, bytes.baseAddress, bytes.count)
    }

    /// The digest of everything added so far.
    public func finalize() -> ContentHash {
        let digest = XXH3_128bits_digest(state)
        return ContentHash(high: digest.high64, low: digest.low64)
    }
}

/// Writes a small file durably and atomically (temp file, fsync, rename, fsync the folder).
public func writeFileDurably(_ path: String, _ data: Data) throws(StoreError) {
    try FileOps.system.replaceAtomically(path, with: data)
}
