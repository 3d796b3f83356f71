import Foundation
import Testing
import TalkieMedia

/// `ChildProcess` with real processes: exit codes, output, limits, environment, signals,
/// cancellation, grandchildren, and many runs at once (the swift-subprocess hang). Time
/// bounds are loose (the whole suite shares two cores); the time limit turns a hang into a failure.
@Suite(.timeLimit(.minutes(1))) struct ChildProcessTests {
    func run(_ command: String, outputLimit: Int = 1 << 20, errorLimit: Int = 1 << 20,
             environment: [String: String]? = nil, workingDirectory: String? = nil) async throws -> ChildProcess.Result {
        try await ChildProcess.run("sh", ["-c", command], environment: environment, workingDirectory: workingDirectory,
                                   outputLimit: outputLimit, errorLimit: errorLimit)
    }

    /// Whether `pid` is still a process (a zombie counts).
    func exists(_ pid: pid_t) -> Bool { FileManager.default.fileExists(atPath: "/proc/\(pid)") }

    @Test func exitCodesAndSignals() async throws {
        #expect(try await run("exit 0").exitCode == 0)
        #expect(try await run("exit 3").exitCode == 3)
        #expect(try await run("kill -9 $$").exitCode == 137)
        #expect(try await ChildProcess.run("/bin/false", [], outputLimit: 0, errorLimit: 0).exitCode == 1)
    }

    @Test func outputAndErrorAreCaptured() async throws {
        let result = try await run("printf 'out\\nput'; printf err >&2; exit 2")
        #expect(result == ChildProcess.Result(exitCode: 2, output: "out\nput", error: "err"))
        // Arguments reach the program as they are, spaces and quotes included.
        let echoed = try await ChildProcess.run("printf", ["%s|", "a b", "'c'", ""], outputLimit: 100, errorLimit: 100)
        #expect(echoed.output == "a b|'c'||")
    }

    @Test func standardInputIsEmpty() async throws {
        #expect(try await run("wc -c").output.trimmingCharacters(in: .whitespaces) == "0\n")
    }

    @Test func outputBeyondTheLimitIsDroppedWithoutBlockingTheChild() async throws {
        let started = Date()
        let result = try await run("head -c 50000000 /dev/zero; head -c 3000000 /dev/zero >&2; echo done >&2",
                                   outputLimit: 1 << 20, errorLimit: 1000)
        #expect(result.exitCode == 0)
        #expect(result.output.utf8.count == 1 << 20)
        #expect(result.error.utf8.count == 1000)
        #expect(Date().timeIntervalSince(started) < 30)
    }

    @Test func aMissingExecutableThrows() async throws {
        let error = await #expect(throws: ChildProcess.SpawnError.self) {
            try await ChildProcess.run("talkie-no-such-tool", [], outputLimit: 10, errorLimit: 10)
        }
        #expect(error?.code == ENOENT)
        #expect(error?.description.contains("talkie-no-such-tool") == true)
        await #expect(throws: ChildProcess.SpawnError.self) {
            try await ChildProcess.run("/nonexistent/tool", [], outputLimit: 10, errorLimit: 10)
        }
        await #expect(throws: ChildProcess.SpawnError.self) {
            try await ChildProcess.run("true", [], workingDirectory: "/nonexistent/folder", outputLimit: 10, errorLimit: 10)
        }
    }

    @Test func environmentIsMergedOverTheInheritedOne() async throws {
        let inherited = try await run("echo \"$HOME|$TALKIE_CHILD_TEST\"")
        #expect(inherited.output == (ProcessInfo.processInfo.environment["HOME"] ?? "") + "|\n")
        let merged = try await run("echo \"$HOME|$TALKIE_CHILD_TEST\"", environment: ["TALKIE_CHILD_TEST": "a b=c"])
        #expect(merged.output == (ProcessInfo.processInfo.environment["HOME"] ?? "") + "|a b=c\n")
        let replaced = try await run("echo \"$HOME\"", environment: ["HOME": "/elsewhere"])
        #expect(replaced.output == "/elsewhere\n")
    }

    @Test func workingDirectory() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("talkie-child-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let result = try await run("pwd -P", workingDirectory: folder)
        #expect(result.output == URL(fileURLWithPath: folder).resolvingSymlinksInPath().path + "\n")
        #expect(try await run("pwd").output == FileManager.default.currentDirectoryPath + "\n")
    }

    @Test func whileRunningCanSignalTheProcess() async throws {
        let started = Date()
        let seen = PidBox()
        let result = try await ChildProcess.run("sleep", ["60"], outputLimit: 10, errorLimit: 10) { pid in
            seen.set(pid)
            try await Task.sleep(for: .milliseconds(100))
            kill(pid, SIGTERM)
        }
        #expect(result.exitCode == 143)
        #expect(Date().timeIntervalSince(started) < 30)
        #expect(!exists(seen.get()), "reaped")
    }

    @Test func theRunWaitsForTheProcessAfterWhileRunningReturns() async throws {
        // The run waits for the process even when `whileRunning` is long done.
        let result = try await run("sleep 0.3; echo late")
        #expect(result.output == "late\n")
        let waited = try await ChildProcess.run("sh", ["-c", "sleep 0.3; echo late"], outputLimit: 100, errorLimit: 100) { _ in }
        #expect(waited.output == "late\n")
    }

    @Test func whileRunningThrowingKillsTheProcess() async throws {
        struct Stop: Error {}
        let started = Date()
        let seen = PidBox()
        await #expect(throws: Stop.self) {
            try await ChildProcess.run("sleep", ["60"], outputLimit: 10, errorLimit: 10) { pid in
                seen.set(pid)
                throw Stop()
            }
        }
        #expect(Date().timeIntervalSince(started) < 30)
        #expect(!exists(seen.get()), "killed and reaped")
    }

    @Test func cancellationKillsTheProcessAndLeavesNoZombie() async throws {
        let seen = PidBox()
        let task = Task {
            try await ChildProcess.run("sleep", ["60"], outputLimit: 10, errorLimit: 10) { pid in seen.set(pid) }
        }
        while seen.get() == 0 { try await Task.sleep(for: .milliseconds(10)) }
        let pid = seen.get()
        #expect(exists(pid))
        try await Task.sleep(for: .milliseconds(100))
        let started = Date()
        task.cancel()
        let outcome = await task.result
        #expect(Date().timeIntervalSince(started) < 30)
        #expect(throws: CancellationError.self) { try outcome.get() }
        #expect(!exists(pid), "no zombie left")
    }

    @Test func anAlreadyCancelledTaskStartsNothing() async throws {
        let task = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await ChildProcess.run("true", [], outputLimit: 10, errorLimit: 10)
        }
        await #expect(throws: CancellationError.self) { try await task.value }
    }

    @Test func aGrandchildHoldingThePipeDoesNotHangTheRun() async throws {
        // The run ends about a second after the child (not a minute later with the grandchild);
        // the bound is loose because the whole suite shares two cores.
        let started = Date()
        let result = try await run("sleep 60 & echo hi $!")
        let elapsed = Date().timeIntervalSince(started)
        let words = result.output.split(separator: " ")
        if words.count == 2, let grandchild = pid_t(words[1].trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(grandchild, SIGKILL)
        }
        #expect(result.exitCode == 0)
        #expect(words.first == "hi")
        #expect(elapsed >= 0.9, "read for the grace second after the child exited")
        #expect(elapsed < 30)
    }

    @Test func aProcessThatClosesItsOutputEarlyIsStillWaitedFor() async throws {
        let result = try await run("echo early; exec >&- 2>&-; sleep 0.5; exit 4")
        #expect(result == ChildProcess.Result(exitCode: 4, output: "early\n", error: ""))
    }

    /// The regression for swift-subprocess's lost pidfd: many short runs at once all return.
    @Test func manyConcurrentShortRunsAllReturn() async throws {
        let count = 200
        let outputs = try await withThrowingTaskGroup(of: (Int, ChildProcess.Result).self) { group in
            for n in 0..<count {
                group.addTask {
                    let result = n.isMultiple(of: 2)
                        ? try await ChildProcess.run("echo", [String(n)], outputLimit: 100, errorLimit: 100)
                        : try await ChildProcess.run("true", [], outputLimit: 100, errorLimit: 100)
                    return (n, result)
                }
            }
            var all: [Int: ChildProcess.Result] = [:]
            for try await (n, result) in group { all[n] = result }
            return all
        }
        #expect(outputs.count == count)
        for (n, result) in outputs {
            #expect(result.exitCode == 0)
            #expect(result.output == (n.isMultiple(of: 2) ? "\(n)\n" : ""))
        }
    }
}

/// A pid handed out of a `whileRunning` closure.
final class PidBox: @unchecked Sendable {
    private let lock = NSLock()
    private var pid: pid_t = 0
    func set(_ value: pid_t) { lock.withLock { pid = value } }
    func get() -> pid_t { lock.withLock { pid } }
}

