import Foundation
import ServiceLifecycle
import Synchronization
import TalkieCluster
import TalkieCore
import TalkieRunner
import TalkieStore

/// The studio's controller: the uploads, the settings, the one batch that runs at a time
/// (one GPU), the face2face tasks queued behind it, and the live events for every page.
/// HTTP handlers call it; `StudioService` runs its jobs.
public actor Studio {
    enum Job: Sendable {
        case batch(RetryRequest?)
        case face2face(String)
    }

    let config: StudioConfiguration
    let broadcaster = Broadcaster()
    private let library: InputLibrary
    private var settings: RenderSettings
    private var running = false
    private var pausing = false
    private var queuedBatch = false
    private var runner: BatchRunner?
    private var progress: [ItemKey: RenderProgress] = [:]
    private var stateReader = CachedStateReader()
    /// Cluster mode: the items as the database last showed them (refreshed on every event).
    private var clusterItems: [Item] = []
    private var clusterGeneration = 0
    private var encodedState: (state: StudioState, json: Data)?
    let face2face: Face2FaceRegistry
    private var runningFace2Face: String?
    private let jobs: AsyncStream<Job>
    private let jobQueue: AsyncStream<Job>.Continuation
    private let stopper = Mutex<AsyncStream<Void>.Continuation?>(nil)
    /// The batch folder's lock, held for the studio's whole life: a second server or a
    /// `talkie run` on the same workspace is refused, even while no batch runs.
    private let outputsLock: StoreLock

    /// Opens the workspace (creating it if needed), takes its lock, and loads its uploads
    /// and settings. Throws `StoreError.locked` when another talkie holds the workspace.
    public init(_ config: StudioConfiguration) throws {
        self.config = config
        try FileManager.default.createDirectory(atPath: config.outputs, withIntermediateDirectories: true)
        outputsLock = try StoreLock(folder: config.outputs)
        library = try InputLibrary(folder: config.inputs)
        face2face = try Face2FaceRegistry(folder: config.workspace + "/face2face")
        let stored = (try? StateStore.read(folder: config.outputs))?.document.batch?.settings
        let saved = FileManager.default.contents(atPath: config.workspace + "/settings.json")
            .flatMap { try? JSONDecoder().decode(RenderSettings.self, from: $0) }
        settings = saved ?? stored ?? RenderSettings()
        (jobs, jobQueue) = AsyncStream.makeStream(of: Job.self)
        for code in face2face.unfinishedCodes() { jobQueue.yield(.face2face(code)) }
    }

    // MARK: - Jobs (run by StudioService)

    /// Runs queued jobs one at a time until `shutDown()`.
    func processJobs() async {
        for await job in jobs {
            switch job {
            case .batch(let retry):
                queuedBatch = false
                await runBatch(retry: retry)
            case .face2face(let code):
                await runFace2Face(code)
            }
        }
    }

    /// Server shutdown: stop the running item (it returns to pending) and run nothing more.
    nonisolated func shutDown() {
        jobQueue.finish()
        _ = stopper.withLock { $0?.yield() }
    }

    /// Lets another studio or run take the workspace, once this one has shut down and its
    /// jobs have ended (the lock also goes when the process ends, however it ends).
    public nonisolated func releaseWorkspace() {
        outputsLock.release()
    }

    private func runBatch(retry: RetryRequest?) async {
        guard let audio = library.audioPath, !library.videoPaths.isEmpty else { return }
        var configuration = RunConfiguration(outputs: config.outputs, audio: audio, videos: library.videoPaths,
                                             settings: .exactly(settings), retryPolicy: config.retryPolicy,
                                             itemTimeout: config.itemTimeout, retry: retry, engines: config.engines)
        configuration.displayNames = library.displayNames
        configuration.gpus = config.gpus
        configuration.outputsLockHeld = true
        if let cluster = config.cluster {
            await followCluster(cluster, configuration)
        } else {
            _ = await supervise(BatchRunner(configuration, version: "talkie studio"))
        }
    }

    private func runFace2Face(_ code: String) async {
        guard let task = face2face.task(code), !face2face.isFinished(code) else { return }
        runningFace2Face = code
        defer { runningFace2Face = nil }
        var configuration = RunConfiguration(outputs: face2face.outputs(code), audio: task.audio, videos: [task.video],
                                             settings: .exactly(settings), retryPolicy: config.retryPolicy,
                                             itemTimeout: config.itemTimeout, engines: config.engines)
        configuration.gpus = Array(config.gpus.prefix(1))
        let result = await supervise(BatchRunner(configuration, version: "talkie face2face"))
        // A shutdown is not the task's failure: it is queued again at the next start.
        if case .failure(let error) = result, !(error is CancellationError) {
            face2face.recordSetupFailure(code, message: (error as? any TalkieError)?.message ?? "\(error)")
        }
    }

    /// Runs one batch with its events going to every page, until it ends or is stopped.
    private func supervise(_ runner: BatchRunner) async -> Result<BatchSummary, any Error> {
        let (stops, stop) = AsyncStream.makeStream(of: Void.self)
        stopper.withLock { $0 = stop }
        self.runner = runner
        running = true
        publishSnapshot()
        async let relayed: Void = relay(runner.events)
        let result = await BatchSupervisor.run(runner, stopRequests: stops)
        await relayed
        stopper.withLock { $0 = nil }
        self.runner = nil
        running = false
        pausing = false
        progress = [:]
        if case .failure(let error) = result, !(error is CancellationError) {
            let message = (error as? any TalkieError)?.message ?? "\(error)"
            let warning = TimedEvent(time: Date(), event: .warning("the batch could not run: \(message)"))
            broadcaster.publish(eventMessage(warning))
            appendToRunLog(warning)
        }
        publishSnapshot()
        return result
    }

    private func relay(_ events: AsyncStream<TimedEvent>) async {
        for await timed in events {
            let event = timed.event
            forward(timed)
            // The run has reconciled and committed its queue (retries, re-renders, new
            // templates): pages get the batch as it now stands.
            if case .batchStarted = event { publishSnapshot() }
        }
    }

    /// Keeps the live progress of running items and sends the event to every page.
    private func forward(_ timed: TimedEvent) {
        switch timed.event {
        case .itemProgress(let key, let report):
            progress[key] = report
        case .itemSucceeded(let key, _, _, _, _), .itemFailed(let key, _, _, _), .itemStopped(let key, _):
            progress[key] = nil
        default:
            break
        }
        broadcaster.publish(eventMessage(timed))
    }

    private nonisolated func eventMessage(_ event: TimedEvent) -> String {
        "{\"type\":\"event\",\"event\":" + event.jsonLine + "}"
    }

    private func appendToRunLog(_ event: TimedEvent) {
        RunLog(path: config.outputs + "/talkie.log").write(event)
    }

    /// Sends every page the current state.
    func publishSnapshot() {
        broadcaster.publish("{\"type\":\"snapshot\",\"state\":" + String(decoding: stateJSON(), as: UTF8.self) + "}")
    }

    // MARK: - Commands

    /// Queues a batch run (with an optional retry request).
    func start(retry: RetryRequest? = nil) throws(StudioError) {
        guard !running && !queuedBatch else { throw StudioError(409, "batch.running", "the batch is already running; pause or stop it first") }
        guard library.audioPath != nil else { throw StudioError(400, "batch.no_audio", "upload a narration first") }
        guard !library.videoPaths.isEmpty else { throw StudioError(400, "batch.no_videos", "upload at least one template video first") }
        queuedBatch = true
        jobQueue.yield(.batch(retry))
    }

    /// The running items finish, then the run ends.
    func pause() async {
        if let cluster = config.cluster {
            guard running else { return }
            pausing = true
            try? await cluster.setPaused(true)
            publishSnapshot()
            return
        }
        guard let runner else { return }
        pausing = true
        await runner.pause()
        publishSnapshot()
    }

    /// The running item stops now and returns to pending.
    func stop() async {
        if let cluster = config.cluster {
            try? await cluster.stop()
            return
        }
        _ = stopper.withLock { $0?.yield() }
    }

    /// Sets one item aside (see `BatchRunner.skip`); when no batch runs, directly in the store.
    func skip(_ key: ItemKey) async throws -> Bool {
        guard config.cluster == nil else {
            throw StudioError(409, "cluster.unsupported", "setting one item aside is not available in cluster mode yet; stop the batch and remove its template instead")
        }
        if let runner, try await runner.skip(key) { return true }
        guard !running else { return false }
        let store = try StateStore(folder: config.outputs, writtenBy: "talkie studio")
        defer { store.close() }
        var item: Item
        if let stored = store.item(key) {
            item = stored
        } else if key.audio == library.manifest.audio?.key, let entry = library.video(key.video), let audio = library.audioPath {
            item = Item(key: key, names: [library.path(video: entry)], audioPath: audio, createdAt: Date())  // listed, never queued yet
        } else {
            return false
        }
        guard item.state.status == .pending || item.state.status == .running else { return false }
        try item.state.apply(.skip)
        try store.commit([item])
        publishSnapshot()
        return true
    }

    /// Clear history: forgets every item's state; outputs stay.
    func reset() async throws -> Int {
        guard !running else { throw StudioError(409, "batch.running", "stop the batch before clearing its history") }
        if let cluster = config.cluster {
            let count = try await cluster.reset()
            await refreshClusterItems()
            progress = [:]
            publishSnapshot()
            return count
        }
        let store = try StateStore(folder: config.outputs, writtenBy: "talkie studio")
        defer { store.close() }
        let count = store.count
        try store.reset()
        progress = [:]
        publishSnapshot()
        return count
    }

    /// Changes the settings for the next run (what is nil is kept).
    func updateSettings(_ overrides: SettingsOverrides) throws -> RenderSettings {
        guard !running else { throw StudioError(409, "batch.running", "settings can change once the batch is paused or stopped") }
        let next = overrides.applied(to: settings)
        let problems = next.problems()
        guard problems.isEmpty else { throw StudioError(400, "settings.invalid", problems.joined(separator: "; ")) }
        guard EngineCatalog.names.contains(next.engine) else {
            throw StudioError(400, "settings.invalid", "unknown engine '\(next.engine)'; known: \(EngineCatalog.names.joined(separator: ", "))")
        }
        settings = next
        try writeFileDurably(config.workspace + "/settings.json", APIJSON.encode(next))
        publishSnapshot()
        return next
    }

    /// Stores a received upload as the narration or a template.
    func addUpload(_ upload: ReceivedUpload, name: String, isAudio: Bool) throws -> Bool {
        let duplicate = try library.add(upload: upload, name: name, isAudio: isAudio)
        publishSnapshot()
        return duplicate
    }

    /// Removes a template from the batch.
    func removeVideo(_ key: ContentHash) throws -> Bool {
        guard !running else { throw StudioError(409, "batch.running", "stop the batch before removing a template") }
        let removed = try library.removeVideo(key)
        if removed { publishSnapshot() }
        return removed
    }

    /// The file of an uploaded input, by kind and key.
    func inputPath(audio: Bool, key: ContentHash) -> String? {
        if audio { return library.manifest.audio.flatMap { $0.key == key ? library.path(audio: $0) : nil } }
        return library.video(key).map { library.path(video: $0) }
    }

    /// Queues a face2face task.
    func submitFace2Face(code: String, audio: String, video: String) throws(StudioError) {
        if try face2face.submit(code: code, audio: audio, video: video) { jobQueue.yield(.face2face(code)) }
    }

    /// A face2face task's status, with live progress when it is rendering.
    func queryFace2Face(_ code: String) -> Face2FaceRegistry.Status? {
        guard var status = face2face.status(code) else { return nil }
        if runningFace2Face == code, status.status == 1, let live = progress.values.first, live.frames > 0 {
            status.progress = min(99, live.frame * 100 / live.frames)
        }
        return status
    }

    // MARK: - State

    /// The whole state for the page, as the API sends it. Encoding is most of what a request
    /// costs (3 of 5 ms at 100 items), so an unchanged state reuses the last encoding.
    func stateJSON() -> Data {
        let now = state()
        if let encodedState, encodedState.state == now { return encodedState.json }
        let json = APIJSON.encode(now)
        encodedState = (now, json)
        return json
    }

    /// The whole state for the page.
    func state() -> StudioState {
        let stored = config.cluster == nil ? try? stateReader.read(folder: config.outputs) : nil
        let audioKey = library.manifest.audio?.key
        var byKey: [ItemKey: Item] = [:]
        for item in stored?.items ?? clusterItems { byKey[item.key] = item }
        var rows: [StudioState.ItemRow] = []
        var summary = StudioState.Summary()
        let fingerprint = settings.fingerprint  // a JSON encoding: once, not once per row
        if let audioKey {
            // The order the runner renders in: by the names people gave, then by key.
            let entries = library.manifest.videos.sorted { ($0.names.first ?? "", $0.key) < ($1.names.first ?? "", $1.key) }
            for entry in entries {
                let key = ItemKey(video: entry.key, audio: audioKey)
                let item = byKey[key]
                var status = item?.state.status ?? .pending
                // A killed run leaves its item stored as running; with no run, it waits for the next.
                // (In a cluster, running items are workers' and live whether or not this studio follows.)
                if status == .running && !running && config.cluster == nil { status = .pending }
                let output = item?.state.status == .success ? item?.state.output : nil
                rows.append(.init(
                    key: key.id, names: entry.names, status: status.rawValue, attempts: item?.state.attempts ?? 0,
                    error: status == .failed ? item?.state.lastError : nil, output: output,
                    outputUrl: output.map { "/api/outputs/" + urlSegment($0) }, score: item?.score,
                    renderSeconds: item?.renderSeconds,
                    otherSettings: status == .success && item?.state.settingsFingerprint != fingerprint,
                    device: item?.device,
                    progress: status == .running ? progress[key] : nil))
                summary.total += 1
                switch status {
                case .success: summary.succeeded += 1
                case .failed: summary.failed += 1
                case .pending: summary.pending += 1
                case .running: summary.running += 1
                }
            }
        }
        let audio = library.manifest.audio.map {
            StudioState.Input(key: $0.key.hex, name: $0.names.first ?? "narration", size: $0.size, url: "/api/inputs/audio/\($0.key.hex)")
        }
        let videos = library.manifest.videos.map {
            StudioState.Video(key: $0.key.hex, names: $0.names, size: $0.size, url: "/api/inputs/videos/\($0.key.hex)")
        }
        return StudioState(running: running, pausing: pausing, generation: stored?.generation ?? clusterGeneration, engines: EngineCatalog.names,
                           settings: settings, fingerprint: fingerprint, audio: audio, videos: videos,
                           items: rows, summary: summary)
    }
}

