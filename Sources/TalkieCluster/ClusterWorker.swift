import Foundation
import Synchronization
import TalkieCore
import TalkieEngine
import TalkieMedia
import TalkieRunner
import TalkieStore

/// What one `talkie worker` process is.
public struct WorkerConfiguration: Sendable {
    /// The lease owner's name: unique per process (hostname:pid by default).
    public var name: String
    /// One engine worker per entry: its GPU, or nil for an engine that picks its own device.
    public var devices: [String?]
    /// End once no item of the batch is pending or running.
    public var exitWhenIdle: Bool
    /// Where engines are found.
    public var engines: EngineCatalog
    /// Seconds between looks for work while there is none.
    public var idlePoll: Double

    /// Creates a configuration.
    public init(name: String, devices: [String?] = [nil], exitWhenIdle: Bool = false, engines: EngineCatalog = .installed(),
                idlePoll: Double = 0.5) {
        self.name = name
        self.devices = devices
        self.exitWhenIdle = exitWhenIdle
        self.engines = engines
        self.idlePoll = idlePoll
    }
}

/// One worker process of a cluster: each slot claims an item under a lease, renders it with
/// the same `ItemRenderer` as a single machine, heartbeats the lease while it renders, and
/// commits the outcome naming the lease token. A commit that matches no row means the lease
/// was lost (this worker was presumed dead and the item reclaimed): the worker drops the
/// item quietly, so a late worker can never overwrite the re-run. While the database is
/// away it keeps rendering and retries with backoff, committing when it returns.
public actor ClusterWorker {
    /// What this worker did, in order (for its own output; pages get the cluster's events).
    public nonisolated let events: AsyncStream<TimedEvent>
    private let continuation: AsyncStream<TimedEvent>.Continuation
    private let store: ClusterStore
    private let config: WorkerConfiguration
    private let shuttingDown = Atomic<Bool>(false)
    private nonisolated let progressStream: AsyncStream<BatchEvent>
    private nonisolated let progressToSend: AsyncStream<BatchEvent>.Continuation
    private var rendered = 0
    private var abandoned = 0

    /// Counts when the worker ends.
    public struct Summary: Sendable, Equatable {
        /// Items this worker committed as successes.
        public var rendered: Int
        /// Items dropped because their lease was lost.
        public var abandoned: Int
    }

    /// Why a slot let go of its engine worker.
    private enum SlotEnd: Error {
        /// The engine must start again (it died, or a render was stopped).
        case restartEngine
    }

    /// Creates a worker; nothing happens until `run()`.
    public init(store: ClusterStore, config: WorkerConfiguration) {
        self.store = store
        self.config = config
        (events, continuation) = AsyncStream.makeStream(of: TimedEvent.self, bufferingPolicy: .unbounded)
        (progressStream, progressToSend) = AsyncStream.makeStream(of: BatchEvent.self, bufferingPolicy: .bufferingNewest(32))
    }

    /// Stops the items being rendered (they return to pending, not charged) and ends the run.
    public nonisolated func shutdown() {
        shuttingDown.store(true, ordering: .relaxed)
    }

    /// Checks the schema, then renders until shut down (or idle, with `exitWhenIdle`).
    public func run() async throws -> Summary {
        defer { continuation.finish() }
        try await ClusterSchema.check(store.database)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await self.reclaimLoop() }
            group.addTask { await self.publishProgress() }
            try await withThrowingTaskGroup(of: Void.self) { slots in
                for (index, device) in config.devices.enumerated() {
                    slots.addTask { try await self.runSlot(index: index, device: device) }
                }
                try await slots.waitForAll()
            }
            group.cancelAll()
        }
        return Summary(rendered: rendered, abandoned: abandoned)
    }

    // MARK: - Slots

    private func runSlot(index: Int, device: String?) async throws {
        let owner = config.devices.count > 1 ? "\(config.name)/\(index)" : config.name
        // Where an item ran, as status shows it: the machine's worker, and its GPU.
        let place = device.map { "\(owner) gpu \($0)" } ?? owner
        let sink = StderrSink()
        var held: Claim?  // claimed for another engine than the one that was running
        var finished = false
        while !finished && !isShuttingDown {
            // The engine is started before anything is claimed, so a slow model load never
            // eats into a lease; the batch's settings say which engine.
            guard let batch = try await batchToRender(), let settings = batch.inputs?.settings, let outputs = batch.outputs else {
                return
            }
            var command: EngineCommand
            do { command = try config.engines.command(for: settings.engine, params: settings.engineParams) } catch {
                if let claim = held {
                    held = nil
                    try await finishFailed(claim, ItemError(kind: .transient, message: "on \(owner): \(error.message)"))
                }
                emit(.warning("\(owner) cannot render the batch: \(error.message)"))
                try await Task.sleep(for: .seconds(5))
                continue
            }
            if let device { command.environment["CUDA_VISIBLE_DEVICES"] = device }
            prepareFolders(outputs)
            do {
                try await EngineWorker.withWorker(command, stderr: sink) { session in
                    while !self.isShuttingDown {
                        let claim: Claim
                        if let waiting = held {
                            claim = waiting
                            held = nil
                        } else {
                            guard let next = try await self.nextClaim(owner: owner, device: place) else {
                                finished = true
                                return
                            }
                            claim = next
                        }
                        guard claim.batch.inputs?.settings.engine == settings.engine,
                              claim.batch.inputs?.settings.engineParams == settings.engineParams else {
                            held = claim  // the settings changed: this engine ends, the next one takes it
                            return
                        }
                        try await self.render(claim, session: session, device: place, sink: sink)
                    }
                }
            } catch SlotEnd.restartEngine {
                continue
            } catch let failure as EngineFailure {
                // The engine could not start, or died between items: an item held for it
                // fails this attempt and returns to the queue by the retry policy.
                if let claim = held {
                    held = nil
                    try await finishFailed(claim, ItemError(kind: .transient, message: "the engine stopped on \(owner): \(failure.message)"))
                }
                if case .startFailed(let message) = failure {
                    emit(.warning("the engine did not start on \(owner): \(message)"))
                    try await Task.sleep(for: .seconds(5))
                }
            }
        }
        if let claim = held {
            // Shut down before it started: back to the queue, not charged.
            var item = claim.item
            try item.state.apply(.stop)
            item.finishedAt = nil
            _ = try await commit(item, lease: claim.lease, event: .itemStopped(key: item.key, name: item.displayName))
        }
    }

    /// The batch as it stands, once one has been submitted; nil when the worker should end
    /// (shut down, or idle with `exitWhenIdle` and no batch).
    private func batchToRender() async throws -> ClusterBatch? {
        while !isShuttingDown {
            let batch = try await store.database.persistently(waiting: outage) { () async throws(ClusterError) in
                try await self.store.batch()
            }
            if batch.inputs != nil && batch.outputs != nil { return batch }
            if config.exitWhenIdle { return nil }
            try await Task.sleep(for: .seconds(config.idlePoll))
        }
        return nil
    }

    /// The next claim, waiting while there is nothing to claim. Nil when the worker should
    /// end: shut down, or idle with `exitWhenIdle`.
    private func nextClaim(owner: String, device: String?) async throws -> Claim? {
        while !isShuttingDown {
            let claim = try await store.database.persistently(waiting: outage) { () async throws(ClusterError) -> Claim? in
                try await self.store.claim(owner: owner, device: device)
            }
            if let claim { return claim }
            if config.exitWhenIdle {
                let open = try await store.database.persistently(waiting: outage) { () async throws(ClusterError) in
                    try await self.store.openWork()
                }
                if open.pending == 0 && open.running == 0 { return nil }
            }
            try await Task.sleep(for: .seconds(config.idlePoll))
        }
        return nil
    }

    /// Whether `shutdown()` was called.
    public nonisolated var isShuttingDown: Bool { shuttingDown.load(ordering: .relaxed) }

    // MARK: - One item

    /// Why a render was cut short from outside.
    private enum Interruption: Sendable {
        case leaseLost, stopRequested, shutdown
    }

    private func render(_ claim: Claim, session: EngineSession, device: String?, sink: StderrSink) async throws {
        guard let inputs = claim.batch.inputs, let outputs = claim.batch.outputs else { return }
        var item = claim.item
        let lease = claim.lease
        let policy = claim.batch.policy
        emit(.itemStarted(key: item.key, name: item.displayName, attempt: item.state.attempts, device: device))
        let started = Date()
        let renderer = ItemRenderer(outputs: outputs, settings: inputs.settings, contactSheets: policy.contactSheets,
                                    itemTimeout: policy.itemTimeout, displayNames: claim.batch.displayNames)

        let audio: (path: String, duration: Double)
        do {
            audio = try await processedAudio(inputs, key: item.key, outputs: outputs, hello: session.hello)
        } catch {
            try await finishFailed(claim, ItemError(kind: .transient, message: (error as? any TalkieError)?.message ?? "\(error)"))
            return
        }
        let logPath = (outputs as NSString).appendingPathComponent(".talkie/logs/\(item.key.id).log")
        sink.redirect(to: logPath)
        defer { sink.redirect(to: nil) }
        let key = item.key
        let store = store
        let engineGroup = session.processGroup
        let (outcome, interruption) = await withTaskGroup(of: Interruption?.self) { group in
            // The watcher ends an interrupted render the way a skip does: it kills the engine.
            group.addTask {
                let reason = await self.watch(lease, stopGeneration: claim.batch.stopGeneration, policy: policy)
                guard !Task.isCancelled else { return nil }
                kill(-engineGroup, SIGKILL)
                return reason
            }
            let outcome = await renderer.render(
                &item, session: session, audio: audio,
                progress: { report in self.progress(key, report) },
                log: { line in ItemRenderer.appendLine(line, to: logPath) },
                beforePublish: { (try? await store.heartbeat(lease)) != .lost })
            group.cancelAll()
            var interruption: Interruption?
            for await reason in group where reason != nil { interruption = reason }
            return (outcome, interruption)
        }
        let result = (outcome, item, interruption)
        let name = renderer.name(of: item)
        switch (result.0, result.2) {
        case (.succeeded(let output, let score), _):
            try item.state.apply(.succeed(output: output, settingsFingerprint: inputs.settings.fingerprint))
            item.score = score
            item.finishedAt = Date()
            item.renderSeconds = Date().timeIntervalSince(started)
            let event = BatchEvent.itemSucceeded(key: key, name: name, output: output, seconds: item.renderSeconds ?? 0, score: score)
            if try await commit(item, lease: lease, event: event) { rendered += 1 }
        case (_, .leaseLost?), (.stopped, nil):
            abandon(item, name: name)
            throw SlotEnd.restartEngine
        case (_, .stopRequested?), (_, .shutdown?):
            try item.state.apply(.stop)
            item.finishedAt = nil
            _ = try await commit(item, lease: lease, event: .itemStopped(key: key, name: name))
            throw SlotEnd.restartEngine
        case (.failed(let error), nil):
            try await finishFailed(item, lease: lease, error: error, policy: policy, name: name)
        case (.workerLost(let error, _), nil):
            try await finishFailed(item, lease: lease, error: error, policy: policy, name: name)
            throw SlotEnd.restartEngine
        }
    }

    /// Heartbeats `lease` until something from outside interrupts the render: the lease is
    /// lost, a stop came, or this worker shuts down. While the database is away it keeps
    /// going: the render goes on and the commit waits for the database.
    private nonisolated func watch(_ lease: Lease, stopGeneration: Int64, policy: ClusterPolicy) async -> Interruption {
        let interval = min(2, max(0.2, policy.leaseSeconds / 3))
        var last = ContinuousClock.now
        while true {
            do { try await Task.sleep(for: .milliseconds(100)) } catch { return .shutdown }
            if isShuttingDown { return .shutdown }
            guard ContinuousClock.now - last >= .seconds(interval) else { continue }
            last = ContinuousClock.now
            switch try? await store.heartbeat(lease) {
            case .lost?: return .leaseLost
            case .held(let generation)? where generation > stopGeneration: return .stopRequested
            default: continue
            }
        }
    }

    private func finishFailed(_ claim: Claim, _ error: ItemError) async throws {
        try await finishFailed(claim.item, lease: claim.lease, error: error, policy: claim.batch.policy, name: claim.item.displayName)
    }

    private func finishFailed(_ item: Item, lease: Lease, error: ItemError, policy: ClusterPolicy, name: String) async throws {
        var item = item
        try item.state.apply(.fail(error))
        item.finishedAt = Date()
        item.renderSeconds = item.startedAt.map { Date().timeIntervalSince($0) }
        let willRetry = policy.retryPolicy.shouldRetry(error.kind, attempts: item.state.attempts)
        var delay = 0.0
        if willRetry {
            try item.state.apply(.retryAutomatically)
            delay = policy.retryPolicy.delay(afterAttempt: item.state.attempts)
        }
        _ = try await commit(item, lease: lease, retryAfter: delay,
                             event: .itemFailed(key: item.key, name: name, error: error, willRetry: willRetry))
    }

    /// Commits under the lease, waiting out a database outage. False (and the item dropped
    /// quietly) when the lease was lost meanwhile.
    private func commit(_ item: Item, lease: Lease, retryAfter: Double = 0, event: BatchEvent) async throws -> Bool {
        let kept = try await store.database.persistently(waiting: outage) { () async throws(ClusterError) -> Bool in
            try await self.store.finish(item, lease: lease, retryAfter: retryAfter, event: event)
        }
        if kept { emit(event) } else { abandon(item, name: item.displayName) }
        return kept
    }

    private func abandon(_ item: Item, name: String) {
        abandoned += 1
        emit(.warning("\(name): this worker's lease was lost (it was presumed dead and the item was taken again); its result is dropped"))
    }

    private func processedAudio(_ inputs: BatchInputs, key: ItemKey, outputs: String, hello: EngineHello) async throws -> (path: String, duration: Double) {
        let settings = inputs.settings
        let name = "\(key.audio.short)-\(settings.fingerprint)-\(hello.audioSampleRate ?? 0)-\(hello.audioChannels ?? 0).wav"
        let output = (outputs as NSString).appendingPathComponent(".talkie/audio/" + name)
        let duration = try await AudioPreprocessor.prepare(audio: inputs.audio, settings: settings, sampleRate: hello.audioSampleRate,
                                                           channels: hello.audioChannels, output: output)
        return (output, duration)
    }

    private nonisolated func prepareFolders(_ outputs: String) {
        for folder in [".talkie/tmp", ".talkie/logs", ".talkie/audio", ".talkie/cache"] {
            try? FileManager.default.createDirectory(atPath: (outputs as NSString).appendingPathComponent(folder),
                                                     withIntermediateDirectories: true)
        }
    }

    // MARK: - Reclaiming and events

    /// Returns expired leases to the queue, every third of a lease.
    private func reclaimLoop() async throws {
        while true {
            let seconds = (try? await store.batch().policy.leaseSeconds) ?? 30
            try await Task.sleep(for: .seconds(min(5, max(0.5, seconds / 3))))
            _ = try? await store.reclaimExpired()
        }
    }

    private func outage(_ error: ClusterError) {
        emit(.warning("\(error.message); rendering goes on, and changes are committed when the database is back"))
    }

    private func emit(_ event: BatchEvent) {
        continuation.yield(TimedEvent(time: Date(), event: event))
    }

    private let lastProgress = Mutex<[ItemKey: Date]>([:])

    /// Progress to every page, at most twice a second per item (a NOTIFY each).
    private nonisolated func progress(_ key: ItemKey, _ report: RenderProgress) {
        let now = Date()
        let send = lastProgress.withLock { last -> Bool in
            if let time = last[key], now.timeIntervalSince(time) < 0.5, report.frame < report.frames { return false }
            last[key] = now
            return true
        }
        guard send else { return }
        continuation.yield(TimedEvent(time: now, event: .itemProgress(key: key, progress: report)))
        progressToSend.yield(.itemProgress(key: key, progress: report))
    }

    /// Sends progress to the cluster's listeners; what the database cannot take now is dropped
    /// (progress is not state).
    private func publishProgress() async {
        for await event in progressStream {
            _ = try? await store.publish(event)
        }
    }
}
