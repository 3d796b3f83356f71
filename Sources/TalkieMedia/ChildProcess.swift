import Glibc
import Synchronization

/// Runs a short-lived program to its end and collects its output (`run`), or starts a
/// long-lived one to talk to line by line (`start`, see `Worker`), built directly on
/// `posix_spawn` and one reader thread per child.
///
/// Why not swift-subprocess: its Linux process monitor (1.0.2) keys its waiters by the pidfd's
/// file-descriptor number and skips registering a pidfd whose number it already knows, so a
/// stale entry for a recycled number can leave a new process unmonitored and its `run` waiting
/// forever. This type only ever waits for the one pid it started (never `waitpid(-1)`), so
/// runs and workers never disturb each other or anything else that starts processes.
///
/// How a run works:
/// - The child gets `/dev/null` as standard input and two pipes as standard output and error.
///   Every descriptor the parent creates is close-on-exec, and the child closes all descriptors
///   above 2 before `exec`, so no other program (ours or swift-subprocess's) inherits a pipe end
///   and holds it open. Signal dispositions and the signal mask are reset to the defaults.
/// - A dedicated thread (not a task: it blocks in `poll`) reads both pipes to their end, keeps
///   at most the limit of each and drains the rest, so a chatty child is never blocked. It also
///   notices the child's exit without reaping it (`waitid` with `WNOWAIT`): when the child has
///   exited but a grandchild it left behind still holds a pipe open, the thread reads for one
///   more second and then stops, so a backgrounded grandchild cannot hang the run.
/// - The awaiting task reaps the child (`waitpid` of that pid) only once `whileRunning` has
///   returned. Until then the exited child stays a zombie, so its pid cannot be reused and a
///   signal `whileRunning` sends to it can never reach an unrelated process.
/// - Cancelling the awaiting task sends the child `SIGKILL`; the run then reaps it and throws
///   `CancellationError`. No zombie is left behind on any path.
public enum ChildProcess {
    /// What a finished run left.
    public struct Result: Sendable, Equatable {
        /// The exit code, or 128 + the signal's number when a signal ended the process
        /// (-1 in the unlikely case that something else in this process reaped it first).
        public var exitCode: Int32
        /// Standard output (at most `outputLimit` bytes of it), decoded as UTF-8.
        public var output: String
        /// Standard error (at most `errorLimit` bytes of it), decoded as UTF-8.
        public var error: String

        /// Creates a result.
        public init(exitCode: Int32, output: String, error: String) {
            self.exitCode = exitCode
            self.output = output
            self.error = error
        }
    }

    /// A program that could not be started at all.
    public struct SpawnError: Error, Sendable, Equatable, CustomStringConvertible {
        /// The executable as it was asked for (a path or a name).
        public var executable: String
        /// The `errno` value behind the failure (`ENOENT`, `EACCES`, ...).
        public var code: Int32
        /// What went wrong, in words.
        public var reason: String

        /// Creates a spawn error.
        public init(executable: String, code: Int32, reason: String) {
            self.executable = executable
            self.code = code
            self.reason = reason
        }

        /// "cannot start `executable`: reason".
        public var description: String { "cannot start \(executable): \(reason)" }
    }