extension Studio {
    // MARK: - Cluster mode

    /// Queues the batch in the cluster and follows it until no item runs and nothing more
    /// will start (all done, or paused/stopped). Workers render; events reach pages through
    /// `listenToCluster`.
    private func followCluster(_ cluster: ClusterStore, _ configuration: RunConfiguration) async {
        running = true
        publishSnapshot()
        var policy = ClusterPolicy()
        policy.maxAttempts = config.retryPolicy.maxAttempts
        policy.retryDelay = config.retryPolicy.initialDelay
        policy.itemTimeout = config.itemTimeout
        policy.leaseSeconds = config.leaseSeconds
        do {
            _ = try await ClusterBatchCommands.submit(cluster, config: configuration, policy: policy)
            while !Task.isCancelled {
                await refreshClusterItems()
                publishSnapshot()
                let open = try await cluster.database.persistently { () async throws(ClusterError) in
                    _ = try await cluster.reclaimExpired()
                    return (try await cluster.openWork(), try await cluster.batch().paused)
                }
                if open.0.running == 0 && (open.0.pending == 0 || open.1) { break }
                try await Task.sleep(for: .seconds(1))
            }
        } catch {
            if !(error is CancellationError) {
                let message = (error as? any TalkieError)?.message ?? "\(error)"
                let warning = TimedEvent(time: Date(), event: .warning("the batch could not be queued in the cluster: \(message)"))
                broadcaster.publish(eventMessage(warning))
                appendToRunLog(warning)
            }
        }
        await refreshClusterItems()
        running = false
        pausing = false
        progress = [:]
        publishSnapshot()
    }

