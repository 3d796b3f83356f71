import Foundation
import PostgresNIO
import Testing
import TalkieCore
import TalkieRunner
import TalkieStore
@testable import TalkieCluster

/// A database of its own for one test, on the PostgreSQL that `TALKIE_TEST_POSTGRES` names
/// (scripts/test.sh starts one); dropped afterwards.
enum TestDatabase {
    static let baseURL = ProcessInfo.processInfo.environment["TALKIE_TEST_POSTGRES"]

    static func with(_ body: (ClusterStore, String) async throws -> Void) async throws {
        let base = try ClusterDatabase(url: try #require(baseURL))
        let name = "talkie_t_\(UInt32.random(in: 0...UInt32.max))"
        try await base.withConnection { connection in
            try await connection.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: base.queryLogger)
        }
        var components = URLComponents(string: baseURL!)!
        components.path = "/" + name
        let url = components.string!
        let store = ClusterStore(try ClusterDatabase(url: url))
        do {
            try await body(store, url)
        } catch {
            await store.database.close()
            try? await drop(name, base)
            throw error
        }
        await store.database.close()
        try await drop(name, base)
    }

    private static func drop(_ name: String, _ base: ClusterDatabase) async throws {
        try await base.withConnection { connection in
            try await connection.query(PostgresQuery(unsafeSQL: "DROP DATABASE \(name) WITH (FORCE)"), logger: base.queryLogger)
        }
        await base.close()
    }
}

func item(_ n: Int) -> Item {
    Item(key: ItemKey(video: ContentHash(high: 1, low: UInt64(n)), audio: ContentHash(high: 2, low: 2)),
         names: ["/shared/templates/t\(n).mp4"], audioPath: "/shared/narration.wav", createdAt: Date(timeIntervalSince1970: 1_700_000_000))
}

func submit(_ store: ClusterStore, _ items: [Item], leaseSeconds: Double = 30, maxAttempts: Int = 3) async throws {
    var policy = ClusterPolicy()
    policy.leaseSeconds = leaseSeconds
    policy.maxAttempts = maxAttempts
    try await store.submit(changed: items, batchKeys: items.map(\.key),
                           inputs: BatchInputs(audio: "/shared/narration.wav", videos: ["/shared/templates"], settings: RenderSettings()),
                           outputs: "/shared/out", policy: policy)
}

func succeeded(_ claim: Claim, output: String = "out.mp4") throws -> Item {
    var item = claim.item
    try item.state.apply(.succeed(output: output, settingsFingerprint: "f"))
    return item
}

let done = BatchEvent.warning("test")

/// The cluster's store against a real PostgreSQL: schema, claims, leases, commands.
@Suite(.enabled(if: TestDatabase.baseURL != nil, "TALKIE_TEST_POSTGRES is not set (scripts/test.sh starts a PostgreSQL and sets it)"),
       .serialized)
struct ClusterStoreTests {
    @Test func theSchemaIsCreatedOnceAndAWorkerRefusesAnyOtherVersion() async throws {
        try await TestDatabase.with { store, _ in
            await #expect(throws: ClusterError.self) { try await ClusterSchema.check(store.database) }
            #expect(try await ClusterSchema.migrate(store.database) == 0)
            #expect(try await ClusterSchema.migrate(store.database) == ClusterSchema.current)
            try await ClusterSchema.check(store.database)
            try await store.database.withConnection { connection in
                try await connection.query("UPDATE talkie_schema SET version = 999", logger: store.database.queryLogger)
            }
            do {
                try await ClusterSchema.check(store.database)
                Issue.record("a worker accepted schema 999")
            } catch let error as ClusterError {
                #expect(error.code == "cluster.schema")
                #expect(error.message.contains("newer than this Talkie's"))
            }
            await #expect(throws: ClusterError.self) { _ = try await ClusterSchema.migrate(store.database) }
        }
    }

    @Test func concurrentClaimersNeverTakeTheSameItem() async throws {
        try await TestDatabase.with { store, _ in
            _ = try await ClusterSchema.migrate(store.database)
            try await submit(store, (0..<30).map(item))
            let claimed = try await withThrowingTaskGroup(of: [ItemKey].self) { group in
                for worker in 0..<6 {
                    group.addTask {
                        var keys: [ItemKey] = []
                        while let claim = try await store.claim(owner: "w\(worker)", device: nil) {
                            keys.append(claim.item.key)
                            #expect(try await store.finish(try succeeded(claim), lease: claim.lease, event: done))
                        }
                        return keys
                    }
                }
                return try await group.reduce([], +)
            }
            #expect(claimed.count == 30)
            #expect(Set(claimed).count == 30)
            let items = try await store.items()
            #expect(items.allSatisfy { $0.item.state.status == .success && $0.item.state.attempts == 1 })
        }
    }

    @Test func aWorkerWhoseLeaseExpiredCannotOverwriteTheRerun() async throws {
        try await TestDatabase.with { store, _ in
            _ = try await ClusterSchema.migrate(store.database)
            try await submit(store, [item(1)], leaseSeconds: 1)
            let first = try #require(try await store.claim(owner: "sleepy", device: nil))
            try await Task.sleep(for: .milliseconds(1300))
            let reclaimed = try await store.reclaimExpired()
            #expect(reclaimed.map(\.state.status) == [.pending])
            #expect(reclaimed.first?.state.attempts == 1)  // the lost attempt stays counted
            let second = try #require(try await store.claim(owner: "awake", device: nil))
            #expect(second.lease.token > first.lease.token)
            #expect(second.item.state.attempts == 2)
            // The first worker wakes up: its heartbeat and its commit match no row.
            #expect(try await store.heartbeat(first.lease) == .lost)
            #expect(try await store.finish(try succeeded(first, output: "late.mp4"), lease: first.lease, event: done) == false)
            #expect(try await store.items().first?.item.state.status == .running)
            #expect(try await store.finish(try succeeded(second, output: "rerun.mp4"), lease: second.lease, event: done))
            #expect(try await store.finish(try succeeded(first, output: "late.mp4"), lease: first.lease, event: done) == false)
            let final = try #require(try await store.items().first)
            #expect(final.item.state.output == "rerun.mp4")
            #expect(final.item.state.attempts == 2)
        }
    }