    /// Runs `executable` with `arguments` to its end.
    ///
    /// - Parameters:
    ///   - executable: A path (anything containing `/`), or a name looked up on the `PATH` the
    ///     child will see.
    ///   - arguments: The arguments, without the program's own name.
    ///   - environment: nil to inherit this process's environment; otherwise variables set over
    ///     the inherited environment (a key given here replaces the inherited value).
    ///   - workingDirectory: The child's working directory; nil for this process's.
    ///   - outputLimit: The most bytes of standard output kept; the rest is read and dropped.
    ///   - errorLimit: The most bytes of standard error kept; the rest is read and dropped.
    ///   - whileRunning: Runs while the process does, given its pid (to send it signals). The
    ///     run returns only when both the process has exited and this has returned. If it
    ///     throws, the process is killed (`SIGKILL`), reaped, and the error rethrown.
    /// - Returns: The exit code and the captured output.
    /// - Throws: `SpawnError` when the program cannot be started; `CancellationError` when the
    ///   awaiting task was cancelled (the process is killed and reaped first); whatever
    ///   `whileRunning` throws.
    public static func run(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
        workingDirectory: String? = nil, outputLimit: Int, errorLimit: Int,
        whileRunning: ((pid_t) async throws -> Void)? = nil
    ) async throws -> Result {
        try Task.checkCancellation()
        let spawned = try spawn(executable, arguments, environment: environment, workingDirectory: workingDirectory)
        let monitor = Monitor(pid: spawned.pid)
        do {
            let keeper = Keeper(monitor: monitor, outputLimit: max(0, outputLimit), errorLimit: max(0, errorLimit))
            try startReader(Reader(pid: spawned.pid, output: spawned.output, error: spawned.error, sink: keeper))
        } catch {
            // No thread to read: stop the child, close the pipes and reap it before giving up.
            monitor.kill()
            close(spawned.output)
            close(spawned.error)
            _ = monitor.reap()
            throw SpawnError(executable: executable, code: error.code, reason: "cannot start a reader thread (\(error.reason))")
        }
        return try await withTaskCancellationHandler {
            var failure: (any Error)?
            if let whileRunning {
                do { try await whileRunning(spawned.pid) } catch {
                    failure = error
                    monitor.kill()
                }
            }
            let captured = await monitor.captured()
            let exitCode = monitor.reap()
            if let failure { throw failure }
            if monitor.wasCancelled { throw CancellationError() }
            return Result(exitCode: exitCode, output: String(decoding: captured.output, as: UTF8.self),
                          error: String(decoding: captured.error, as: UTF8.self))
        } onCancel: {
            monitor.cancel()
        }
    }
}

// MARK: - Spawning

extension ChildProcess {
    /// A started child and the parent's ends of its pipes.
    fileprivate struct Spawned {
        var pid: pid_t
        /// The reading end of its standard output.
        var output: Int32
        /// The reading end of its standard error.
        var error: Int32
        /// The writing end of its standard input, or -1 when it reads `/dev/null`.
        var input: Int32
    }

    /// Starts the child: `/dev/null` (or, with `pipeInput`, a pipe) in, pipes out, descriptors
    /// above 2 closed, signals reset; with `newProcessGroup` it leads a process group of its
    /// own (group id = its pid), so signalling `-pid` reaches it and everything it starts.
    fileprivate static func spawn(_ executable: String, _ arguments: [String], environment: [String: String]?,
                                  workingDirectory: String?, pipeInput: Bool = false,
                                  newProcessGroup: Bool = false) throws(SpawnError) -> Spawned {
        func failure(_ code: Int32, _ reason: String? = nil) -> SpawnError {
            SpawnError(executable: executable, code: code, reason: reason ?? describe(code))
        }
        let variables = environment.map { mergedEnvironment($0) }
        let path = try resolve(executable, path: variables?["PATH"] ?? getenv("PATH").map { String(cString: $0) })
        if let workingDirectory {
            var info = stat()
            guard stat(workingDirectory, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
                throw failure(ENOENT, "the working directory \(workingDirectory) does not exist")
            }
        }

        var output: [Int32] = [-1, -1]
        var error: [Int32] = [-1, -1]
        guard makePipe(&output) else { throw failure(errno, "cannot make a pipe (\(describe(errno)))") }
        guard makePipe(&error) else {
            let code = errno
            close(output[0]); close(output[1])
            throw failure(code, "cannot make a pipe (\(describe(code)))")
        }
        var input: [Int32] = [-1, -1]
        guard !pipeInput || makePipe(&input) else {
            let code = errno
            for fd in output + error { close(fd) }
            throw failure(code, "cannot make a pipe (\(describe(code)))")
        }
        func closeAll() { for fd in output + error + input where fd >= 0 { close(fd) } }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var setup = pipeInput
            ? posix_spawn_file_actions_adddup2(&actions, input[0], 0)
            : posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if setup == 0 { setup = posix_spawn_file_actions_adddup2(&actions, output[1], 1) }
        if setup == 0 { setup = posix_spawn_file_actions_adddup2(&actions, error[1], 2) }
        // The originals (close-on-exec anyway) go before exec; 0-2 are the copies.
        for fd in [output[0], output[1], error[0], error[1]] + input where setup == 0 && fd > 2 {
            setup = posix_spawn_file_actions_addclose(&actions, fd)
        }
        if setup == 0, let closeFrom = GNU.addCloseFrom {
            // Descriptors some other code leaked without close-on-exec do not reach the child.
            setup = closeFrom(&actions, 3)
        }
        if setup == 0, let workingDirectory {
            guard let changeDirectory = GNU.addChangeDirectory else {
                closeAll()
                throw failure(ENOSYS, "this C library cannot set a child's working directory")
            }
            setup = changeDirectory(&actions, workingDirectory)
        }
        guard setup == 0 else {
            closeAll()
            throw failure(setup, "cannot prepare the process (\(describe(setup)))")
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Signals this process ignores (SIGPIPE, typically) would stay ignored across exec.
        var defaults = sigset_t()
        sigfillset(&defaults)
        sigdelset(&defaults, SIGKILL)
        sigdelset(&defaults, SIGSTOP)
        var mask = sigset_t()
        sigemptyset(&mask)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &mask)
        var flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
        if newProcessGroup {
            posix_spawnattr_setpgroup(&attributes, 0)  // 0: a new group, led by the child
            flags |= POSIX_SPAWN_SETPGROUP
        }
        posix_spawnattr_setflags(&attributes, Int16(flags))

        var argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let status: Int32
        if let variables {
            var envp: [UnsafeMutablePointer<CChar>?] = variables.map { strdup($0.key + "=" + $0.value) } + [nil]
            defer { for pointer in envp { free(pointer) } }
            status = posix_spawn(&pid, path, &actions, &attributes, &argv, &envp)
        } else {
            status = posix_spawn(&pid, path, &actions, &attributes, &argv, environ)
        }
        guard status == 0 else {
            closeAll()
            throw failure(status)
        }
        close(output[1])
        close(error[1])
        if pipeInput { close(input[0]) }
        return Spawned(pid: pid, output: output[0], error: error[0], input: input[1])
    }

