import Foundation
import Testing
import TalkieCore
@testable import TalkieStore

@Suite struct StateStoreTests {
    @Test func commitsSurviveReopeningWithoutCompaction() throws {
        let folder = TemporaryFolder()
        do {
            let store = try StateStore(folder: folder.path)
            try store.commit([makeItem(1), makeItem(2, status: .success)])
            try store.commit([makeItem(1, status: .success)])
            store.close()
        }
        let store = try StateStore(folder: folder.path)
        #expect(store.recovery.source == .journal)
        #expect(store.count == 2)
        #expect(store.item(makeItem(1).key)?.state.status == .success)
        #expect(!store.recovery.needsRebuild)
    }

    @Test func theCachedReaderSeesEveryChangeAndDecodesOnlyAfterOne() throws {
        let folder = TemporaryFolder()
        var reader = CachedStateReader()
        let store = try StateStore(folder: folder.path)
        try store.commit([makeItem(1)])
        #expect(try reader.read(folder: folder.path).items.map(\.state.status) == [.pending])
        try store.commit([makeItem(1, status: .success)])  // an append to the journal
        #expect(try reader.read(folder: folder.path).items.map(\.state.status) == [.success])
        try store.compact()  // a new snapshot, the journal rotated
        try store.commit([makeItem(2)])
        #expect(try reader.read(folder: folder.path).items.count == 2)
        #expect(reader.decodes == 3)
        _ = try reader.read(folder: folder.path)
        _ = try reader.read(folder: folder.path)
        #expect(reader.decodes == 3)  // nothing changed: nothing decoded
        store.close()
    }

    @Test func compactionWritesSnapshotAndBackupAndRotatesJournal() throws {
        let folder = TemporaryFolder()
        let store = try StateStore(folder: folder.path)
        try store.commit([makeItem(1)])
        try store.compact()
        try store.commit([makeItem(2)])
        try store.compact()
        store.close()
        let (document, report) = try StateStore.read(folder: folder.path)
        #expect(report.source == .snapshot)
        #expect(document.generation == 2 && document.items.count == 2)
        let backup = try JSONDecoder.talkie.decode(StateDocument.self, from: Data(contentsOf: URL(fileURLWithPath: folder.file("task_status.json.bak"))))
        #expect(backup.generation == 1 && backup.items.count == 1)
        #expect(try Data(contentsOf: URL(fileURLWithPath: folder.file("task_status.journal"))).isEmpty)
    }

    @Test func journalIsCompactedOnceItIsAsLongAsTheBatch() throws {
        let folder = TemporaryFolder()
        let store = try StateStore(folder: folder.path, compactionInterval: 10)
        // Three items updated 25 times: a compaction every 10 records (at least as many as items).
        for n in 0..<25 { try store.commit([makeItem(n % 3)]) }
        #expect(store.generation == 2)
        #expect(store.count == 3)
        store.close()
    }

    @Test func aTornLastLineIsDroppedAndCutOff() throws {
        let folder = TemporaryFolder()
        do {
            let store = try StateStore(folder: folder.path)
            try store.commit([makeItem(1)])
            store.close()
        }
        let journal = folder.file("task_status.journal")
        let handle = try #require(FileHandle(forWritingAtPath: journal))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data("{\"seq\":2,\"item\":{\"key\":".utf8))
        try handle.close()
        let store = try StateStore(folder: folder.path)
        #expect(store.count == 1)
        #expect(store.recovery.notes.contains { $0.contains("torn") })
        try store.commit([makeItem(3)])
        store.close()
        #expect(try StateStore.read(folder: folder.path).document.items.count == 2)
    }

    @Test func aDamagedMiddleLineIsKeptAsEvidenceAndAsksForARebuild() throws {
        let folder = TemporaryFolder()
        do {
            let store = try StateStore(folder: folder.path)
            for n in 1...3 { try store.commit([makeItem(n)]) }
            store.close()
        }
        let journal = folder.file("task_status.journal")
        var lines = try String(contentsOfFile: journal, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        lines[1] = "garbage"
        try lines.joined(separator: "\n").write(toFile: journal, atomically: false, encoding: .utf8)
        let store = try StateStore(folder: folder.path)
        #expect(store.count == 1)
        #expect(store.recovery.needsRebuild)
        #expect(store.recovery.movedAside.contains { $0.contains("journal.corrupt-") })
        store.close()
    }

    @Test func resetForgetsItemsButKeepsTheOldStateAsBackup() throws {
        let folder = TemporaryFolder()
        let store = try StateStore(folder: folder.path)
        try store.commit([makeItem(1, status: .success)])
        try store.compact()
        try store.reset()
        store.close()
        let reopened = try StateStore(folder: folder.path)
        #expect(reopened.count == 0)
        #expect(reopened.recovery.source == .snapshot && !reopened.recovery.needsRebuild)
        reopened.close()
        let backup = try JSONDecoder.talkie.decode(StateDocument.self, from: Data(contentsOf: URL(fileURLWithPath: folder.file("task_status.json.bak"))))
        #expect(backup.items.count == 1)
    }

    @Test func aSyncFailureIsFatalAndPoisonsTheStore() throws {
        let folder = TemporaryFolder()
        let failing = FileOps { operation throws(StoreError) in
            if case .fsync(let path) = operation, path.hasSuffix(".journal") { throw StoreError.syncFailed(path: "journal", errno: EIO) }
        }
        let store = try StateStore(folder: folder.path, ops: failing)
        #expect(throws: StoreError.syncFailed(path: "journal", errno: EIO)) { try store.commit([makeItem(1)]) }
        #expect(throws: StoreError.poisoned) { try store.commit([makeItem(2)]) }
        store.close()
    }

    @Test func aFullDiskFailsTheCommitAndKeepsThePreviousState() throws {
        let folder = TemporaryFolder()
        do {
            let store = try StateStore(folder: folder.path)
            try store.commit([makeItem(1, status: .success)])
            store.close()
        }
        let noSpace = StoreError.io("cannot write", path: "journal", errno: ENOSPC)
        let full = FileOps { operation throws(StoreError) in
            if case .write = operation { throw noSpace }
        }
        let store = try StateStore(folder: folder.path, ops: full)
        #expect(throws: noSpace) { try store.commit([makeItem(2)]) }
        #expect(throws: StoreError.poisoned) { try store.commit([makeItem(3)]) }
        store.close()
        #expect(noSpace.message.contains("No space left on device"))
        let after = try StateStore.read(folder: folder.path).document.items
        #expect(after.count == 1 && after.first?.state.status == .success)
    }

    @Test func lockIsExclusive() throws {
        let folder = TemporaryFolder()
        let lock = try StoreLock(folder: folder.path)
        #expect(throws: StoreError.locked(path: folder.path, holderPID: getpid())) { try StoreLock(folder: folder.path) }
        lock.release()
        _ = try StoreLock(folder: folder.path)
    }
}

extension JSONDecoder {
    static var talkie: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
