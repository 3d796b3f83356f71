import Foundation
import Synchronization
import TalkieCore
import TalkieMedia

/// How to start an engine worker.
public struct EngineCommand: Sendable, Equatable {
    /// The program (absolute path, or a name looked up on PATH).
    public var executable: String
    /// Its arguments.
    public var arguments: [String]
    /// Variables added to the inherited environment.
    public var environment: [String: String]

    /// Creates an engine command.
    public init(executable: String, arguments: [String] = [], environment: [String: String] = [:]) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
    }

    /// The command as a person would type it.
    public var displayString: String { ([executable] + arguments).joined(separator: " ") }
}

/// Why a worker could not finish an item; after any of these the worker is gone.
public enum EngineFailure: TalkieError, Equatable {
    /// The worker could not start, or said `fatal` in its handshake.
    case startFailed(String)
    /// The worker exited or crashed.
    case crashed(String)
    /// No answer before the item's deadline; the process group was killed.
    case timedOut(seconds: Double)
    /// The worker wrote something that is not a protocol message.
    case protocolViolation(String)

    public var code: String {
        switch self {
        case .startFailed: "engine.start_failed"
        case .crashed: "engine.crashed"
        case .timedOut: "engine.timed_out"
        case .protocolViolation: "engine.protocol_violation"
        }
    }

    public var message: String {
        switch self {
        case .startFailed(let detail): "the engine could not start: \(detail)"
        case .crashed(let detail): "the engine worker died during the item (\(detail)); it is restarted for the next item"
        case .timedOut(let seconds): String(format: "the engine did not finish within %.0f s; it was stopped and restarted", seconds)
        case .protocolViolation(let line): "the engine wrote something that is not a protocol message: \(line.prefix(200))"
        }
    }
}

/// How an item ended on a live worker.
public enum RenderOutcome: Sendable, Equatable {
    /// The worker says the output is written.
    case done(frames: Int?, score: Double?)
    /// The worker reports a failure of this item; the worker itself is fine.
    case failed(ItemError)
    /// The task was cancelled (the user stopped the run); the worker was killed.
    case stopped
}

/// Where a worker's stderr goes: the log of the item being rendered, switched per item.
public final class StderrSink: Sendable {
    private let handle = Mutex<FileHandle?>(nil)

    /// Creates a sink that drops everything until `redirect(to:)`.
    public init() {}

    /// Sends what follows to the file at `path` (appending; created if needed), or nowhere.
    public func redirect(to path: String?) {
        var next: FileHandle?
        if let path {
            if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
            next = FileHandle(forWritingAtPath: path)
            _ = try? next?.seekToEnd()
        }
        handle.withLock { current in
            try? current?.close()
            current = next
        }
    }

    /// Appends bytes to the current file.
    func write(_ data: Data) {
        handle.withLock { current in try? current?.write(contentsOf: data) }
    }
}

/// A live worker process: handshake done, ready for render requests, one at a time.
public final class EngineSession {
    /// What the worker said in its handshake.
    public let hello: EngineHello
    private var lines: AsyncThrowingStream<String, any Error>.Iterator
    private let worker: ChildProcess.Worker
    /// The worker's process group (its pid): signalling it reaches the worker and its children.
    public let processGroup: pid_t

    init(hello: EngineHello, lines: AsyncThrowingStream<String, any Error>.Iterator, worker: ChildProcess.Worker) {
        self.hello = hello
        self.lines = lines
        self.worker = worker
        self.processGroup = worker.pid
    }

    /// Renders one item. `progress` is called with each progress report, `log` with engine log
    /// lines, both from whatever thread reads the worker's output (hence `@Sendable`).
    /// Cancellation of the calling task kills the worker and returns `.stopped`.
    public func render(_ job: RenderJob, timeout: Double, progress: @Sendable (RenderProgress) -> Void,
                       log: @Sendable (String) -> Void) async throws(EngineFailure) -> RenderOutcome {
        do {
            try worker.write(job.line)
        } catch {
            throw .crashed("it no longer reads its input")
        }
        let group = processGroup
        let timedOut = Flag()
        let result: Result<RenderOutcome, EngineFailure> = await withTaskGroup(of: Void.self) { watchdog in
            watchdog.addTask {
                // The watchdog: past the deadline, kill the whole group; the read below then ends.
                try? await Task.sleep(for: .seconds(timeout))
                if !Task.isCancelled {
                    timedOut.set()
                    kill(-group, SIGKILL)
                }
            }
            defer { watchdog.cancelAll() }
            return await withTaskCancellationHandler {
                do {
                    while let line = try await lines.next(isolation: nil) {
                        guard let message = WorkerMessage(line: line) else {
                            kill(-group, SIGKILL)
                            return .failure(.protocolViolation(line))
                        }
                        switch message {
                        case .progress(let id, let report) where id == job.id:
                            progress(report)
                        case .done(let id, let frames, let score) where id == job.id:
                            return .success(.done(frames: frames, score: score))
                        case .error(let id, let error) where id == job.id:
                            return .success(.failed(error))
                        case .log(_, let level, let text):
                            log("\(level): \(text)")
                        case .hello, .fatal:
                            kill(-group, SIGKILL)
                            return .failure(.protocolViolation(line))
                        default:
                            continue
                        }
                    }
                } catch {
                    kill(-group, SIGKILL)
                    return .failure(.protocolViolation("unreadable output (\(error))"))
                }
                if Task.isCancelled { return .success(.stopped) }
                if timedOut.isSet { return .failure(.timedOut(seconds: timeout)) }
                return .failure(.crashed("it exited; its last words are in the item's log"))
            } onCancel: {
                kill(-group, SIGKILL)
            }
        }
        return try result.get()
    }
}

