import Foundation
import Synchronization
import TalkieCore
@testable import TalkieStore

/// A fresh temporary folder, removed when the value goes away.
final class TemporaryFolder {
    let path: String
    init() {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("talkie-test-\(UUID().uuidString)").path
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }
}

/// Runs a command and returns its standard output.
func shell(_ command: String) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

/// File operations that fail from the `failAt`-th one on, as a crash there would.
final class FaultPlan: Sendable {
    let failAt: Int
    let count = Atomic<Int>(0)
    let operations = Mutex<[FileOps.Operation]>([])
    init(failAt: Int = .max) { self.failAt = failAt }
    var ops: FileOps {
        FileOps { [self] operation throws(StoreError) in
            let n = count.add(1, ordering: .sequentiallyConsistent).newValue
            operations.withLock { $0.append(operation) }
            if n >= failAt { throw StoreError.injectedFault("\(operation)") }
        }
    }
}

func makeItem(_ n: Int, status: ItemStatus = .pending) -> Item {
    let key = ItemKey(video: ContentHash(high: UInt64(n), low: 7), audio: ContentHash(high: 1, low: 1))
    var item = Item(key: key, names: ["/templates/t\(n).mp4"], audioPath: "/a.wav", createdAt: Date(timeIntervalSince1970: 0))
    if status == .success {
        item.state = ItemState(status: .success, attempts: 1, output: "t\(n).mp4", settingsFingerprint: "f")
    }
    return item
}
