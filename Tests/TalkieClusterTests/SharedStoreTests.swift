import Foundation
import Testing
import TalkieCore
import TalkieStore
@testable import TalkieCluster

/// Every store of a batch's state, held to the same behaviour through `BatchStore`: the
/// embedded journal and snapshot of an output folder, and a cluster's PostgreSQL database.
enum StoreKind: String, CaseIterable, CustomTestStringConvertible {
    case embedded, postgres

    var testDescription: String { rawValue }

    /// The stores this machine can test (PostgreSQL when TALKIE_TEST_POSTGRES is set).
    static var available: [StoreKind] { TestDatabase.baseURL == nil ? [.embedded] : allCases }

    /// Runs `body` with a fresh store of this kind, and `reopen` to get a second handle on
    /// the same state (as a restarted process would).
    func with(_ body: (any BatchStore, () async throws -> any BatchStore) async throws -> Void) async throws {
        switch self {
        case .embedded:
            let folder = FileManager.default.temporaryDirectory.appendingPathComponent("talkie-shared-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: folder) }
            var opened: [StateStore] = []
            defer { for store in opened { store.close() } }
            let first = try StateStore(folder: folder)
            opened.append(first)
            try await body(first) {
                opened.last?.close()
                let next = try StateStore(folder: folder)
                opened.append(next)
                return next
            }
        case .postgres:
            try await TestDatabase.with { store, url in
                _ = try await ClusterSchema.migrate(store.database)
                var others: [ClusterStore] = []
                do {
                    try await body(store) {
                        let next = ClusterStore(try ClusterDatabase(url: url))
                        others.append(next)
                        return next
                    }
                } catch {
                    for other in others { await other.database.close() }
                    throw error
                }
                for other in others { await other.database.close() }
            }
        }
    }
}

private let inputs = BatchInputs(audio: "/shared/narration.wav", videos: ["/shared/templates"], settings: RenderSettings())

@Suite(.serialized)
struct SharedStoreTests {
    @Test(arguments: StoreKind.available)
    func savedItemsReadBackWholeAndSurviveAReopen(kind: StoreKind) async throws {
        try await kind.with { store, reopen in
            var items = (0..<40).map(item)
            try items[3].state.apply(.start)
            try items[3].state.apply(.fail(ItemError(kind: .input, message: "no face in the first frame")))
            try items[4].state.apply(.start)
            try items[4].state.apply(.succeed(output: "t4.mp4", settingsFingerprint: "abc"))
            items[4].score = 0.82
            items[4].media = MediaSummary(duration: 1, width: 160, height: 120, fps: 25)
            items[4].device = "gpu 1"
            try await store.save(items, batch: inputs)
            #expect(try await store.storedItems() == items)
            #expect(try await store.storedBatch() == inputs)
            let again = try await reopen()
            #expect(try await again.storedItems() == items)
            #expect(try await again.storedBatch() == inputs)
        }
    }

    @Test(arguments: StoreKind.available)
    func theLatestRecordOfAnItemWins(kind: StoreKind) async throws {
        try await kind.with { store, reopen in
            var first = item(1)
            try await store.save([first, item(2)], batch: inputs)
            try first.state.apply(.start)
            try first.state.apply(.succeed(output: "one.mp4", settingsFingerprint: "f"))
            try await store.save([first], batch: nil)
            let stored = try await reopen().storedItems()
            #expect(stored.count == 2)
            #expect(stored.first { $0.key == first.key } == first)
            #expect(try await store.storedBatch() == inputs)  // nil keeps what is recorded
        }
    }

    @Test(arguments: StoreKind.available)
    func newSettingsReplaceTheRecordedOnes(kind: StoreKind) async throws {
        try await kind.with { store, reopen in
            try await store.save([item(1)], batch: inputs)
            var faster = inputs
            faster.settings.tempo = 1.2
            try await store.save([], batch: faster)
            #expect(try await reopen().storedBatch()?.settings.tempo == 1.2)
        }
    }

    @Test(arguments: StoreKind.available)
    func clearHistoryForgetsItemsAndKeepsTheBatch(kind: StoreKind) async throws {
        try await kind.with { store, reopen in
            try await store.save((0..<5).map(item), batch: inputs)
            #expect(try await store.forgetItems() == 5)
            let again = try await reopen()
            #expect(try await again.storedItems().isEmpty)
            #expect(try await again.storedBatch() == inputs)
        }
    }

    @Test(arguments: StoreKind.available)
    func aBatchCopiedToTheOtherKindIsTheSame(kind: StoreKind) async throws {
        guard StoreKind.available.count == 2 else { return }
        let other: StoreKind = kind == .embedded ? .postgres : .embedded
        try await kind.with { source, _ in
            var items = (0..<12).map(item)
            try items[0].state.apply(.start)  // interrupted: the copy in a cluster holds no lease
            try await source.save(items, batch: inputs)
            try await other.with { destination, _ in
                #expect(try await ClusterBatchCommands.copy(from: source, to: destination) == 12)
                let copied = try await destination.storedItems()
                #expect(copied.map(\.key) == items.map(\.key))
                #expect(try await destination.storedBatch() == inputs)
                if other == .postgres {
                    #expect(copied[0].state.status == .pending && copied[0].state.attempts == 1)
                    #expect(Array(copied.dropFirst()) == Array(items.dropFirst()))
                } else {
                    #expect(copied == (try await source.storedItems()))
                }
            }
        }
    }
}