/// Starts and supervises engine workers.
public enum EngineWorker {
    /// Starts `command` in its own process group, waits for its handshake (at most
    /// `handshakeTimeout` seconds), runs `body` with the live session, then asks the worker
    /// to shut down and kills its process group if it has not exited 10 s later. No
    /// process of the worker's group outlives this call.
    public static func withWorker<Result: Sendable>(
        _ command: EngineCommand, stderr sink: StderrSink, handshakeTimeout: Double = 120,
        body: (EngineSession) async throws -> Result
    ) async throws -> Result {
        let worker: ChildProcess.Worker
        do {
            worker = try ChildProcess.start(command.executable, command.arguments, environment: command.environment,
                                            newProcessGroup: true) { chunk in sink.write(Data(chunk)) }
        } catch {
            throw EngineFailure.startFailed("cannot run \(command.displayString): \(error.reason)")
        }
        let group = worker.pid
        let result: Result
        do {
            var lines = worker.lines.makeAsyncIterator()
            let hello = try await handshake(&lines, group: group, timeout: handshakeTimeout, command: command)
            result = try await body(EngineSession(hello: hello, lines: lines, worker: worker))
        } catch {
            await finish(worker)
            throw error
        }
        try? worker.write("{\"type\":\"shutdown\"}\n")
        worker.closeInput()
        // The worker gets 10 s to exit (none when the caller is cancelled: the run is stopping);
        // the deadline's task ends before the reap below, so it never signals a reused group id.
        let exited = Flag()
        await withTaskGroup(of: Void.self) { deadline in
            deadline.addTask {
                try? await Task.sleep(for: .seconds(10))
                if !exited.isSet { kill(-group, SIGKILL) }
            }
            await worker.exited()
            exited.set()
            deadline.cancelAll()
        }
        await finish(worker)
        return result
    }

    /// Kills what is left of the worker's group (such as an orphaned ffmpeg), then reaps the
    /// worker. The group id stays the worker's until the reap, so the kill cannot go astray.
    private static func finish(_ worker: ChildProcess.Worker) async {
        kill(-worker.pid, SIGKILL)
        await worker.reap()
    }

    private static func handshake(_ lines: inout AsyncThrowingStream<String, any Error>.Iterator,
                                  group: pid_t, timeout: Double, command: EngineCommand) async throws -> EngineHello {
        let expired = Flag()
        return try await withThrowingTaskGroup(of: Void.self) { watchdog in
            watchdog.addTask {
                try? await Task.sleep(for: .seconds(timeout))
                if !Task.isCancelled {
                    expired.set()
                    kill(-group, SIGKILL)
                }
            }
            defer { watchdog.cancelAll() }
            let next: String?
            do {
                next = try await lines.next(isolation: nil)
            } catch {
                throw EngineFailure.startFailed("cannot run \(command.displayString): \(error)")
            }
            guard let line = next else {
                // Cancellation ends the line stream too; the caller kills the worker.
                try Task.checkCancellation()
                if expired.isSet {
                    throw EngineFailure.startFailed(String(format: "no handshake within %.0f s", timeout))
                }
                throw EngineFailure.startFailed("the worker exited before its handshake (see the run log for its error output)")
            }
            switch WorkerMessage(line: line) {
            case .hello(let hello): return hello
            case .fatal(let message): throw EngineFailure.startFailed(message)
            default:
                kill(-group, SIGKILL)
                throw EngineFailure.startFailed("its first line is not a handshake: \(line.prefix(200))")
            }
        }
    }
}

/// A flag one task raises and another reads.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .sequentiallyConsistent) }
    var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
}