    @Test func expiredLeasesCountAsAttemptsUpToTheCap() async throws {
        try await TestDatabase.with { store, _ in
            _ = try await ClusterSchema.migrate(store.database)
            try await submit(store, [item(1)], leaseSeconds: 1, maxAttempts: 2)
            for round in 1...2 {
                _ = try #require(try await store.claim(owner: "dies-\(round)", device: nil))
                try await Task.sleep(for: .milliseconds(1200))
                let reclaimed = try #require(try await store.reclaimExpired().first)
                #expect(reclaimed.state.status == (round == 1 ? .pending : .failed))
            }
            let final = try #require(try await store.items().first)
            #expect(final.item.state.lastError?.message.contains("interrupted 2 times") == true)
            #expect(try await store.claim(owner: "next", device: nil) == nil)
        }
    }

    @Test func pauseStopsClaimsAndStopReachesRunningItemsThroughTheHeartbeat() async throws {
        try await TestDatabase.with { store, _ in
            _ = try await ClusterSchema.migrate(store.database)
            try await submit(store, [item(1), item(2)])
            let running = try #require(try await store.claim(owner: "w", device: nil))
            try await store.setPaused(true)
            #expect(try await store.claim(owner: "w", device: nil) == nil)
            #expect(try await store.heartbeat(running.lease) == .held(stopGeneration: running.batch.stopGeneration))
            try await store.stop()
            #expect(try await store.heartbeat(running.lease) == .held(stopGeneration: running.batch.stopGeneration + 1))
            var stopped = running.item
            try stopped.state.apply(.stop)
            #expect(try await store.finish(stopped, lease: running.lease, event: done))
            #expect(try await store.openWork() == (pending: 2, running: 0))
            // A new submission resumes, keeping the items.
            try await submit(store, [item(1), item(2)])
            #expect(try await store.claim(owner: "w", device: nil) != nil)
        }
    }

    @Test func clearHistoryKeepsOnlyWhatAWorkerHolds() async throws {
        try await TestDatabase.with { store, _ in
            _ = try await ClusterSchema.migrate(store.database)
            try await submit(store, [item(1), item(2), item(3)])
            let held = try #require(try await store.claim(owner: "w", device: nil))
            #expect(try await store.reset() == 2)
            #expect(try await store.items().map(\.item.key) == [held.item.key])
        }
    }

    @Test func eventsArriveOverListenNotify() async throws {
        try await TestDatabase.with { store, _ in
            _ = try await ClusterSchema.migrate(store.database)
            let seen = try await withThrowingTaskGroup(of: [TimedEvent].self) { group in
                let (stream, continuation) = AsyncStream.makeStream(of: TimedEvent.self)
                group.addTask {
                    try await ClusterBatchCommands.listen(store, show: { continuation.yield($0) }, note: { _ in })
                    return []
                }
                group.addTask {
                    var events: [TimedEvent] = []
                    for await event in stream {
                        events.append(event)
                        if case .itemStarted = event.event { break }
                    }
                    return events
                }
                // Until the listener is in place, events would be missed: submit until one arrives.
                try await Task.sleep(for: .milliseconds(500))
                try await submit(store, [item(1)])
                _ = try await store.claim(owner: "w", device: "gpu 0")
                let events = try await group.next() ?? []
                group.cancelAll()
                return events
            }
            #expect(seen.contains { if case .batchStarted(1, 1, _) = $0.event { true } else { false } })
            #expect(seen.contains { if case .itemStarted(item(1).key, _, 1, "gpu 0") = $0.event { true } else { false } })
        }
    }

    /// The same batch in both stores: the embedded one, PostgreSQL, and back.
    @Test func aBatchMovesBetweenTheEmbeddedStoreAndPostgreSQL() async throws {
        try await TestDatabase.with { store, _ in
            let origin = FileManager.default.temporaryDirectory.appendingPathComponent("talkie-export-\(UUID().uuidString)").path
            let copy = origin + "-back"
            defer { try? FileManager.default.removeItem(atPath: origin); try? FileManager.default.removeItem(atPath: copy) }
            try FileManager.default.createDirectory(atPath: origin, withIntermediateDirectories: true)
            var items = (0..<5).map(item)
            try items[0].state.apply(.start)
            try items[0].state.apply(.succeed(output: "t0.mp4", settingsFingerprint: RenderSettings().fingerprint))
            try items[1].state.apply(.start)
            try items[1].state.apply(.fail(ItemError(kind: .input, message: "no face")))
            do {
                let local = try StateStore(folder: origin)
                try local.commit(items, batch: BatchInputs(audio: "/shared/narration.wav", videos: ["/shared/templates"], settings: RenderSettings()))
                try local.compact()
                local.close()
            }
            #expect(try await ClusterBatchCommands.importState(store, from: origin) == 5)
            #expect(try await store.items().map(\.item) == items)
            #expect(try await store.batch().inputs?.audio == "/shared/narration.wav")
            #expect(try await ClusterBatchCommands.export(store, to: copy, writtenBy: "test") == 5)
            let back = try StateStore.read(folder: copy).document
            #expect(back.items == items)
            #expect(back.batch?.videos == ["/shared/templates"])
        }
    }
}
