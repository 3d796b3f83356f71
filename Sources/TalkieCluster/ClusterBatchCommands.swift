import Foundation
import PostgresNIO
import Synchronization
import TalkieCore
import TalkieRunner
import TalkieStore

/// What the server and the CLI do to a cluster's batch: submit (reconcile inputs into the
/// database), follow it to its end, and move it to or from an embedded store. The rules are
/// the single machine's: the same `Reconciler`, the same settings checks.
public enum ClusterBatchCommands {
    /// Hashes the inputs, reconciles them with the stored items and records the batch (see
    /// `ClusterStore.submit`). Returns the batch's keys. `config.outputs` and every input
    /// must be on storage all machines see, at the same path.
    public static func submit(_ store: ClusterStore, config: RunConfiguration, policy: ClusterPolicy) async throws -> [ItemKey] {
        _ = try await ClusterSchema.migrate(store.database)
        let outputs = config.outputs
        for folder in [outputs, outputs + "/.talkie"] {
            do { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) } catch {
                throw RunSetupError(code: "workspace.unusable", message: "cannot create \(folder): \(error.localizedDescription); choose a writable --out folder on the shared storage")
            }
        }
        let batch = try await store.batch()
        let (audio, sources, settings) = try config.resolvedInputs(stored: batch.inputs, where: "the cluster")
        guard EngineCatalog.names.contains(settings.engine) else {
            throw RunSetupError(code: "engine.unknown", message: "unknown engine '\(settings.engine)'; known engines: \(EngineCatalog.names.joined(separator: ", "))")
        }
        let audioPath = URL(fileURLWithPath: audio).standardizedFileURL.path
        guard FileManager.default.isReadableFile(atPath: audioPath) else {
            throw RunSetupError(code: "input.missing", message: "the narration \(audio) does not exist or cannot be read")
        }
        let cache = HashCache(path: outputs + "/.talkie/hash-cache.json")
        let audioHash = try cache.hash(path: audioPath)
        let scan = try InputScanner.scan(sources, exclude: outputs)
        var inputs: [Reconciler.Input] = []
        for video in scan.paths {
            inputs.append(.init(path: video, hash: try cache.hash(path: video)))
        }
        try? cache.save(keeping: Set(inputs.map(\.path) + [audioPath]))

        var stored: [ItemKey: Item] = [:]
        for entry in try await store.items() { stored[entry.item.key] = entry.item }
        var reconciler = Reconciler(audio: audioHash, audioPath: audioPath, settingsFingerprint: settings.fingerprint,
                                    maxAttempts: policy.maxAttempts, retry: config.retry)
        reconciler.displayNames = config.displayNames
        reconciler.runningHoldsLease = true
        let plan = reconciler.plan(stored: stored, inputs: inputs, now: Date()) { output in
            FileManager.default.fileExists(atPath: (outputs as NSString).appendingPathComponent(output))
        }
        try await store.submit(changed: plan.changed, batchKeys: plan.batch,
                               inputs: BatchInputs(audio: audioPath, videos: sources, settings: settings),
                               outputs: outputs, policy: policy, displayNames: config.displayNames)
        return plan.batch
    }

    /// The batch's counts now (its items in the database).
    public static func summary(_ store: ClusterStore) async throws(ClusterError) -> BatchSummary {
        var summary = BatchSummary(total: 0, succeeded: 0, failed: 0, pending: 0, renderedThisRun: 0, interrupted: false)
        for entry in try await store.items() where entry.inBatch {
            summary.total += 1
            switch entry.item.state.status {
            case .success: summary.succeeded += 1
            case .failed: summary.failed += 1
            case .pending, .running: summary.pending += 1
            }
        }
        return summary
    }

    /// Passes every event of the cluster to `show` until no item of the batch is pending or
    /// running (then returns the summary, with the successes committed while it watched as
    /// `renderedThisRun`), reclaiming expired leases meanwhile (a follower is
    /// a process of the cluster too). Waits out database outages.
    public static func follow(_ store: ClusterStore, show: @escaping @Sendable (TimedEvent) -> Void,
                              note: @escaping @Sendable (String) -> Void) async throws -> BatchSummary {
        let rendered = SucceededCount()
        return try await withThrowingTaskGroup(of: BatchSummary?.self) { group in
            group.addTask {
                try await listen(store, show: { timed in
                    if case .itemSucceeded = timed.event { rendered.value.add(1, ordering: .relaxed) }
                    show(timed)
                }, note: note)
                return nil
            }
            group.addTask {
                while true {
                    try await Task.sleep(for: .seconds(1))
                    let open = try await store.database.persistently(waiting: { note($0.message) }) { () async throws(ClusterError) in
                        _ = try await store.reclaimExpired()
                        return try await store.openWork()
                    }
                    if open.pending == 0 && open.running == 0 { break }
                }
                // The last events may still be on their way: give the listener a moment.
                try await Task.sleep(for: .milliseconds(300))
                var finished = try await summary(store)
                finished.renderedThisRun = rendered.value.load(ordering: .relaxed)
                return finished
            }
            var result: BatchSummary?
            for try await next in group where next != nil {
                result = next
                group.cancelAll()
            }
            return result ?? BatchSummary(total: 0, succeeded: 0, failed: 0, pending: 0, renderedThisRun: 0, interrupted: true)
        }
    }

    /// Items the cluster committed as successes while a follower watched.
    private final class SucceededCount: Sendable {
        let value = Atomic<Int>(0)
    }

    /// LISTENs to the cluster's events until cancelled, connecting again after an outage.
    public static func listen(_ store: ClusterStore, show: @escaping @Sendable (TimedEvent) -> Void,
                              note: @escaping @Sendable (String) -> Void) async throws {
        var delay = 0.2
        while !Task.isCancelled {
            do {
                try await store.database.withConnection { connection in
                    try await connection.listen(on: ClusterStore.eventChannel) { notifications in
                        delay = 0.2
                        for try await notification in notifications {
                            if let event = TimedEvent(jsonLine: notification.payload) { show(event) }
                        }
                    }
                }
            } catch {
                if Task.isCancelled { return }
                if !error.isOutage { throw error }
                note("\(error.message); waiting for it")
            }
            do { try await Task.sleep(for: .seconds(delay)) } catch { return }  // cancelled: the follower is done
            delay = min(5, delay * 2)
        }
    }

    /// Writes the cluster's batch into the embedded store of `folder` (which must not be in
    /// use). Returns the number of items written.
    public static func export(_ store: ClusterStore, to folder: String, writtenBy: String) async throws -> Int {
        try await ClusterSchema.check(store.database)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let lock = try StoreLock(folder: folder)
        defer { lock.release() }
        let local = try StateStore(folder: folder, writtenBy: writtenBy)
        defer { local.close() }
        let count = try await copy(from: store, to: local)
        try local.compact()
        return count
    }

    /// Writes the embedded store of `folder` into the cluster (items no worker holds are
    /// replaced); `folder` becomes the cluster's output folder. Returns the number of items written.
    public static func importState(_ store: ClusterStore, from folder: String) async throws -> Int {
        _ = try await ClusterSchema.migrate(store.database)
        let (document, _) = try StateStore.read(folder: folder)
        return try await store.save(document.items, batch: document.batch, outputs: folder,
                                    settingsHistory: document.settingsHistory)
    }

    /// Copies a batch from one store to another; returns the number of items.
    public static func copy(from source: some BatchStore, to destination: some BatchStore) async throws -> Int {
        let items = try await source.storedItems()
        try await destination.save(items, batch: try await source.storedBatch())
        return items.count
    }
}
