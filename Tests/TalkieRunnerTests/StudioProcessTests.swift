import Foundation
import Testing
import TalkieCore

/// `talkie serve` as a process: SIGTERM mid-item stops it cleanly (exit 0, the item back to
/// pending), and the next start shows the same batch and finishes it.
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
}