    /// The inherited environment with `overrides` set over it.
    private static func mergedEnvironment(_ overrides: [String: String]) -> [String: String] {
        var variables: [String: String] = [:]
        var cursor = environ
        while let entry = cursor.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                variables[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            cursor += 1
        }
        variables.merge(overrides) { _, new in new }
        return variables
    }

    /// The file to execute: `executable` itself when it names a path, else the first
    /// executable regular file of that name on `path` (as the shell would find it).
    private static func resolve(_ executable: String, path: String?) throws(SpawnError) -> String {
        guard !executable.isEmpty else { throw SpawnError(executable: executable, code: ENOENT, reason: "no executable named") }
        if executable.contains("/") { return executable }
        let search = path ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in search.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = (directory.isEmpty ? "." : String(directory)) + "/" + executable
            var info = stat()
            if stat(candidate, &info) == 0, info.st_mode & S_IFMT == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        throw SpawnError(executable: executable, code: ENOENT, reason: "not found on PATH (\(search))")
    }

    /// A pipe whose two ends are close-on-exec from the start (`pipe2` where the C library has
    /// it, so a program another thread starts at the same moment cannot inherit an end).
    private static func makePipe(_ fds: inout [Int32]) -> Bool {
        if let pipe2 = GNU.pipe2 {
            return fds.withUnsafeMutableBufferPointer { pipe2($0.baseAddress, O_CLOEXEC) } == 0
        }
        guard pipe(&fds) == 0 else { return false }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return true
    }

    /// `strerror` as a Swift string.
    fileprivate static func describe(_ code: Int32) -> String {
        strerror(code).map { String(cString: $0) } ?? "error \(code)"
    }
}

/// GNU extensions the Swift Glibc module does not expose (they sit behind `_GNU_SOURCE`),
/// looked up once at run time; nil where the C library lacks them.
private enum GNU {
    typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32
    typealias AddChangeDirectory = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, UnsafePointer<CChar>?) -> Int32
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32

    /// The running program and the libraries it loaded (the C library among them).
    nonisolated(unsafe) static let handle = dlopen(nil, RTLD_NOW)
    /// `pipe2(fds, flags)`.
    static let pipe2: Pipe2? = symbol("pipe2")
    /// `posix_spawn_file_actions_addchdir_np(actions, path)` (glibc 2.29).
    static let addChangeDirectory: AddChangeDirectory? = symbol("posix_spawn_file_actions_addchdir_np")
    /// `posix_spawn_file_actions_addclosefrom_np(actions, from)` (glibc 2.34).
    static let addCloseFrom: AddCloseFrom? = symbol("posix_spawn_file_actions_addclosefrom_np")

    private static func symbol<Function>(_ name: String) -> Function? {
        dlsym(handle, name).map { unsafeBitCast($0, to: Function.self) }
    }
}

