import Foundation
import Synchronization
import Testing
import TalkieMedia

/// `ChildProcess.Worker` (the engine workers' process handle) with real processes: the stdin
/// pipe, output lines, standard error, end of output, process groups, and a reader gone away.
@Suite(.timeLimit(.minutes(1))) struct ChildProcessWorkerTests {
    /// Whether `pid` is a live process (a zombie is not).
    func alive(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        return !stat[close...].hasPrefix(") Z")
    }

    func start(_ script: String, newProcessGroup: Bool = false, lineLimit: Int = 128 << 10,
               error: Chunks = Chunks()) throws -> ChildProcess.Worker {
        try ChildProcess.start("sh", ["-c", script], newProcessGroup: newProcessGroup, lineLimit: lineLimit) { error.append($0) }
    }

    func allLines(_ worker: ChildProcess.Worker) async throws -> [String] {
        var lines: [String] = []
        for try await line in worker.lines { lines.append(line) }
        return lines
    }

    @Test func standardInputRoundTripThroughCat() async throws {
        let worker = try ChildProcess.start("cat", []) { _ in }
        var lines = worker.lines.makeAsyncIterator()
        try worker.write("hello\n")
        #expect(try await lines.next() == "hello")
        try worker.write("wide ✓ world\n")
        #expect(try await lines.next() == "wide ✓ world")
        worker.closeInput()
        #expect(try await lines.next() == nil)
        #expect(await worker.reap() == 0)
        #expect(await worker.reap() == 0, "reaping again returns the same code")
        #expect(throws: ChildProcess.WriteError(code: EBADF)) { try worker.write("late\n") }
    }

    @Test func linesAreSplitAcrossChunksAndTheLastNeedsNoNewline() async throws {
        let worker = try start("printf 'ab'; sleep 0.2; printf 'c\\nde'; sleep 0.2; printf 'f\\r\\n\\nlast'")
        #expect(try await allLines(worker) == ["abc", "def", "", "last"])
        #expect(await worker.reap() == 0)
    }

    @Test func standardErrorIsForwarded() async throws {
        let error = Chunks()
        let worker = try start("printf 'one ' >&2; sleep 0.1; printf two >&2; echo out", error: error)
        #expect(try await allLines(worker) == ["out"])
        #expect(await worker.reap() == 0)
        #expect(error.text == "one two")
    }

    @Test func endOfOutputEndsTheStreamBeforeTheExit() async throws {
        let started = Date()
        let worker = try start("echo one; exec >&-; sleep 2; exit 5")
        #expect(try await allLines(worker) == ["one"])
        #expect(Date().timeIntervalSince(started) < 1.5, "the stream ended with the output, not the process")
        #expect(await worker.reap() == 5)
    }

    @Test func aTooLongLineEndsTheStreamWithAnError() async throws {
        let worker = try start("echo short; printf 0123456789abcdef; sleep 0.1; echo more", lineLimit: 10)
        var lines = worker.lines.makeAsyncIterator()
        #expect(try await lines.next() == "short")
        await #expect(throws: ChildProcess.LineTooLong(limit: 10)) { _ = try await lines.next() }
        #expect(await worker.reap() == 0)
    }

    @Test func killingTheGroupReachesTheChildsChildren() async throws {
        let worker = try start("sleep 60 & echo $!; wait", newProcessGroup: true)
        var lines = worker.lines.makeAsyncIterator()
        let grandchild = try #require(try await lines.next().flatMap { pid_t($0) })
        #expect(getpgid(worker.pid) == worker.pid)
        #expect(getpgid(grandchild) == worker.pid)
        #expect(alive(grandchild))
        kill(-worker.pid, SIGKILL)
        #expect(try await lines.next() == nil)
        #expect(await worker.reap() == 128 + SIGKILL)
        #expect(!FileManager.default.fileExists(atPath: "/proc/\(worker.pid)"), "no zombie left")
        let deadline = Date().addingTimeInterval(10)
        while alive(grandchild), Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(!alive(grandchild))
    }

    @Test func withoutANewGroupTheChildSharesOurs() async throws {
        let worker = try ChildProcess.start("cat", []) { _ in }
        #expect(getpgid(worker.pid) == getpgrp())
        worker.closeInput()
        #expect(await worker.reap() == 0)
    }

    @Test func writingToAChildThatIsGoneFailsWithoutSIGPIPE() async throws {
        let worker = try start("exit 0")
        #expect(try await allLines(worker) == [])
        #expect(await worker.reap() == 0)
        #expect(throws: ChildProcess.WriteError(code: EPIPE)) { try worker.write("anyone?\n") }
        worker.closeInput()
    }

    @Test func aMissingExecutableThrows() throws {
        #expect(throws: ChildProcess.SpawnError.self) {
            _ = try ChildProcess.start("/nonexistent/talkie-worker", []) { _ in }
        }
    }
}

/// Standard error chunks collected by a worker's reader thread.
final class Chunks: Sendable {
    private let bytes = Mutex<[UInt8]>([])
    func append(_ chunk: UnsafeRawBufferPointer) { bytes.withLock { $0.append(contentsOf: chunk) } }
    var text: String { String(decoding: bytes.withLock { $0 }, as: UTF8.self) }
}
