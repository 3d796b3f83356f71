import Foundation
import Synchronization
import Testing
import TalkieCore
@testable import TalkieStore

/// The store under a crash at every write, fsync, rename, link, truncate and unlink it makes,
/// and under every kind of damaged state file.
@Suite struct CrashAndCorruptionTests {
    /// Six items, each committed pending then successful, compacting every 4 records, then a final compaction.
    func scenario(_ store: StateStore, acknowledged: inout [ItemKey: ItemStatus]) throws {
        for n in 0..<6 {
            try store.commit([makeItem(n)])
            acknowledged[makeItem(n).key] = .pending
            try store.commit([makeItem(n, status: .success)])
            acknowledged[makeItem(n).key] = .success
        }
        try store.compact()
    }

    @Test func aCrashAtAnyPointLosesNoAcknowledgedChange() throws {
        let clean = FaultPlan()
        do {
            let folder = TemporaryFolder()
            var acknowledged: [ItemKey: ItemStatus] = [:]
            try scenario(try StateStore(folder: folder.path, ops: clean.ops, compactionInterval: 4), acknowledged: &acknowledged)
        }
        let total = clean.count.load(ordering: .sequentiallyConsistent)
        #expect(total > 40)
        for failAt in 1...total {
            let folder = TemporaryFolder()
            var acknowledged: [ItemKey: ItemStatus] = [:]
            let plan = FaultPlan(failAt: failAt)
            do {
                let store = try StateStore(folder: folder.path, ops: plan.ops, compactionInterval: 4)
                try scenario(store, acknowledged: &acknowledged)
                Issue.record("no fault at operation \(failAt)")
            } catch {
                // The process "died" here; the store object is abandoned.
            }
            let recovered = try StateStore(folder: folder.path)
            for (key, status) in acknowledged {
                let found = recovered.item(key)?.state.status
                // The change in flight may or may not have landed: the old or the new state, never less.
                #expect(found == status || (status == .pending && found == .success), "crash at operation \(failAt): \(key.short) is \(String(describing: found)), acknowledged \(status)")
            }
            if let data = try? Data(contentsOf: URL(fileURLWithPath: folder.file("task_status.json"))) {
                #expect((try? JSONDecoder.talkie.decode(StateDocument.self, from: data)) != nil, "crash at \(failAt): unreadable snapshot")
            }
            // And the batch finishes from there.
            for n in 0..<6 { try recovered.commit([makeItem(n, status: .success)]) }
            try recovered.compact()
            recovered.close()
            let final = try StateStore.read(folder: folder.path)
            #expect(final.document.items.count == 6 && final.document.items.allSatisfy { $0.state.status == .success })
        }
    }

    /// A folder with two snapshot generations (so a backup), more changes in the journal after them.
    func populatedFolder() throws -> TemporaryFolder {
        let folder = TemporaryFolder()
        let store = try StateStore(folder: folder.path)
        try store.commit([makeItem(1, status: .success)])
        try store.compact()
        try store.commit([makeItem(2, status: .success)])
        try store.compact()
        try store.commit([makeItem(3, status: .success)])
        store.close()
        return folder
    }

    func damageSnapshot(_ folder: TemporaryFolder, with data: Data) throws {
        try data.write(to: URL(fileURLWithPath: folder.file("task_status.json")))
    }

