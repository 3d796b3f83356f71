import CZlib
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import TalkieStore

/// Streams uploads to disk and files to clients: constant memory both ways.
enum Files {
    /// Streams a request body into `folder` under a random name, hashing it on the way.
    /// Past `cap` bytes it stops reading and answers 413; nothing is buffered in memory.
    static func receive(_ body: RequestBody, into folder: String, cap: Int64) async throws -> ReceivedUpload {
        let path = "\(folder)/\(UUID().uuidString).part"
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw StudioError(500, "upload.io", "cannot store the upload: \(String(cString: strerror(errno)))") }
        var closed = false
        defer { if !closed { close(fd); unlink(path) } }
        let hasher = StreamingHasher()
        var size: Int64 = 0
        for try await buffer in body {
            size += Int64(buffer.readableBytes)
            guard size <= cap else {
                throw StudioError(413, "upload.too_large", "the upload is larger than this server's limit of \(cap >> 20) MiB (--max-upload-mb)")
            }
            let failure: Int32? = buffer.withUnsafeReadableBytes { bytes in
                hasher.update(bytes)
                var offset = 0
                while offset < bytes.count {
                    let count = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                    if count < 0 { if errno == EINTR { continue }; return errno }
                    offset += count
                }
                return nil
            }
            if let failure { throw StudioError(507, "upload.io", "cannot store the upload: \(String(cString: strerror(failure)))") }
        }
        guard size > 0 else { throw StudioError(400, "upload.empty", "the upload is empty") }
        guard fsync(fd) == 0 else { throw StudioError(507, "upload.io", "the disk did not confirm the upload: \(String(cString: strerror(errno)))") }
        close(fd)
        closed = true
        return ReceivedUpload(path: path, key: hasher.finalize(), size: size)
    }

    /// A regular file inside `folder` named by one safe path component, or nil: no
    /// separators, no NUL, no leading dot, and not a symbolic link.
    static func safeFile(_ name: String, in folder: String) -> String? {
        guard !name.isEmpty, !name.contains("/"), !name.contains("\0"), !name.hasPrefix("."), name != ".." else { return nil }
        let path = folder + "/" + name
        var info = stat()
        guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
        return path
    }

    /// Reads files by absolute path (callers check the path first).
    private static let fileSystem: LocalFileSystem = {
        var logger = Logger(label: "talkie.files")
        logger.logLevel = .warning
        return LocalFileSystem(rootFolder: "/", threadPool: .singleton, logger: logger)
    }()

    /// The file at `path` with `Range` support (206 and Content-Range), streamed.
    static func respond(path: String, request: Request, context: some RequestContext, contentType: String,
                        attachmentName: String? = nil) async throws -> Response {
        var info = stat()
        guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            throw StudioError(404, "file.not_found", "no such file")
        }
        let size = Int(info.st_size)
        var headers: HTTPFields = [.contentType: contentType, .acceptRanges: "bytes"]
        if let attachmentName {
            headers[.contentDisposition] = "attachment; filename=\"\(attachmentName.replacingOccurrences(of: "\"", with: ""))\""
        }
        if let header = request.headers[.range], let range = parseRange(header, size: size) {
            guard range.lowerBound < size, range.lowerBound <= range.upperBound else {
                headers[.contentRange] = "bytes */\(size)"
                return Response(status: .rangeNotSatisfiable, headers: headers)
            }
            let upper = min(range.upperBound, size - 1)
            headers[.contentRange] = "bytes \(range.lowerBound)-\(upper)/\(size)"
            headers[.contentLength] = String(upper - range.lowerBound + 1)
            let body = try await fileSystem.loadFile(id: path, range: range.lowerBound...upper, context: context)
            return Response(status: .partialContent, headers: headers, body: body)
        }
        headers[.contentLength] = String(size)
        if request.method == .head { return Response(status: .ok, headers: headers) }
        return Response(status: .ok, headers: headers, body: try await fileSystem.loadFile(id: path, context: context))
    }

    /// `bytes=a-b`, `bytes=a-` or `bytes=-n` (one range; others are served whole).
    static func parseRange(_ header: String, size: Int) -> ClosedRange<Int>? {
        guard header.hasPrefix("bytes="), !header.contains(",") else { return nil }
        let parts = header.dropFirst(6).split(separator: "-", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 else { return nil }
        if parts[0].isEmpty, let suffix = Int(parts[1]), suffix > 0 { return max(0, size - suffix)...(size - 1) }
        guard let start = Int(parts[0]) else { return nil }
        let end = parts[1].isEmpty ? size - 1 : (Int(parts[1]) ?? -1)
        guard end >= 0 else { return nil }
        return start...max(start, end)
    }

    /// A zip (stored, zip64) of `files`, written to the client as it is read: nothing is
    /// built in memory or on disk first.
    static func zip(_ files: [(name: String, path: String)]) -> ResponseBody {
        ResponseBody { writer in
            var offset: UInt64 = 0
            var central = ByteBuffer()
            var count: UInt64 = 0
            let chunk = 1 << 20
            for file in files {
                guard let handle = FileHandle(forReadingAtPath: file.path) else { continue }
                defer { try? handle.close() }
                let name = Array(file.name.utf8)
                let (time, date) = dosTimestamp(Date())
                var header = ByteBuffer()
                header.writeInteger(UInt32(0x0403_4b50), endianness: .little)
                header.writeInteger(UInt16(45), endianness: .little)
                header.writeInteger(UInt16(0x0808), endianness: .little)  // data descriptor, UTF-8 name
                header.writeInteger(UInt16(0), endianness: .little)  // stored
                header.writeInteger(time, endianness: .little)
                header.writeInteger(date, endianness: .little)
                header.writeInteger(UInt32(0), endianness: .little)
                header.writeInteger(UInt32.max, endianness: .little)
                header.writeInteger(UInt32.max, endianness: .little)
                header.writeInteger(UInt16(name.count), endianness: .little)
                header.writeInteger(UInt16(20), endianness: .little)
                header.writeBytes(name)
                header.writeInteger(UInt16(1), endianness: .little)
                header.writeInteger(UInt16(16), endianness: .little)
                header.writeInteger(UInt64(0), endianness: .little)
                header.writeInteger(UInt64(0), endianness: .little)
                let localOffset = offset
                offset += UInt64(header.readableBytes)
                try await writer.write(header)
                var crc: UInt = crc32(0, nil, 0)
                var size: UInt64 = 0
                while let data = try handle.read(upToCount: chunk), !data.isEmpty {
                    crc = data.withUnsafeBytes { crc32(crc, $0.bindMemory(to: UInt8.self).baseAddress, uInt($0.count)) }
                    size += UInt64(data.count)
                    try await writer.write(ByteBuffer(data: data))
                }
                offset += size
                var descriptor = ByteBuffer()
                descriptor.writeInteger(UInt32(0x0807_4b50), endianness: .little)
                descriptor.writeInteger(UInt32(truncatingIfNeeded: crc), endianness: .little)
                descriptor.writeInteger(size, endianness: .little)
                descriptor.writeInteger(size, endianness: .little)
                offset += UInt64(descriptor.readableBytes)
                try await writer.write(descriptor)

                central.writeInteger(UInt32(0x0201_4b50), endianness: .little)
                central.writeInteger(UInt16(0x0300 | 45), endianness: .little)
                central.writeInteger(UInt16(45), endianness: .little)
                central.writeInteger(UInt16(0x0808), endianness: .little)
                central.writeInteger(UInt16(0), endianness: .little)
                central.writeInteger(time, endianness: .little)
                central.writeInteger(date, endianness: .little)
                central.writeInteger(UInt32(truncatingIfNeeded: crc), endianness: .little)
                central.writeInteger(UInt32.max, endianness: .little)
                central.writeInteger(UInt32.max, endianness: .little)
                central.writeInteger(UInt16(name.count), endianness: .little)
                central.writeInteger(UInt16(28), endianness: .little)
                central.writeInteger(UInt16(0), endianness: .little)
                central.writeInteger(UInt16(0), endianness: .little)
                central.writeInteger(UInt16(0), endianness: .little)
                central.writeInteger(UInt32(0o100644) << 16, endianness: .little)
                central.writeInteger(UInt32.max, endianness: .little)
                central.writeBytes(name)
                central.writeInteger(UInt16(1), endianness: .little)
                central.writeInteger(UInt16(24), endianness: .little)
                central.writeInteger(size, endianness: .little)
                central.writeInteger(size, endianness: .little)
                central.writeInteger(localOffset, endianness: .little)
                count += 1
            }
            let centralOffset = offset
            let centralSize = UInt64(central.readableBytes)
            var end = central
            end.writeInteger(UInt32(0x0606_4b50), endianness: .little)  // zip64 end of central directory
            end.writeInteger(UInt64(44), endianness: .little)
            end.writeInteger(UInt16(45), endianness: .little)
            end.writeInteger(UInt16(45), endianness: .little)
            end.writeInteger(UInt32(0), endianness: .little)
            end.writeInteger(UInt32(0), endianness: .little)
            end.writeInteger(count, endianness: .little)
            end.writeInteger(count, endianness: .little)
            end.writeInteger(centralSize, endianness: .little)
            end.writeInteger(centralOffset, endianness: .little)
            end.writeInteger(UInt32(0x0706_4b50), endianness: .little)  // its locator
            end.writeInteger(UInt32(0), endianness: .little)
            end.writeInteger(centralOffset + centralSize, endianness: .little)
            end.writeInteger(UInt32(1), endianness: .little)
            end.writeInteger(UInt32(0x0605_4b50), endianness: .little)  // end of central directory
            end.writeInteger(UInt16(0), endianness: .little)
            end.writeInteger(UInt16(0), endianness: .little)
            end.writeInteger(UInt16.max, endianness: .little)
            end.writeInteger(UInt16.max, endianness: .little)
            end.writeInteger(UInt32.max, endianness: .little)
            end.writeInteger(UInt32.max, endianness: .little)
            end.writeInteger(UInt16(0), endianness: .little)
            try await writer.write(end)
            try await writer.finish(nil)
        }
    }

    private static func dosTimestamp(_ date: Date) -> (UInt16, UInt16) {
        let parts = Calendar(identifier: .gregorian).dateComponents(in: TimeZone(identifier: "UTC")!, from: date)
        let time = UInt16((parts.hour ?? 0) << 11 | (parts.minute ?? 0) << 5 | (parts.second ?? 0) / 2)
        let day = UInt16(max(0, (parts.year ?? 1980) - 1980) << 9 | (parts.month ?? 1) << 5 | (parts.day ?? 1))
        return (time, day)
    }
}