    /// Reads the cluster's items for the page (kept as they were while the database is away).
    func refreshClusterItems() async {
        guard let cluster = config.cluster else { return }
        if let items = try? await cluster.items() { clusterItems = items.map(\.item) }
        if let batch = try? await cluster.batch() { clusterGeneration = Int(batch.generation) }
    }

    /// Passes every event of the cluster (whoever caused it: workers, CLI commands, other
    /// studios) to the pages, with a fresh snapshot when an item's state changed.
    func listenToCluster() async {
        guard let cluster = config.cluster else { return }
        await refreshClusterItems()
        let (events, sink) = AsyncStream.makeStream(of: TimedEvent.self)
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                try? await ClusterBatchCommands.listen(cluster, show: { sink.yield($0) }, note: { _ in })
                sink.finish()
            }
            for await timed in events { await clusterEvent(timed) }
            group.cancelAll()
        }
    }

    private func clusterEvent(_ timed: TimedEvent) async {
        forward(timed)
        if case .itemProgress = timed.event { return }
        appendToRunLog(timed)
        await refreshClusterItems()
        publishSnapshot()
    }
}

/// Runs the studio's jobs as a long-lived service; on graceful shutdown (SIGTERM) the
/// running item stops cleanly and returns to pending.
public struct StudioService: Service {
    let studio: Studio

    /// Creates the service for a studio.
    public init(studio: Studio) {
        self.studio = studio
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await studio.listenToCluster() }  // cluster mode only; returns at once otherwise
                await studio.processJobs()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            studio.shutDown()
        }
        await studio.config.cluster?.database.close()
    }
}

extension Studio {
    /// Adds files already on this machine as if they had been uploaded (the demo's inputs).
    public func importFiles(audio: String, videos: [String]) throws {
        for (path, isAudio) in [(audio, true)] + videos.map({ ($0, false) }) {
            let temp = "\(library.uploadFolder)/\(UUID().uuidString).part"
            try FileManager.default.copyItem(atPath: path, toPath: temp)
            let size = Int64((try FileManager.default.attributesOfItem(atPath: temp)[.size] as? NSNumber)?.int64Value ?? 0)
            let upload = ReceivedUpload(path: temp, key: try FileHasher.xxh3(path: temp), size: size)
            _ = try library.add(upload: upload, name: (path as NSString).lastPathComponent, isAudio: isAudio)
        }
        publishSnapshot()
    }

    /// Whether nothing has been uploaded yet.
    public var isEmpty: Bool { library.manifest.audio == nil && library.manifest.videos.isEmpty }
}
