import Foundation
import Testing
@testable import TalkieStore

@Suite struct HashingTests {
    @Test(arguments: [0, 1, 55, 56, 63, 64, 65, 1_000, 1 << 20, (1 << 20) + 3, 5 << 20])
    func matchesXxhsumAndMd5sum(size: Int) throws {
        let folder = TemporaryFolder()
        let path = folder.file("data.bin")
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let xxhsum = try shell("xxhsum -H2 '\(path)'").split(separator: " ").first.map(String.init)
        #expect(try FileHasher.xxh3(path: path).hex == xxhsum)
        let md5sum = try shell("md5sum '\(path)'").split(separator: " ").first.map(String.init)
        #expect(try FileHasher.md5(path: path) == md5sum)
        #expect(FileHasher.xxh3(Data(bytes)) == (try FileHasher.xxh3(path: path)))
    }

    @Test func hashCacheServesUnchangedFilesWithoutReading() throws {
        let folder = TemporaryFolder()
        let path = folder.file("video.mp4")
        try Data("first".utf8).write(to: URL(fileURLWithPath: path))
        let cache = HashCache(path: folder.file("cache.json"))
        let first = try cache.hash(path: path)
        #expect(cache.misses == 1)
        try cache.save()
        let reloaded = HashCache(path: folder.file("cache.json"))
        #expect(try reloaded.hash(path: path) == first)
        #expect(reloaded.hits == 1 && reloaded.misses == 0)
        try Data("second".utf8).write(to: URL(fileURLWithPath: path))
        #expect(try reloaded.hash(path: path) != first)
        #expect(reloaded.misses == 1)
    }

    @Test func missingFileIsAClearError() {
        #expect(throws: StoreError.self) { try FileHasher.xxh3(path: "/nonexistent/file.mp4") }
    }
}