// MARK: - Waiting and reading

extension ChildProcess {
    /// What the reader thread collected.
    fileprivate struct Captured: Sendable {
        var output: [UInt8]
        var error: [UInt8]
    }

    /// The state one run shares between the reader thread, the awaiting task and the
    /// cancellation handler.
    fileprivate final class Monitor: Sendable {
        let pid: pid_t

        private struct State {
            /// Set once the child has been reaped: its pid may belong to another process now.
            var reaped = false
            var cancelled = false
            var captured: Captured?
            var waiter: CheckedContinuation<Captured, Never>?
        }

        private let state = Mutex(State())

        init(pid: pid_t) { self.pid = pid }

        /// Sends the child `SIGKILL` unless it has been reaped (a zombie ignores it).
        func kill() {
            state.withLock { state in
                if !state.reaped { _ = Glibc.kill(pid, SIGKILL) }
            }
        }

        /// Notes that the awaiting task was cancelled, and kills the child.
        func cancel() {
            state.withLock { state in
                state.cancelled = true
                if !state.reaped { _ = Glibc.kill(pid, SIGKILL) }
            }
        }

        /// Whether the awaiting task was cancelled while the run was going.
        var wasCancelled: Bool { state.withLock { $0.cancelled } }

        /// Hands the reader's result to the awaiting task (called once, by the reader thread).
        func deliver(_ captured: Captured) {
            let waiter = state.withLock { state in
                state.captured = captured
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: captured)
        }

        /// Waits for the reader's result: the child has exited (not yet reaped) and the pipes
        /// are read.
        func captured() async -> Captured {
            await withCheckedContinuation { continuation in
                let ready: Captured? = state.withLock { state in
                    if let captured = state.captured { return captured }
                    state.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        }

        /// Reaps the child (waiting for it if it has not exited yet) and decodes its status.
        func reap() -> Int32 {
            state.withLock { state in
                var status: Int32 = 0
                var result: pid_t
                repeat { result = waitpid(pid, &status, 0) } while result < 0 && errno == EINTR
                state.reaped = true
                guard result == pid else { return -1 }
                let signal = status & 0x7f
                return signal == 0 ? (status >> 8) & 0xff : 128 + signal
            }
        }
    }

    /// Where the reader thread puts what it reads (all calls come from that one thread).
    fileprivate protocol ReaderSink: AnyObject {
        /// Bytes read from standard output (`stream` 0) or standard error (1).
        func received(_ bytes: UnsafeRawBufferPointer, from stream: Int)
        /// The stream reached its end, or the reader stopped reading it.
        func ended(_ stream: Int)
        /// Both pipes are done and the child has exited (it is not reaped). Called last, once.
        func finished()
    }

    /// What `run` keeps: at most the limit of each stream, handed to the monitor at the end.
    fileprivate final class Keeper: ReaderSink {
        let monitor: Monitor
        let limits: [Int]
        var kept: [[UInt8]] = [[], []]

        init(monitor: Monitor, outputLimit: Int, errorLimit: Int) {
            self.monitor = monitor
            self.limits = [outputLimit, errorLimit]
        }

        func received(_ bytes: UnsafeRawBufferPointer, from stream: Int) {
            let room = limits[stream] - kept[stream].count
            if room > 0 { kept[stream].append(contentsOf: bytes.prefix(min(room, bytes.count))) }
        }

        func ended(_ stream: Int) {}

        func finished() { monitor.deliver(Captured(output: kept[0], error: kept[1])) }
    }

    /// The reader thread's work: both pipes to their end, then the child's exit.
    fileprivate final class Reader {
        /// How long to keep reading after the child exited while a pipe is still open
        /// (a grandchild holding it).
        static let grace = Duration.seconds(1)
        /// How often to look whether the child exited while its pipes stay quiet.
        static let tick: Int32 = 100

        let pid: pid_t
        let output: Int32
        let error: Int32
        let sink: any ReaderSink

        init(pid: pid_t, output: Int32, error: Int32, sink: any ReaderSink) {
            self.pid = pid
            self.output = output
            self.error = error
            self.sink = sink
        }

        func run() {
            var fds = [pollfd(fd: output, events: Int16(POLLIN), revents: 0), pollfd(fd: error, events: Int16(POLLIN), revents: 0)]
            var exitedAt: ContinuousClock.Instant?
            let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 1)
            defer { chunk.deallocate() }

            reading: while fds.contains(where: { $0.fd >= 0 }) {
                var timeout = Self.tick
                if exitedAt == nil, hasExited(wait: false) { exitedAt = .now }
                if let exitedAt {
                    let left = exitedAt + Self.grace - .now
                    guard left > .zero else { break reading }
                    timeout = min(timeout, Int32((left / .milliseconds(1)).rounded(.up)))
                }
                let ready = poll(&fds, nfds_t(fds.count), timeout)
                if ready < 0 {
                    if errno == EINTR || errno == EAGAIN { continue }
                    break reading
                }
                for index in fds.indices where fds[index].fd >= 0 && fds[index].revents != 0 {
                    let count = read(fds[index].fd, chunk.baseAddress, chunk.count)
                    if count > 0 {
                        sink.received(UnsafeRawBufferPointer(rebasing: chunk[0..<count]), from: index)
                    } else if count == 0 || (errno != EINTR && errno != EAGAIN) {
                        close(fds[index].fd)
                        fds[index].fd = -1
                        sink.ended(index)
                    }
                }
            }
            for index in fds.indices where fds[index].fd >= 0 {
                close(fds[index].fd)
                sink.ended(index)
            }
            if exitedAt == nil { _ = hasExited(wait: true) }
            sink.finished()
        }

        /// Whether the child has exited, leaving it a zombie for the awaiting task to reap.
        /// `wait` blocks until it has.
        private func hasExited(wait: Bool) -> Bool {
            while true {
                var info = siginfo_t()
                let result = waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT | (wait ? 0 : WNOHANG))
                if result == 0 { return wait || info._sifields._sigchld.si_pid != 0 }
                if errno == EINTR { continue }
                return true  // ECHILD: gone already (reaped elsewhere); nothing left to wait for.
            }
        }
    }