    func expectFullRecovery(_ folder: TemporaryFolder, _ label: String) throws {
        let store = try StateStore(folder: folder.path)
        defer { store.close() }
        #expect(store.count == 3, "\(label): \(store.recovery.notes)")
        #expect(store.allItems.allSatisfy { $0.state.status == .success }, "\(label)")
        #expect(store.recovery.source == .backup, "\(label)")
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path)
        #expect(names.contains { $0.hasPrefix("task_status.json.corrupt-") }, "\(label): evidence kept")
    }

    @Test func emptyRandomAndWrongShapeSnapshotsAreRecoveredFromBackupAndJournals() throws {
        var generator = SystemRandomNumberGenerator()
        let cases: [(String, Data)] = [
            ("empty", Data()),
            ("random bytes", Data((0..<500).map { _ in UInt8.random(in: 0...255, using: &generator) })),
            ("JSON array", Data("[1,2,3]".utf8)),
            ("JSON of another shape", Data("{\"hello\": \"world\"}".utf8)),
            ("schema but wrong fields", Data("{\"schema\": 1, \"items\": 5}".utf8)),
        ]
        for (label, data) in cases {
            let folder = try populatedFolder()
            try damageSnapshot(folder, with: data)
            try expectFullRecovery(folder, label)
        }
    }

    @Test func aSnapshotTruncatedAtEveryTenthIsRecovered() throws {
        for tenth in 0..<10 {
            let folder = try populatedFolder()
            let data = try Data(contentsOf: URL(fileURLWithPath: folder.file("task_status.json")))
            try damageSnapshot(folder, with: data.prefix(data.count * tenth / 10))
            try expectFullRecovery(folder, "truncated at \(tenth * 10)%")
        }
    }

    @Test func withoutBackupTheLossIsReportedNeverSilent() throws {
        let folder = try populatedFolder()
        try damageSnapshot(folder, with: Data("{broken".utf8))
        try FileManager.default.removeItem(atPath: folder.file("task_status.json.bak"))
        let store = try StateStore(folder: folder.path)
        #expect(store.recovery.needsRebuild)
        #expect(store.recovery.source != .fresh)
        store.close()
    }

    @Test func aRecordWhoseSyncFailedIsNotReadBack() throws {
        // The fsync fails after the write landed in the page cache: the success was never
        // acknowledged, so no later reader may see it.
        let folder = TemporaryFolder()
        let syncs = Atomic<Int>(0)
        let ops = FileOps { operation throws(StoreError) in
            guard case .fsync(let path) = operation, path.hasSuffix("task_status.journal") else { return }
            if syncs.add(1, ordering: .sequentiallyConsistent).newValue == 2 { throw .syncFailed(path: path, errno: EIO) }
        }
        let store = try StateStore(folder: folder.path, ops: ops)
        try store.commit([makeItem(1)])
        #expect(throws: StoreError.self) { try store.commit([makeItem(1, status: .success)]) }
        store.close()
        let recovered = try StateStore(folder: folder.path)
        #expect(recovered.item(makeItem(1).key)?.state.status == .pending, "never a success after a failed sync")
        recovered.close()
    }

    @Test func aSnapshotWhoseRenameFailedLeavesNoTempNameBehind() throws {
        let folder = TemporaryFolder()
        let renames = Atomic<Int>(0)
        let ops = FileOps { operation throws(StoreError) in
            guard case .rename(let from, _) = operation, from.contains("task_status.json.tmp-") else { return }
            if renames.add(1, ordering: .sequentiallyConsistent).newValue == 2 { throw .io("injected", path: from, errno: EXDEV) }
        }
        let store = try StateStore(folder: folder.path, ops: ops)
        try store.commit([makeItem(1)])
        try store.compact()
        try store.commit([makeItem(2)])
        #expect(throws: StoreError.self) { try store.compact() }  // the snapshot's rename into place fails
        store.close()
        let again = try StateStore(folder: folder.path)
        try again.commit([makeItem(3)])
        try again.compact()  // the backup is now a link to the snapshot itself
        again.close()
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path)
        #expect(!names.contains { $0.contains(".tmp-") }, "\(names)")
    }

    @Test func aJournalOfZerosIsDamageNotATornWrite() throws {
        // Item 3 lives only in the journal; zeros in its place must not read as a torn
        // append that was never acknowledged.
        for tail in [Data(count: 300), Data("not a record".utf8)] {
            let folder = try populatedFolder()
            let journal = folder.file("task_status.journal")
            let size = try Data(contentsOf: URL(fileURLWithPath: journal)).count
            try (tail.count >= size ? tail : tail + Data(count: size - tail.count)).write(to: URL(fileURLWithPath: journal))
            let store = try StateStore(folder: folder.path)
            #expect(store.recovery.needsRebuild, "\(store.recovery.notes)")
            #expect(store.recovery.notes.contains { $0.contains("not a journal record") })
            store.close()
        }
        let torn = try populatedFolder()
        let handle = try #require(FileHandle(forWritingAtPath: torn.file("task_status.journal")))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data("{\"seq\": 9, \"ite".utf8))
        try handle.close()
        let store = try StateStore(folder: torn.path)
        #expect(!store.recovery.needsRebuild && store.count == 3, "a real torn append is dropped quietly")
        store.close()
    }

    @Test func everythingGoneButAStateWasThereAsksForARebuild() throws {
        let folder = try populatedFolder()
        for name in ["task_status.json", "task_status.json.bak"] { try damageSnapshot(folder, with: Data()) ; _ = name }
        try Data().write(to: URL(fileURLWithPath: folder.file("task_status.json.bak")))
        try FileManager.default.removeItem(atPath: folder.file("task_status.journal.prev"))
        try Data().write(to: URL(fileURLWithPath: folder.file("task_status.journal")))
        let store = try StateStore(folder: folder.path)
        #expect(store.recovery.needsRebuild && store.recovery.source == .journal)
        store.close()
    }

    @Test func aFutureSchemaIsRefusedWithAMessage() throws {
        let folder = try populatedFolder()
        try damageSnapshot(folder, with: Data("{\"schema\": 99, \"items\": []}".utf8))
        #expect(throws: StoreError.futureSchema(path: folder.file("task_status.json"), found: 99, supported: 1)) {
            try StateStore(folder: folder.path)
        }
        // Nothing was moved or changed.
        #expect(try String(contentsOfFile: folder.file("task_status.json"), encoding: .utf8).contains("99"))
    }

    @Test func staleTempFilesAreSwept() throws {
        let folder = try populatedFolder()
        try Data("partial".utf8).write(to: URL(fileURLWithPath: folder.file("task_status.json.tmp-12345")))
        try Data("partial".utf8).write(to: URL(fileURLWithPath: folder.file("task_status.json.bak.tmp-12345")))
        let store = try StateStore(folder: folder.path)
        #expect(store.count == 3)
        store.close()
        let names = try FileManager.default.contentsOfDirectory(atPath: folder.path)
        #expect(!names.contains { $0.contains(".tmp-") })
    }

    @Test func theSeedsFormatIsRecognisedAndKeptAside() throws {
        let folder = TemporaryFolder()
        let legacy = """
        {"0123456789abcdef0123456789abcdef": {"status": "success", "output": "outputs/a.mp4", "filename": "a.mp4"},
         "fedcba9876543210fedcba9876543210": {"status": "failed"}}
        """
        try Data(legacy.utf8).write(to: URL(fileURLWithPath: folder.file("task_status.json")))
        let store = try StateStore(folder: folder.path)
        #expect(store.recovery.source == .legacy)
        #expect(store.recovery.legacy["0123456789abcdef0123456789abcdef"]?.isSuccess == true)
        #expect(store.recovery.legacy["fedcba9876543210fedcba9876543210"]?.isSuccess == false)
        #expect(store.recovery.movedAside.count == 1)
        store.close()
    }
}
