import Foundation
import TalkieCore
import TalkieMedia

/// The repository root (for engines/ and the built binary).
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// The `talkie` binary built beside the tests.
let talkieBinary = ProcessInfo.processInfo.environment["TALKIE_BINARY"] ?? repositoryRoot + "/.build/debug/talkie"

/// What a finished `talkie` process left.
struct CLIResult {
    var code: Int32
    var output: String
    var error: String
    var all: String { output + error }
}

/// Runs a shell command to its end; its standard output.
@discardableResult
func sh(_ command: String) async throws -> String {
    let result = try await ChildProcess.run("/bin/sh", ["-c", command], outputLimit: 16 << 20, errorLimit: 1 << 20)
    guard result.exitCode == 0 else {
        throw CLIFailure(message: "`\(command)` failed: \(result.error)")
    }
    return result.output
}

struct CLIFailure: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// One test's workspace: templates/, outputs/, the narration, and the test engine's render log.
final class Workspace: @unchecked Sendable {
    let root: String
    var templates: String { root + "/templates" }
    var outputs: String { root + "/outputs" }
    var narration: String { root + "/narration.wav" }
    var engineLog: String { root + "/engine.log" }

    init() async throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("talkie-e2e-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: root + "/templates", withIntermediateDirectories: true)
        try await Fixtures.shared.copyNarration(to: narration)
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    /// Adds template number `n` (distinct content per number) under `name`.
    func addTemplate(_ n: Int, as name: String) async throws {
        try await Fixtures.shared.copyTemplate(n, to: templates + "/" + name)
    }

    /// Runs `talkie` with `arguments`. `whileRunning` gets the pid and may signal it.
    func talkie(_ arguments: [String], environment: [String: String] = [:],
                whileRunning: (@Sendable (pid_t) async throws -> Void)? = nil) async throws -> CLIResult {
        let result = try await ChildProcess.run(
            talkieBinary, arguments, environment: environment.merging(["TALKIE_TEST_ENGINE_LOG": engineLog]) { given, _ in given },
            workingDirectory: root, outputLimit: 16 << 20, errorLimit: 16 << 20, whileRunning: whileRunning)
        return CLIResult(code: result.exitCode, output: result.output, error: result.error)
    }

    /// `talkie run` with the test engine over templates/ into outputs/.
    func run(_ extra: [String] = [], environment: [String: String] = [:],
             whileRunning: (@Sendable (pid_t) async throws -> Void)? = nil) async throws -> CLIResult {
        try await talkie(["run", "--audio", narration, "--videos", templates, "--out", outputs, "--engine", "test", "--retry-delay", "0"] + extra,
                         environment: environment, whileRunning: whileRunning)
    }

    /// The lines of the engine's own render log.
    func renders() -> [String] {
        ((try? String(contentsOfFile: engineLog, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    /// How often a template was rendered, by its file name.
    func renderCount(_ name: String) -> Int { renders().filter { $0.hasSuffix(" " + name) }.count }

    /// Waits until the engine has logged `count` renders (or fails after `seconds`).
    func waitForRenders(_ count: Int, seconds: Double = 60) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while renders().count < count {
            guard Date() < deadline else { throw CLIFailure(message: "the engine did not reach \(count) renders") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Test-engine workers of this workspace still alive (found by the log path in their
    /// environment, so workers of tests running beside this one do not count).
    func survivingWorkers() async throws -> [String] {
        let pids = try await sh("pgrep -f 'test_engine[.]py' || true").split(separator: "\n").map(String.init)
        return pids.filter { pid in
            let environment = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/environ"))) ?? Data()
            return String(decoding: environment, as: UTF8.self).contains("TALKIE_TEST_ENGINE_LOG=\(engineLog)")
        }
    }

    /// The state as `talkie status --json` prints it.
    func status() async throws -> StatusDocument {
        let result = try await talkie(["status", "--out", outputs, "--json"])
        guard result.code == 0 else { throw CLIFailure(message: "status failed: \(result.all)") }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(StatusDocument.self, from: Data(result.output.utf8))
    }

    /// The item whose names include `name`.
    func item(_ name: String) async throws -> Item? {
        try await status().items.first { $0.names.contains { $0.hasSuffix("/" + name) } }
    }
}

/// The part of `status --json` the tests read.
struct StatusDocument: Decodable {
    var generation: Int
    var items: [Item]
}

/// Media made once per test process: a narration by espeak-ng and templates by ffmpeg.
actor Fixtures {
    static let shared = Fixtures()
    private let folder = FileManager.default.temporaryDirectory.appendingPathComponent("talkie-fixtures-\(getpid())").path
    private var made: Set<Int> = []
    private var narrationMade = false

    func copyNarration(to path: String) async throws {
        if !narrationMade {
            // Made under a unique name and renamed: the actor is reentrant at the await, so
            // two tests may both make it, and neither may copy a half-written file.
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            let temp = "\(folder)/narration-\(UUID().uuidString).wav"
            try await sh("espeak-ng -v en-us -s 190 -w '\(temp)' 'Talkie renders every template with this narration, and never twice.' && mv '\(temp)' '\(folder)/narration.wav'")
            narrationMade = true
        }
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.copyItem(atPath: folder + "/narration.wav", toPath: path)
    }

    func copyTemplate(_ n: Int, to path: String) async throws {
        let source = "\(folder)/template\(n).mp4"
        if !made.contains(n) {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            let duration = String(format: "%.1f", 1.0 + 0.1 * Double(n))
            let temp = "\(folder)/template\(n)-\(UUID().uuidString).mp4"
            try await sh("ffmpeg -nostdin -v error -y -f lavfi -i testsrc=size=160x120:rate=25:duration=\(duration) -c:v libx264 -preset ultrafast -pix_fmt yuv420p '\(temp)' && mv '\(temp)' '\(source)'")
            made.insert(n)
        }
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.copyItem(atPath: source, toPath: path)
    }
}
