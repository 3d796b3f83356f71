import Foundation
import Testing
import TalkieCore

/// Choosing an engine and where it runs: `--gpus`, `talkie engines`, `talkie doctor --engine`.
@Suite(.serialized) struct EngineChoiceTests {
    @Test func oneWorkerPerGPUAndADyingWorkerTakesOnlyItsItem() async throws {
        let workspace = try await Workspace()
        for n in 1...4 { try await workspace.addTemplate(n, as: n == 3 ? "crash.mp4" : "t\(n).mp4") }
        let result = try await workspace.run(["--gpus", "0,1", "--max-attempts", "1", "--json"],
                                             environment: ["TALKIE_TEST_ENGINE_DELAY": "0.05"])
        #expect(result.code == 1, "\(result.all)")
        let items = try await workspace.status().items
        #expect(items.filter { $0.state.status == .success }.count == 3, "the other workers' items are unharmed")
        let crashed = try #require(try await workspace.item("crash.mp4"))
        #expect(crashed.state.status == .failed && crashed.state.lastError?.message.contains("died") == true)
        #expect(Set(items.compactMap(\.device)) == ["gpu 0", "gpu 1"], "both GPUs rendered: \(items.map(\.device))")
        for item in items {
            let gpu = try #require(item.device?.split(separator: " ").last)
            let log = try String(contentsOfFile: workspace.outputs + "/.talkie/logs/\(item.key.id).log", encoding: .utf8)
            #expect(log.contains("CUDA_VISIBLE_DEVICES=\(gpu)"), "the worker on \(item.device!) saw only its GPU: \(log)")
        }
        let started = result.output.split(separator: "\n").filter { $0.contains("\"event\":\"item_started\"") }
        #expect(started.count == 4 && started.allSatisfy { $0.contains("\"device\":\"gpu ") }, "\(started)")
        let table = try await workspace.talkie(["status", "--out", workspace.outputs])
        #expect(table.output.contains("gpu 0") && table.output.contains("gpu 1"), "\(table.output)")
    }

    @Test func badGPUListsAreRefused() async throws {
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "t1.mp4")
        for (arguments, message) in [(["--gpus", "0,0"], "twice"), (["--gpus", "0", "--slots", "2"], "not both"),
                                     (["--gpus", "first"], "neither a GPU index"), (["--gpus", ""], "at least one GPU")] {
            let result = try await workspace.run(arguments)
            #expect(result.code == 2, "\(arguments): \(result.all)")
            #expect(result.error.contains(message), "\(arguments): \(result.error)")
        }
        #expect(workspace.renders().isEmpty)
    }

    @Test func enginesListsEveryEngineWithWhatItNeeds() async throws {
        let workspace = try await Workspace()
        let text = try await workspace.talkie(["engines"])
        #expect(text.code == 0, "\(text.all)")
        for name in ["classic", "wav2lip", "face2face", "command", "test"] { #expect(text.output.contains("\(name) "), "\(name)") }
        #expect(text.output.contains("non-commercial"))
        let json = try await workspace.talkie(["engines", "--json"])
        let rows = try #require(try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [[String: Any]])
        let byName = Dictionary(uniqueKeysWithValues: rows.map { ($0["name"] as! String, $0) })
        #expect(byName["wav2lip"]?["required_params"] as? [String] == ["model"])
        #expect(byName["command"]?["required_params"] as? [String] == ["command"])
        #expect(byName["face2face"]?["required_params"] as? [String] == ["url", "share"])
        #expect(rows.allSatisfy { $0["installed"] as? Bool == true }, "a fresh setup installs every engine: \(rows)")
    }

    @Test func doctorStartsTheChosenEngine() async throws {
        let workspace = try await Workspace()
        let ok = try await workspace.talkie(["doctor", "--engine", "test"])
        #expect(ok.code == 0, "\(ok.all)")
        #expect(ok.output.contains("ok   test engine starts (handshake): test 1.0.0 on cpu"), "\(ok.output)")
        let missing = try await workspace.talkie(["doctor", "--engine", "command"])
        #expect(missing.code == 2, "\(missing.all)")
        #expect(missing.output.contains("FAIL command engine starts") && missing.output.contains("--param command="), "\(missing.output)")
        let model = workspace.root + "/absent.onnx"
        let wav2lip = try await workspace.talkie(["doctor", "--engine", "wav2lip", "--param", "model=\(model)"])
        #expect(wav2lip.code == 2 && wav2lip.output.contains(model), "\(wav2lip.all)")
        let unknown = try await workspace.talkie(["doctor", "--engine", "nonesuch"])
        #expect(unknown.code == 2 && unknown.error.contains("unknown engine"), "\(unknown.all)")
    }

    @Test func anEngineMissingItsRequiredParameterIsReportedBeforeAnyItem() async throws {
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "t1.mp4")
        for engine in ["face2face", "command", "wav2lip"] {
            let result = try await workspace.talkie(["run", "--audio", workspace.narration, "--videos", workspace.templates,
                                                     "--out", workspace.outputs, "--engine", engine])
            #expect(result.code == 2, "\(engine): \(result.all)")
            #expect(result.error.contains("needs --param"), "\(engine): \(result.error)")
        }
        #expect(try await workspace.status().items.allSatisfy { $0.state.attempts == 0 })
        // Scripts reading --json events get the reason as the last event.
        let json = try await workspace.talkie(["run", "--audio", workspace.narration, "--videos", workspace.templates,
                                               "--out", workspace.outputs, "--engine", "command", "--json"])
        #expect(json.code == 2)
        let last = try #require(json.output.split(separator: "\n").last.map(String.init))
        let event = try #require(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any])
        #expect(event["event"] as? String == "batch_failed" && event["code"] as? String == "engine.param_missing", "\(last)")
        #expect((event["message"] as? String)?.contains("--param command=") == true)
    }
}