    /// Starts the reader on its own detached thread (it blocks in `poll` and `waitid`, which a
    /// task of the cooperative pool must not).
    fileprivate static func startReader(_ reader: Reader) throws(SpawnError) {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        pthread_attr_setstacksize(&attributes, 1 << 20)
        let context = Unmanaged.passRetained(reader).toOpaque()
        var thread = pthread_t()
        let status = pthread_create(&thread, &attributes, { context in
            Unmanaged<Reader>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, context)
        guard status == 0 else {
            Unmanaged<Reader>.fromOpaque(context).release()
            throw SpawnError(executable: "", code: status, reason: describe(status))
        }
    }
}


// MARK: - Long-lived workers

extension ChildProcess {
    /// A long-lived child that reads lines on its standard input and answers with lines on its
    /// standard output (an engine worker), started by `ChildProcess.start`.
    ///
    /// - Standard input is a pipe whose writing end only this process holds (close-on-exec):
    ///   `write` sends text, `closeInput` gives the child its end of input.
    /// - The reader thread splits standard output into `lines` and hands standard error, chunk
    ///   by chunk, to the callback given to `start`. `lines` finishes when standard output reaches
    ///   its end (or about a second after the child exited while a grandchild still holds it).
    /// - `exited()` waits for the child's exit without reaping it; `reap()` reaps it (that pid
    ///   only). Until `reap` the pid, and with `newProcessGroup` the group id, stay the child's,
    ///   so signals sent to them cannot reach an unrelated process. Always call `reap`.
    public final class Worker: Sendable {
        /// The child's pid; with `newProcessGroup`, also its process group's id.
        public let pid: pid_t
        /// Standard output, line by line, without the line break (`\n`, or `\r\n`). Iterate it
        /// from one task only. It throws `LineTooLong` (and ends) when a line exceeds the
        /// limit given to `start`; like any `AsyncThrowingStream` it ends when the iterating
        /// task is cancelled.
        public let lines: AsyncThrowingStream<String, any Error>

