import Glibc
import Synchronization

/// Runs a short-lived program to its end and collects its output, built directly on
/// `posix_spawn` and one reader thread per run.
///
/// Why not swift-subprocess: its Linux process monitor (1.0.2) keys its waiters by the pidfd's
/// file-descriptor number and skips registering a pidfd whose number it already knows, so a
/// stale entry for a recycled number can leave a new process unmonitored and its `run` waiting
/// forever. Long-lived engine workers still run on swift-subprocess; this type never disturbs
/// them because it only ever waits for the one pid it started (never `waitpid(-1)`).
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
            try startReader(Reader(monitor: monitor, output: spawned.output, error: spawned.error,
                                   outputLimit: max(0, outputLimit), errorLimit: max(0, errorLimit)))
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
    /// A started child and the parent's (reading) ends of its output pipes.
    fileprivate struct Spawned {
        var pid: pid_t
        var output: Int32
        var error: Int32
    }

    /// Starts the child: `/dev/null` in, pipes out, descriptors above 2 closed, signals reset.
    fileprivate static func spawn(_ executable: String, _ arguments: [String], environment: [String: String]?,
                                  workingDirectory: String?) throws(SpawnError) -> Spawned {
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
        func closeAll() { for fd in output + error { close(fd) } }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var setup = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if setup == 0 { setup = posix_spawn_file_actions_adddup2(&actions, output[1], 1) }
        if setup == 0 { setup = posix_spawn_file_actions_adddup2(&actions, error[1], 2) }
        // The originals (close-on-exec anyway) go before exec; 0-2 are the copies.
        for fd in [output[0], output[1], error[0], error[1]] where setup == 0 && fd > 2 {
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
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

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
        return Spawned(pid: pid, output: output[0], error: error[0])
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

    /// The reader thread's work: both pipes to their end, then the child's exit.
    fileprivate final class Reader {
        /// How long to keep reading after the child exited while a pipe is still open
        /// (a grandchild holding it).
        static let grace = Duration.seconds(1)
        /// How often to look whether the child exited while its pipes stay quiet.
        static let tick: Int32 = 100

        let monitor: Monitor
        let output: Int32
        let error: Int32
        let outputLimit: Int
        let errorLimit: Int

        init(monitor: Monitor, output: Int32, error: Int32, outputLimit: Int, errorLimit: Int) {
            self.monitor = monitor
            self.output = output
            self.error = error
            self.outputLimit = outputLimit
            self.errorLimit = errorLimit
        }

        func run() {
            var fds = [pollfd(fd: output, events: Int16(POLLIN), revents: 0), pollfd(fd: error, events: Int16(POLLIN), revents: 0)]
            var kept: [[UInt8]] = [[], []]
            let limits = [outputLimit, errorLimit]
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
                        let room = limits[index] - kept[index].count
                        if room > 0 { kept[index].append(contentsOf: chunk.prefix(min(room, count))) }
                    } else if count == 0 || (errno != EINTR && errno != EAGAIN) {
                        close(fds[index].fd)
                        fds[index].fd = -1
                    }
                }
            }
            for fd in fds where fd.fd >= 0 { close(fd.fd) }
            if exitedAt == nil { _ = hasExited(wait: true) }
            monitor.deliver(Captured(output: kept[0], error: kept[1]))
        }

        /// Whether the child has exited, leaving it a zombie for the awaiting task to reap.
        /// `wait` blocks until it has.
        private func hasExited(wait: Bool) -> Bool {
            while true {
                var info = siginfo_t()
                let result = waitid(P_PID, id_t(monitor.pid), &info, WEXITED | WNOWAIT | (wait ? 0 : WNOHANG))
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

