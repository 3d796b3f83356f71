import Foundation
import Testing
import TalkieCore

/// `talkie serve` as a process: SIGTERM mid-item stops it cleanly (exit 0, the item back to
/// pending), and the next start shows the same batch and finishes it; clients that stall do
/// not hold a shutdown up.
@Suite(.serialized) struct StudioProcessTests {
    func curl(_ arguments: [String]) async throws -> String {
        try await sh((["curl", "-s", "--max-time", "30"] + arguments).map { "'\($0)'" }.joined(separator: " "))
    }

    func state(_ port: Int) async throws -> [String: Any] {
        let text = try await curl(["http://127.0.0.1:\(port)/api/state"])
        return (try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
    }

    func statuses(_ port: Int) async throws -> [String] {
        (try await state(port)["items"] as? [[String: Any]] ?? []).compactMap { $0["status"] as? String }
    }

    /// Runs `talkie serve` on `port` while `body` runs; returns its exit code.
    func serve(_ workspace: Workspace, port: Int, body: @escaping @Sendable (pid_t) async throws -> Void) async throws -> Int32 {
        let result = try await workspace.talkie(["serve", "--workspace", workspace.root + "/studio", "--port", String(port)],
                                                environment: ["TALKIE_TEST_ENGINE_DELAY": "0.1"]) { pid in
            let deadline = Date().addingTimeInterval(30)
            while (try? await self.curl(["http://127.0.0.1:\(port)/api/state"]))?.isEmpty ?? true {
                guard Date() < deadline else { throw CLIFailure(message: "the server did not start") }
                try await Task.sleep(for: .milliseconds(100))
            }
            try await body(pid)
        }
        return result.code
    }

    @Test func sigtermMidItemStopsCleanlyAndTheNextStartResumes() async throws {
        let workspace = try await Workspace()
        for n in 1...3 { try await workspace.addTemplate(n, as: "t\(n).mp4") }
        let port = Int.random(in: 20_000..<40_000)
        let first = try await serve(workspace, port: port) { pid in
            _ = try await self.curl(["-X", "POST", "--data-binary", "@" + workspace.narration, "http://127.0.0.1:\(port)/api/inputs/audio?name=narration.wav"])
            for n in 1...3 {
                _ = try await self.curl(["-X", "POST", "--data-binary", "@\(workspace.templates)/t\(n).mp4", "http://127.0.0.1:\(port)/api/inputs/videos?name=t\(n).mp4"])
            }
            _ = try await self.curl(["-X", "PUT", "-d", "{\"engine\": \"test\"}", "http://127.0.0.1:\(port)/api/settings"])
            _ = try await self.curl(["-X", "POST", "http://127.0.0.1:\(port)/api/batch/start"])
            try await workspace.waitForRenders(2)  // the first item is done, the second is rendering
            kill(pid, SIGTERM)
        }
        #expect(first == 0, "SIGTERM is a clean stop")
        let second = try await serve(workspace, port: port) { pid in
            let before = try await self.statuses(port)
            #expect(before.count == 3, "the same batch after the restart")
            #expect(before.contains("success") && !before.contains("running"), "\(before)")
            _ = try await self.curl(["-X", "POST", "http://127.0.0.1:\(port)/api/batch/start"])
            let deadline = Date().addingTimeInterval(60)
            while try await self.statuses(port) != ["success", "success", "success"] {
                guard Date() < deadline else { throw CLIFailure(message: "the batch did not finish: \(try await self.curl(["http://127.0.0.1:\(port)/api/state"]))") }
                try await Task.sleep(for: .milliseconds(200))
            }
            kill(pid, SIGTERM)
        }
        #expect(second == 0)
        // Renders counted from the engine's own log: each item once, the one stopped mid-way twice.
        var perItem: [String: Int] = [:]
        for line in workspace.renders() { perItem[String(line.split(separator: " ")[1]), default: 0] += 1 }
        #expect(perItem.count == 3 && perItem.values.allSatisfy { (1...2).contains($0) }, "\(perItem)")
        #expect(perItem.values.reduce(0, +) <= 4, "\(perItem)")
        #expect(try await workspace.survivingWorkers().isEmpty)
    }

    /// Established TCP connections whose local port is `port` (the server's side of them).
    func serverConnections(_ port: Int) -> Int {
        // Read to the end: `String(contentsOfFile:)` gets only the first page of a /proc table.
        let table = String(decoding: (try? FileHandle(forReadingAtPath: "/proc/net/tcp")?.readToEnd()) ?? Data(), as: UTF8.self)
        let local = String(format: ":%04X", port)
        return table.split(separator: "\n").dropFirst().filter { line in
            let fields = line.split(separator: " ")
            return fields.count > 3 && fields[1].hasSuffix(local) && fields[3] == "01"
        }.count
    }

    /// Whether `pid` has exited (gone, or a zombie not yet reaped).
    func hasExited(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
        return stat.split(separator: ")").last?.split(separator: " ").first == "Z"
    }

    @Test func sigtermDoesNotWaitForClientsThatStall() async throws {
        let workspace = try await Workspace()
        let port = Int.random(in: 20_000..<40_000)
        let big = workspace.root + "/big.mp4"
        try await sh("head -c 16000000 /dev/urandom > '\(big)'")
        let code = try await serve(workspace, port: port) { pid in
            let answer = try await self.curl(["-X", "POST", "--data-binary", "@" + big, "http://127.0.0.1:\(port)/api/inputs/videos?name=big.mp4"])
            let key = try #require((try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any])?["key"] as? String)
            // An upload that arrives at 2 KiB/s and a download read at 2 KiB/s: both would take hours.
            try await sh("""
                curl -s --max-time 120 --limit-rate 2k -X POST --data-binary @'\(big)' 'http://127.0.0.1:\(port)/api/inputs/videos?name=slow.mp4' >/dev/null 2>&1 &
                curl -s --max-time 120 --limit-rate 2k -o /dev/null 'http://127.0.0.1:\(port)/api/inputs/videos/\(key)' >/dev/null 2>&1 &
                """)
            let deadline = Date().addingTimeInterval(20)
            while self.serverConnections(port) < 2 {
                guard Date() < deadline else { throw CLIFailure(message: "the two slow clients did not connect") }
                try await Task.sleep(for: .milliseconds(50))
            }
            try await Task.sleep(for: .milliseconds(500))  // both requests under way
            let clock = ContinuousClock()
            let start = clock.now
            kill(pid, SIGTERM)
            while !self.hasExited(pid) && clock.now - start < .seconds(60) { try await Task.sleep(for: .milliseconds(50)) }
            guard self.hasExited(pid) else {
                kill(pid, SIGKILL)
                throw CLIFailure(message: "talkie serve was still running 60 s after SIGTERM, waiting for its slow clients")
            }
            // The grace is 5 s; the rest of the bound is room for a busy machine.
            #expect(clock.now - start < .seconds(30), "talkie serve took \(clock.now - start) to exit")
        }
        _ = try? await sh("pkill -f 'limit-rate 2k.*127.0.0.1:\(port)/' || true")
        #expect(code == 0, "SIGTERM is a clean stop")
        let parts = try await sh("find '\(workspace.root)/studio' -name '*.part'")
        #expect(parts.isEmpty, "the cut-off upload left \(parts)")
    }
}