        private let input: Mutex<Int32>
        private let state = Mutex(ExitState())

        private struct ExitState {
            var exited = false
            var waiters: [CheckedContinuation<Void, Never>] = []
            var status: Int32?
        }

        fileprivate init(pid: pid_t, input: Int32, lines: AsyncThrowingStream<String, any Error>) {
            self.pid = pid
            self.input = Mutex(input)
            self.lines = lines
        }

        deinit {
            input.withLock { fd in if fd >= 0 { close(fd) } }
        }

        /// Writes `text` to the child's standard input, blocking the calling thread until the
        /// pipe took all of it (meant for short lines). Never raises `SIGPIPE`: a child that
        /// no longer reads its input shows as `WriteError` with `EPIPE`.
        public func write(_ text: String) throws(WriteError) {
            let code: Int32 = input.withLock { fd in
                guard fd >= 0 else { return EBADF }
                var bytes = Array(text.utf8)
                return bytes.withUnsafeMutableBytes { ChildProcess.writeAll(fd, UnsafeRawBufferPointer($0)) }
            }
            if code != 0 { throw WriteError(code: code) }
        }

        /// Closes the child's standard input (it reads end of file). Later writes fail with `EBADF`.
        public func closeInput() {
            input.withLock { fd in
                if fd >= 0 { close(fd) }
                fd = -1
            }
        }

        /// Returns once the child has exited and its pipes are read (it is not reaped yet).
        /// Not cancellable: pair it with a deadline that kills the child.
        public func exited() async {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let done = state.withLock { state in
                    if state.exited { return true }
                    state.waiters.append(continuation)
                    return false
                }
                if done { continuation.resume() }
            }
        }

        /// Waits for the child's exit (`exited()`), reaps it and returns its exit code, or 128 +
        /// the signal that ended it. Calling it again returns the same code.
        @discardableResult
        public func reap() async -> Int32 {
            await exited()
            return state.withLock { state in
                if let status = state.status { return status }
                var status: Int32 = 0
                var result: pid_t
                repeat { result = waitpid(pid, &status, 0) } while result < 0 && errno == EINTR
                let signal = status & 0x7f
                let code: Int32 = result != pid ? -1 : signal == 0 ? (status >> 8) & 0xff : 128 + signal
                state.status = code
                return code
            }
        }

