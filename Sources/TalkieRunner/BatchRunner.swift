import Foundation
import Synchronization
import TalkieCore
import TalkieEngine
import TalkieMedia
import TalkieStore

/// Runs a batch: reconciles the inputs with the stored state, renders what is not done on
/// `slots` engine workers, commits every change durably before reporting it, and ends with a
/// compacted snapshot. The only writer of the state.
///
/// Stop = cancel the task that awaits `run()`: the running items return to pending.
/// Pause = `pause()`: running items finish, then the run ends.
public actor BatchRunner {
    /// The events of this run, in order; finished when the run ends.
    public nonisolated let events: AsyncStream<TimedEvent>
    private let continuation: AsyncStream<TimedEvent>.Continuation
    private let config: RunConfiguration
    private let version: String

    private var store: StateStore?
    private var runLog: RunLog?
    private var queue: [ItemKey] = []
    private var notBefore: [ItemKey: Date] = [:]
    private var batchKeys: [ItemKey] = []
    private var pauseRequested = false
    private var renderedThisRun = 0
    private var audioPath = ""
    private var audioDuration = 0.0
    private var settings = RenderSettings()
    /// The last progress event sent per item. Not actor state: progress arrives from the
    /// thread that reads a worker's output, for several slots at once.
    private let lastProgress = Mutex<[ItemKey: (Date, RenderProgress)]>([:])
    private var activeGroups: [ItemKey: pid_t] = [:]
    private var skipRequested: Set<ItemKey> = []

    /// Creates a runner; nothing happens until `run()`.
    public init(_ config: RunConfiguration, version: String = "talkie") {
        self.config = config
        self.version = version
        (events, continuation) = AsyncStream.makeStream(of: TimedEvent.self, bufferingPolicy: .unbounded)
    }

    /// Finish the items being rendered, then end the run.
    public func pause() {
        pauseRequested = true
    }

    /// Sets one item aside: a queued item leaves the queue, a running one is stopped now
    /// (its worker is restarted for the next item). Either way it is failed with kind
    /// `input` ("skipped by the user"), so it is not retried automatically. Returns false
    /// when this run does not know the item.
    @discardableResult
    public func skip(_ key: ItemKey) throws -> Bool {
        guard let store, var item = store.item(key) else { return false }
        if let index = queue.firstIndex(of: key) {
            queue.remove(at: index)
            try item.state.apply(.skip)
            try store.commit([item])
            emit(.itemFailed(key: key, name: name(of: item), error: item.state.lastError!, willRetry: false))
            return true
        }
        if let group = activeGroups[key] {
            skipRequested.insert(key)
            kill(-group, SIGKILL)
            return true
        }
        return false
    }

    /// Runs the batch to its end (or to a pause, a stop, or a fatal error).
    public func run() async throws -> BatchSummary {
        defer { continuation.finish() }
        let outputs = config.outputs
        try prepareFolder(outputs)
        let lock = config.outputsLockHeld ? nil : try StoreLock(folder: outputs)
        defer { lock?.release() }
        sweepTemporaryFiles()
        let store = try StateStore(folder: outputs, writtenBy: version)
        self.store = store
        defer { store.close() }
        let runLog = RunLog(path: path("talkie.log"))
        self.runLog = runLog
        for note in store.recovery.notes { emit(.warning(note)) }

        // Inputs and settings: given now, or those of the stored batch.
        let (audio, sources, resolvedSettings) = try config.resolvedInputs(stored: store.batch, where: outputs)
        settings = resolvedSettings
        let engineCommand = try config.engines.command(for: settings.engine, params: settings.engineParams)
        audioPath = URL(fileURLWithPath: audio).standardizedFileURL.path
        var audioIsFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: audioPath, isDirectory: &audioIsFolder), audioIsFolder.boolValue {
            throw RunSetupError(code: "input.not_a_file", message: "the narration \(audio) is a folder; --audio needs one audio file (wav, mp3, m4a, ...)")
        }
        guard FileManager.default.isReadableFile(atPath: audioPath) else {
            throw RunSetupError(code: "input.missing", message: "the narration \(audio) does not exist or cannot be read")
        }

        // Identity: hash the narration and every template (cached by inode/size/mtime).
        let cache = HashCache(path: path(".talkie/hash-cache.json"))
        let audioHash = try cache.hash(path: audioPath)
        let scan = try InputScanner.scan(sources, exclude: outputs)
        for warning in scan.warnings { emit(.warning(warning)) }
        var inputs: [Reconciler.Input] = []
        for video in scan.paths {
            do { inputs.append(.init(path: video, hash: try cache.hash(path: video))) } catch {
                emit(.warning("a template was skipped: \(error.message)"))
            }
        }

        var stored = store.itemsByKey
        var imported: [Item] = []
        if !store.recovery.legacy.isEmpty {
            imported += importLegacy(store.recovery.legacy, inputs: inputs, audio: audioHash, cache: cache, stored: stored)
        }
        if store.recovery.needsRebuild || store.recovery.source == .fresh {
            imported += await rebuildFromOutputs(stored: stored)
        }
        for item in imported { stored[item.key] = item }

        var reconciler = Reconciler(audio: audioHash, audioPath: audioPath, settingsFingerprint: settings.fingerprint,
                                    maxAttempts: config.retryPolicy.maxAttempts, retry: config.retry)
        reconciler.displayNames = config.displayNames
        let plan = reconciler.plan(stored: stored, inputs: inputs, now: Date()) { output in
            FileManager.default.fileExists(atPath: self.path(output))
        }
        let changed = Dictionary((imported + plan.changed).map { ($0.key, $0) }, uniquingKeysWith: { _, new in new })
        let batchInputs = BatchInputs(audio: audioPath, videos: sources, settings: settings)
        if !changed.isEmpty || store.batch != batchInputs {
            try store.commit(Array(changed.values), batch: batchInputs)
        }
        if !imported.isEmpty { try store.compact() }
        try? cache.save(keeping: Set(inputs.map(\.path) + [audioPath]))
        for note in plan.notes { emit(.warning(note)) }

        batchKeys = plan.batch
        queue = plan.batch.filter { store.item($0)?.state.status == .pending }
        emit(.batchStarted(total: batchKeys.count, toRender: queue.count, settings: settings.summary))
        for key in queue { emit(.itemQueued(key: key, name: store.item(key).map { name(of: $0) } ?? key.short)) }

        var interrupted = false
        if !queue.isEmpty {
            do {
                audioDuration = try await narrationDuration(audio)
                if audioDuration > 3600 {
                    emit(.warning("the narration is \(Self.clock(audioDuration)) long: every template becomes a video that long, "
                                  + "which can take many hours per item (each may run up to \(Self.clock(config.timeout(forDuration: audioDuration)))); "
                                  + "stop now (Ctrl-C) and cut the narration if that is not what you meant"))
                }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for gpu in config.workerDevices {
                        group.addTask { try await self.runSlot(engineCommand, gpu: gpu, audioHash: audioHash) }
                    }
                    try await group.waitForAll()
                }
            } catch is CancellationError {
                interrupted = true
            }
            if Task.isCancelled { interrupted = true }
        }
        try store.compactIfBehind()
        let summary = summarize(interrupted: interrupted || pauseRequested && !queue.isEmpty)
        emit(.batchFinished(summary))
        return summary
    }

    /// Seconds as H:MM:SS.
    static func clock(_ seconds: Double) -> String {
        let total = Int(seconds.rounded())
        return String(format: "%d:%02d:%02d", total / 3600, total % 3600 / 60, total % 60)
    }

    /// The narration's duration, or a setup error saying why it is unusable. A stop that
    /// arrives while it is probed is a stop, not a bad narration.
    private func narrationDuration(_ given: String) async throws -> Double {
        do {
            return try MediaProbe.validateAudio(try await MediaProbe.probe(audioPath), path: given)
        } catch {
            try Task.checkCancellation()
            throw RunSetupError(code: error.code, message: "the narration \(given) is not usable: \(error.message)")
        }
    }

    // MARK: - Slots

    /// One engine worker's loop: start it (on its own GPU when `gpu` is given), render items
    /// until the queue is empty, restart it after it crashed or was killed. A worker that
    /// dies takes only its own item down; the other slots go on.
    private func runSlot(_ command: EngineCommand, gpu: String?, audioHash: ContentHash) async throws {
        var command = command
        if let gpu { command.environment["CUDA_VISIBLE_DEVICES"] = gpu }
        let sink = StderrSink()
        while hasWork() {
            do {
                try await EngineWorker.withWorker(command, stderr: sink) { session in
                    let processed = try await self.processedAudio(for: session.hello, audioHash: audioHash)
                    let device = gpu.map { "gpu \($0)" } ?? session.hello.device
                    while let key = try await self.nextItem() {
                        try await self.render(key, session: session, device: device, audio: processed, sink: sink)
                    }
                }
            } catch let failure as EngineFailure {
                if case .startFailed = failure { throw RunSetupError(code: failure.code, message: failure.message) }
                // The item already recorded the failure; the loop starts a fresh worker.
            }
            try Task.checkCancellation()
        }
    }

    private func hasWork() -> Bool { !queue.isEmpty && !pauseRequested && !Task.isCancelled }

    /// The next item to render, waiting for a retry's backoff when only delayed items remain.
    private func nextItem() async throws -> ItemKey? {
        while true {
            try Task.checkCancellation()
            if pauseRequested || queue.isEmpty { return nil }
            let now = Date()
            if let index = queue.firstIndex(where: { (notBefore[$0] ?? .distantPast) <= now }) {
                return queue.remove(at: index)
            }
            let wake = queue.compactMap { notBefore[$0] }.min() ?? now
            try await Task.sleep(for: .seconds(max(0.01, wake.timeIntervalSince(now))))
        }
    }

    private func processedAudio(for hello: EngineHello, audioHash: ContentHash) async throws -> (path: String, duration: Double) {
        let name = "\(audioHash.short)-\(settings.fingerprint)-\(hello.audioSampleRate ?? 0)-\(hello.audioChannels ?? 0).wav"
        let output = path(".talkie/audio/" + name)
        do {
            let duration = try await AudioPreprocessor.prepare(audio: audioPath, settings: settings, sampleRate: hello.audioSampleRate,
                                                               channels: hello.audioChannels, output: output)
            return (output, duration)
        } catch {
            try Task.checkCancellation()
            throw RunSetupError(code: error.code, message: error.message)
        }
    }

    // MARK: - One item

    private func render(_ key: ItemKey, session: EngineSession, device: String?, audio: (path: String, duration: Double),
                        sink: StderrSink) async throws {
        guard let store, var item = store.item(key) else { return }
        try item.state.apply(.start)
        item.startedAt = Date()
        item.finishedAt = nil
        item.device = device
        try store.commit([item])
        emit(.itemStarted(key: key, name: name(of: item), attempt: item.state.attempts, device: device))
        let started = Date()

        let logPath = path(".talkie/logs/\(key.id).log")
        sink.redirect(to: logPath)
        defer { sink.redirect(to: nil) }
        activeGroups[key] = session.processGroup
        defer { activeGroups[key] = nil }
        let outcome = await renderer.render(&item, session: session, audio: audio,
                                            progress: { report in self.progress(key, report) },
                                            log: { line in ItemRenderer.appendLine(line, to: logPath) })
        switch outcome {
        case .stopped:
            try stop(&item)
            throw CancellationError()
        case .failed(let error):
            try fail(&item, error)
        case .workerLost(let error, let cause):
            if skipRequested.remove(key) != nil {
                try item.state.apply(.skip)
                item.finishedAt = Date()
                try store.commit([item])
                emit(.itemFailed(key: key, name: name(of: item), error: item.state.lastError!, willRetry: false))
            } else {
                try fail(&item, error)
            }
            throw cause
        case .succeeded(let outputFile, let score):
            try item.state.apply(.succeed(output: outputFile, settingsFingerprint: settings.fingerprint))
            item.score = score
            item.finishedAt = Date()
            item.renderSeconds = Date().timeIntervalSince(started)
            try store.commit([item])
            renderedThisRun += 1
            emit(.itemSucceeded(key: key, name: name(of: item), output: outputFile, seconds: item.renderSeconds ?? 0, score: score))
        }
    }

    private func fail(_ item: inout Item, _ error: ItemError) throws {
        guard let store else { return }
        try item.state.apply(.fail(error))
        item.finishedAt = Date()
        item.renderSeconds = item.startedAt.map { Date().timeIntervalSince($0) }
        let willRetry = config.retryPolicy.shouldRetry(error.kind, attempts: item.state.attempts)
        if willRetry {
            try item.state.apply(.retryAutomatically)
            notBefore[item.key] = Date().addingTimeInterval(config.retryPolicy.delay(afterAttempt: item.state.attempts))
            queue.append(item.key)
        }
        try store.commit([item])
        emit(.itemFailed(key: item.key, name: name(of: item), error: error, willRetry: willRetry))
    }

    private func stop(_ item: inout Item) throws {
        guard let store else { return }
        try item.state.apply(.stop)
        item.finishedAt = nil
        try store.commit([item])
        queue.insert(item.key, at: 0)
        emit(.itemStopped(key: item.key, name: name(of: item)))
    }

    /// Renders items with this run's settings.
    private var renderer: ItemRenderer {
        ItemRenderer(outputs: config.outputs, settings: settings, contactSheets: config.contactSheets,
                     itemTimeout: config.itemTimeout, displayNames: config.displayNames)
    }

    /// What a person calls an item: the name it was uploaded under, else its file name.
    private func name(of item: Item) -> String { renderer.name(of: item) }

    // MARK: - Recovery helpers

    /// Successes of a state file written by the seed's design, matched to the inputs by MD5.
    private func importLegacy(_ legacy: [String: LegacyEntry], inputs: [Reconciler.Input], audio: ContentHash,
                              cache: HashCache, stored: [ItemKey: Item]) -> [Item] {
        var imported: [Item] = []
        for input in inputs {
            guard let md5 = try? cache.md5(path: input.path), let entry = legacy[md5], entry.isSuccess else { continue }
            let key = ItemKey(video: input.hash, audio: audio)
            guard stored[key]?.state.status != .success, !imported.contains(where: { $0.key == key }) else { continue }
            guard let output = entry.output.map({ URL(fileURLWithPath: $0, relativeTo: URL(fileURLWithPath: config.outputs + "/")).path }),
                  FileManager.default.fileExists(atPath: output) else {
                emit(.warning("the older tool's success for \((input.path as NSString).lastPathComponent) names no output that exists; it is rendered again"))
                continue
            }
            var item = Item(key: key, names: [input.path], audioPath: audioPath, createdAt: Date())
            item.state = ItemState(status: .success, attempts: 1, output: relativeOutput(output), settingsFingerprint: "legacy")
            imported.append(item)
        }
        emit(.warning("imported \(imported.count) finished items from the older tool's task_status.json (its copy is kept beside it)"))
        return imported
    }

    /// Successes recovered from the metadata every output carries.
    private func rebuildFromOutputs(stored: [ItemKey: Item]) async -> [Item] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: config.outputs) else { return [] }
        var rebuilt: [Item] = []
        for name in names.sorted() where name.hasSuffix(".mp4") {
            guard let info = try? await MediaProbe.probe(path(name)), let tags = OutputTags(info),
                  let key = ItemKey(id: tags.itemKey), stored[key]?.state.status != .success,
                  info.video != nil, info.hasAudio else { continue }
            var item = stored[key] ?? Item(key: key, names: [], audioPath: audioPath, createdAt: Date())
            item.state = ItemState(status: .success, attempts: max(1, item.state.attempts), output: name,
                                   settingsFingerprint: tags.settingsFingerprint)
            rebuilt.append(item)
        }
        if !rebuilt.isEmpty { emit(.warning("recovered \(rebuilt.count) finished items from the metadata of the files in \(config.outputs)")) }
        return rebuilt
    }

    private func relativeOutput(_ absolute: String) -> String {
        let base = URL(fileURLWithPath: config.outputs).standardizedFileURL.path + "/"
        return absolute.hasPrefix(base) ? String(absolute.dropFirst(base.count)) : absolute
    }

    // MARK: - Events

    private func emit(_ event: BatchEvent) {
        let timed = TimedEvent(time: Date(), event: event)
        runLog?.write(timed)
        continuation.yield(timed)
    }

    /// Progress, at most ten events a second per item; a new stage is always shown.
    private nonisolated func progress(_ key: ItemKey, _ report: RenderProgress) {
        let now = Date()
        let send = lastProgress.withLock { last -> Bool in
            if let (time, previous) = last[key], now.timeIntervalSince(time) < 0.1, report.frame < report.frames,
               previous.stage == report.stage { return false }
            last[key] = (now, report)
            return true
        }
        if send { continuation.yield(TimedEvent(time: now, event: .itemProgress(key: key, progress: report))) }
    }

    private func summarize(interrupted: Bool) -> BatchSummary {
        var summary = BatchSummary(total: batchKeys.count, succeeded: 0, failed: 0, pending: 0,
                                   renderedThisRun: renderedThisRun, interrupted: interrupted)
        for key in batchKeys {
            switch store?.item(key)?.state.status {
            case .success: summary.succeeded += 1
            case .failed: summary.failed += 1
            default: summary.pending += 1
            }
        }
        return summary
    }

    private func prepareFolder(_ outputs: String) throws {
        for folder in [outputs, path(".talkie"), path(".talkie/tmp"), path(".talkie/logs"), path(".talkie/audio"), path(".talkie/cache")] {
            let created = missingFolders(folder)
            do { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) } catch {
                throw RunSetupError(code: "workspace.unusable", message: "cannot create \(folder): \(error.localizedDescription); choose a writable --out folder")
            }
            // A new folder's name lives in its parent: fsync the parent, or a power cut can take
            // the folder away with the state and the outputs later made durable inside it.
            for new in created {
                let parentPath = (new as NSString).deletingLastPathComponent
                let parent = open(parentPath.isEmpty ? "." : parentPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                guard parent >= 0 else { continue }
                defer { close(parent) }
                guard fsync(parent) == 0 else {
                    throw RunSetupError(code: "workspace.unusable", message: "the disk did not confirm the new folder \(new) (\(String(cString: strerror(errno)))); check the disk")
                }
            }
        }
        guard access(outputs, W_OK) == 0 else {
            throw RunSetupError(code: "workspace.unusable", message: "\(outputs) is not writable; choose another --out folder or fix its permissions")
        }
    }

    /// `folder` and those of its ancestors that do not exist yet, outermost first.
    private func missingFolders(_ folder: String) -> [String] {
        var missing: [String] = []
        var current = (folder as NSString).standardizingPath
        while !current.isEmpty, current != "/", !FileManager.default.fileExists(atPath: current) {
            missing.insert(current, at: 0)
            current = (current as NSString).deletingLastPathComponent
        }
        return missing
    }

    /// Engine leftovers of a run that died are never reused. Only with the lock held: the
    /// files may be another live run's.
    private func sweepTemporaryFiles() {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: path(".talkie/tmp"))) ?? [] {
            unlink(path(".talkie/tmp/" + name))
        }
        // narrations a killed run was preparing
        for name in (try? FileManager.default.contentsOfDirectory(atPath: path(".talkie/audio"))) ?? [] where name.contains(".tmp-") {
            unlink(path(".talkie/audio/" + name))
        }
    }

    private nonisolated func path(_ relative: String) -> String {
        (config.outputs as NSString).appendingPathComponent(relative)
    }
}