        /// Called by the reader thread once the pipes are done and the child has exited.
        fileprivate func markExited() {
            let waiters = state.withLock { state in
                state.exited = true
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }

    /// A write to a worker's standard input that failed.
    public struct WriteError: Error, Sendable, Equatable, CustomStringConvertible {
        /// The `errno` value: `EPIPE` when the child no longer reads, `EBADF` after `closeInput`.
        public var code: Int32
        /// Creates a write error.
        public init(code: Int32) { self.code = code }
        /// `strerror` of the code.
        public var description: String { ChildProcess.describe(code) }
    }

    /// A worker's output line longer than the limit given to `start`.
    public struct LineTooLong: Error, Sendable, Equatable, CustomStringConvertible {
        /// The limit, in bytes.
        public var limit: Int
        /// Creates the error.
        public init(limit: Int) { self.limit = limit }
        /// "a line of output is longer than N bytes".
        public var description: String { "a line of output is longer than \(limit) bytes" }
    }

    /// Starts a long-lived worker: a pipe as standard input, standard output as `lines`,
    /// standard error handed to `standardError` (on the reader thread, as it arrives).
    ///
    /// - Parameters:
    ///   - executable: A path, or a name looked up on the `PATH` the child will see.
    ///   - arguments: The arguments, without the program's own name.
    ///   - environment: nil to inherit this process's environment; otherwise variables set over
    ///     the inherited environment.
    ///   - workingDirectory: The child's working directory; nil for this process's.
    ///   - newProcessGroup: Whether the child leads a process group of its own (id = its pid).
    ///   - lineLimit: The longest output line accepted, in bytes.
    ///   - standardError: Receives standard error's bytes, chunk by chunk.
    /// - Throws: `SpawnError` when the program cannot be started.
    public static func start(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
        workingDirectory: String? = nil, newProcessGroup: Bool = false, lineLimit: Int = 128 << 10,
        standardError: @escaping @Sendable (UnsafeRawBufferPointer) -> Void
    ) throws(SpawnError) -> Worker {
        let spawned = try spawn(executable, arguments, environment: environment, workingDirectory: workingDirectory,
                                pipeInput: true, newProcessGroup: newProcessGroup)
        let (lines, continuation) = AsyncThrowingStream.makeStream(of: String.self, throwing: (any Error).self)
        let worker = Worker(pid: spawned.pid, input: spawned.input, lines: lines)
        let splitter = LineSplitter(worker: worker, lines: continuation, limit: max(1, lineLimit), error: standardError)
        do {
            try startReader(Reader(pid: spawned.pid, output: spawned.output, error: spawned.error, sink: splitter))
        } catch {
            // No thread to read: stop the child, close the pipes and reap it before giving up.
            _ = kill(spawned.pid, SIGKILL)
            close(spawned.output)
            close(spawned.error)
            worker.closeInput()
            var status: Int32 = 0
            while waitpid(spawned.pid, &status, 0) < 0 && errno == EINTR {}
            continuation.finish()
            throw SpawnError(executable: executable, code: error.code, reason: "cannot start a reader thread (\(error.reason))")
        }
        return worker
    }

    /// A worker's reader sink: standard output split into lines, standard error passed on.
    fileprivate final class LineSplitter: ReaderSink {
        let worker: Worker
        let lines: AsyncThrowingStream<String, any Error>.Continuation
        let limit: Int
        let error: @Sendable (UnsafeRawBufferPointer) -> Void
        /// The start of a line whose end has not come yet.
        var pending: [UInt8] = []
        /// Set once `lines` has finished (end of output, or a line too long): drop the rest.
        var done = false

        init(worker: Worker, lines: AsyncThrowingStream<String, any Error>.Continuation, limit: Int,
             error: @escaping @Sendable (UnsafeRawBufferPointer) -> Void) {
            self.worker = worker
            self.lines = lines
            self.limit = limit
            self.error = error
        }

        func received(_ bytes: UnsafeRawBufferPointer, from stream: Int) {
            guard stream == 0 else { return error(bytes) }
            guard !done else { return }
            var start = 0
            while let newline = bytes[start...].firstIndex(of: 0x0A) {
                pending.append(contentsOf: bytes[start..<newline])
                emit()
                start = newline + 1
            }
            pending.append(contentsOf: bytes[start...])
            if pending.count > limit {
                done = true
                pending = []
                lines.finish(throwing: LineTooLong(limit: limit))
            }
        }

        /// Yields the pending line, without a carriage return before the line feed.
        private func emit() {
            if pending.last == 0x0D { pending.removeLast() }
            if pending.count > limit {
                done = true
                lines.finish(throwing: LineTooLong(limit: limit))
            } else {
                lines.yield(String(decoding: pending, as: UTF8.self))
            }
            pending.removeAll(keepingCapacity: true)
        }

        func ended(_ stream: Int) {
            guard stream == 0, !done else { return }
            if !pending.isEmpty { emit() }
            done = true
            lines.finish()
        }

        func finished() {
            if !done {
                done = true
                lines.finish()
            }
            worker.markExited()
        }
    }

    /// Writes all of `bytes` to `fd` with `SIGPIPE` blocked on this thread (and a `SIGPIPE` the
    /// write raised taken back), so a reader that went away shows as `EPIPE` instead of
    /// killing this process. Returns 0, or the `errno` of the failure.
    fileprivate static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32 {
        var pipeSignal = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        var previous = sigset_t()
        pthread_sigmask(SIG_BLOCK, &pipeSignal, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        var pending = sigset_t()
        sigpending(&pending)
        let alreadyPending = sigismember(&pending, SIGPIPE) == 1

        var offset = 0
        var failure: Int32 = 0
        while offset < bytes.count, let base = bytes.baseAddress {
            let count = Glibc.write(fd, base + offset, bytes.count - offset)
            if count >= 0 {
                offset += count
            } else if errno != EINTR {
                failure = errno
                break
            }
        }
        if failure == EPIPE, !alreadyPending {
            // The signal the failed write raised (none when SIGPIPE is ignored): take it back.
            var now = timespec(tv_sec: 0, tv_nsec: 0)
            while sigtimedwait(&pipeSignal, nil, &now) < 0 && errno == EINTR {}
        }
        return failure
    }
}
