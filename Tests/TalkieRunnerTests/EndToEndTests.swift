import Foundation
import Testing
import TalkieCore

/// The real `talkie` binary with the test engine, on media made by espeak-ng and ffmpeg.
@Suite(.serialized) struct EndToEndTests {
    @Test func rendersEveryTemplateThenNothingOnTheNextRun() async throws {
        let workspace = try await Workspace()
        for n in 1...3 { try await workspace.addTemplate(n, as: "t\(n).mp4") }
        let first = try await workspace.run()
        #expect(first.code == 0, "\(first.all)")
        #expect(workspace.renders().count == 3)
        let state = try await workspace.status()
        #expect(state.items.count == 3 && state.items.allSatisfy { $0.state.status == .success })
        for item in state.items {
            let output = workspace.outputs + "/" + (item.state.output ?? "")
            let tags = try await sh("ffprobe -v error -show_entries format_tags=talkie_key -of default=nw=1:nk=1 'file:\(output)'")
            #expect(tags.trimmingCharacters(in: .whitespacesAndNewlines) == item.key.id)
        }
        let second = try await workspace.run()
        #expect(second.code == 0)
        #expect(workspace.renders().count == 3, "nothing renders twice")
        #expect(second.output.contains("0 to render"))
        let log = try String(contentsOfFile: workspace.outputs + "/talkie.log", encoding: .utf8)
        #expect(log.split(separator: "\n").allSatisfy { $0.hasPrefix("{\"time\":\"") && $0.contains("\"event\":") })
        #expect(log.contains("item_succeeded"))
        let itemLog = try String(contentsOfFile: workspace.outputs + "/.talkie/logs/\(state.items[0].key.id).log", encoding: .utf8)
        #expect(itemLog.contains("test engine: rendering"), "the worker's stderr is kept in the item's log")
    }

    @Test func twoSlotsRenderEveryItemOnce() async throws {
        let workspace = try await Workspace()
        for n in 1...4 { try await workspace.addTemplate(n, as: "t\(n).mp4") }
        let result = try await workspace.run(["--slots", "2"])
        #expect(result.code == 0, "\(result.all)")
        #expect((1...4).map { workspace.renderCount("t\($0).mp4") } == [1, 1, 1, 1])
    }

    @Test func sigusr1PausesAfterTheCurrentItem() async throws {
        let workspace = try await Workspace()
        for n in 1...3 { try await workspace.addTemplate(n, as: "t\(n).mp4") }
        let paused = try await workspace.run(environment: ["TALKIE_TEST_ENGINE_DELAY": "0.1"]) { pid in
            try await workspace.waitForRenders(1)
            kill(pid, SIGUSR1)
        }
        #expect(paused.code == 3, "\(paused.all)")
        let state = try await workspace.status().items
        #expect(state.filter { $0.state.status == .success }.count == 1, "the current item finished")
        #expect(state.filter { $0.state.status == .pending }.count == 2)
        #expect(try await workspace.run().code == 0)
        #expect(workspace.renders().count == 3)
    }

    @Test func afterSIGKILLOnlyTheRestRenders() async throws {
        let workspace = try await Workspace()
        for n in 1...5 { try await workspace.addTemplate(n, as: "t\(n).mp4") }
        let killed = try await workspace.run(environment: ["TALKIE_TEST_ENGINE_DELAY": "0.08"]) { pid in
            try await workspace.waitForRenders(3)
            kill(pid, SIGKILL)
        }
        #expect(killed.code == 128 + SIGKILL)
        let afterKill = try await workspace.status()
        let done = afterKill.items.filter { $0.state.status == .success }
        #expect(done.count >= 2 && done.count <= 3)
        for item in done {
            #expect(FileManager.default.fileExists(atPath: workspace.outputs + "/" + (item.state.output ?? "-")))
        }
        if afterKill.items.contains(where: { $0.state.status == .running }) {
            // Nothing runs any more: the item the kill cut short is shown as stopped.
            let text = try await workspace.talkie(["status", "--out", workspace.outputs])
            #expect(text.output.contains("stopped") && !text.output.contains(" running "), "\(text.output)")
        }
        let resumed = try await workspace.run()
        #expect(resumed.code == 0, "\(resumed.all)")
        let final = try await workspace.status()
        #expect(final.items.count == 5 && final.items.allSatisfy { $0.state.status == .success })
        // Each item rendered once, plus at most once more for the one the kill hit.
        let counts = (1...5).map { workspace.renderCount("t\($0).mp4") }
        #expect(counts.allSatisfy { $0 >= 1 && $0 <= 2 }, "\(counts)")
        #expect(counts.reduce(0, +) <= 6, "\(counts)")
        for item in done { #expect(workspace.renderCount(item.displayName) == 1, "a finished item was rendered again") }
    }

    @Test func ctrlCStopsNowAndTheItemReturnsToPending() async throws {
        let workspace = try await Workspace()
        for n in 1...2 { try await workspace.addTemplate(n, as: "t\(n).mp4") }
        let stopped = try await workspace.run(environment: ["TALKIE_TEST_ENGINE_DELAY": "0.5"]) { pid in
            try await workspace.waitForRenders(1)
            try await Task.sleep(for: .milliseconds(300))
            kill(pid, SIGINT)
        }
        #expect(stopped.code == 3, "\(stopped.all)")
        #expect(stopped.output.contains("Interrupted"))
        let state = try await workspace.status()
        #expect(state.items.allSatisfy { $0.state.status == .pending && $0.state.attempts == 0 }, "\(state.items.map(\.state))")
        #expect(try await workspace.survivingWorkers().isEmpty, "no worker survives")
        let resumed = try await workspace.run()
        #expect(resumed.code == 0)
        #expect(try await workspace.status().items.allSatisfy { $0.state.status == .success })
    }

    @Test func renamedDuplicatedAndAppendedTemplates() async throws {
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "a.mp4")
        try await workspace.addTemplate(1, as: "a copy.mp4")
        try await workspace.addTemplate(2, as: "b.mp4")
        #expect(try await workspace.run().code == 0)
        #expect(workspace.renders().count == 2, "the same content under two names renders once")
        let duplicate = try #require(try await workspace.item("a.mp4"))
        #expect(duplicate.names.count == 2)

        try FileManager.default.moveItem(atPath: workspace.templates + "/b.mp4", toPath: workspace.templates + "/renamed b.mp4")
        let renamed = try await workspace.run()
        #expect(renamed.code == 0)
        #expect(workspace.renders().count == 2, "a renamed template is not rendered again")
        #expect(renamed.output.contains("now named renamed b.mp4"))

        try await workspace.addTemplate(3, as: "new.mp4")
        #expect(try await workspace.run().code == 0)
        #expect(workspace.renders().count == 3)
        #expect(workspace.renderCount("new.mp4") == 1)
    }

    @Test func engineFailuresAreRetriedOnlyWhenTransient() async throws {
        let workspace = try await Workspace()
        let names = ["good.mp4", "fail-input.mp4", "flaky.mp4", "crash.mp4", "garbage.mp4", "no-audio.mp4"]
        for (n, name) in names.enumerated() { try await workspace.addTemplate(n + 1, as: name) }
        let result = try await workspace.run(["--max-attempts", "2"])
        #expect(result.code == 1, "\(result.all)")
        func item(_ name: String) async throws -> Item { try #require(try await workspace.item(name)) }
        #expect(try await item("good.mp4").state.status == .success)
        #expect(try await item("flaky.mp4").state.status == .success)
        #expect(workspace.renderCount("flaky.mp4") == 2)
        let input = try await item("fail-input.mp4")
        #expect(input.state.status == .failed && input.state.lastError?.kind == .input)
        #expect(workspace.renderCount("fail-input.mp4") == 1, "input failures are not retried")
        for name in ["crash.mp4", "garbage.mp4", "no-audio.mp4"] {
            let failed = try await item(name)
            #expect(failed.state.status == .failed && failed.state.lastError?.kind == .transient, "\(name)")
            #expect(workspace.renderCount(name) == 2, "\(name) retried up to the cap")
        }
        #expect(try await item("crash.mp4").state.lastError?.message.contains("died") == true)
        #expect(try await item("garbage.mp4").state.lastError?.message.contains("not a protocol message") == true)
        #expect(try await item("no-audio.mp4").state.lastError?.message.contains("no audio stream") == true)
        #expect(result.output.contains("talkie retry --out"))
    }

    @Test func aHangingEngineIsKilledAtTheTimeout() async throws {
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "hang.mp4")
        try await workspace.addTemplate(2, as: "good.mp4")
        let result = try await workspace.run(["--item-timeout", "2", "--max-attempts", "1"])
        #expect(result.code == 1, "\(result.all)")
        let hung = try #require(try await workspace.item("hang.mp4"))
        #expect(hung.state.status == .failed)
        #expect(hung.state.lastError?.message.contains("did not finish within 2 s") == true)
        #expect(try await workspace.item("good.mp4")?.state.status == .success)
        #expect(try await workspace.survivingWorkers().isEmpty, "the hung worker's group was killed")
    }

    @Test func retryFailedRendersOnlyTheFailures() async throws {
        let workspace = try await Workspace()
        for n in 1...2 { try await workspace.addTemplate(n, as: "t\(n).mp4") }
        try await workspace.addTemplate(3, as: "fail-transient.mp4")
        let first = try await workspace.run(["--max-attempts", "1"])
        #expect(first.code == 1)
        #expect(workspace.renders().count == 3)
        try FileManager.default.moveItem(atPath: workspace.templates + "/fail-transient.mp4", toPath: workspace.templates + "/fixed.mp4")
        let retried = try await workspace.talkie(["retry", "--out", workspace.outputs, "--failed"])
        #expect(retried.code == 0, "\(retried.all)")
        #expect(workspace.renders().count == 4)
        #expect(workspace.renderCount("fixed.mp4") == 1)
    }

    @Test func changedSettingsKeepSuccessesUntilAskedToRerender() async throws {
        let workspace = try await Workspace()
        for n in 1...2 { try await workspace.addTemplate(n, as: "t\(n).mp4") }
        #expect(try await workspace.run().code == 0)
        let before = try await workspace.status().items
        let changed = try await workspace.run(["--tempo", "1.25"])
        #expect(changed.code == 0)
        #expect(workspace.renders().count == 2, "changing settings never discards a success by itself")
        let text = try await workspace.talkie(["status", "--out", workspace.outputs])
        #expect(text.output.contains("(other settings)"))
        let rerender = try await workspace.talkie(["retry", "--out", workspace.outputs, "--all-with-other-settings"])
        #expect(rerender.code == 0, "\(rerender.all)")
        #expect(workspace.renders().count == 4)
        let after = try await workspace.status().items
        #expect(Set(after.compactMap(\.state.settingsFingerprint)).count == 1)
        #expect(after.first?.state.settingsFingerprint != before.first?.state.settingsFingerprint)
        let narration = Double(try await sh("ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1 '\(workspace.narration)'").trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        let output = workspace.outputs + "/" + (after.first?.state.output ?? "")
        let rendered = Double(try await sh("ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1 '\(output)'").trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        #expect(abs(rendered - narration / 1.25) < 0.3, "tempo 1.25 shortens the narration: \(rendered) vs \(narration / 1.25)")
    }

    @Test func resetForgetsTheStateAndKeepsTheOutputs() async throws {
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "t1.mp4")
        #expect(try await workspace.run().code == 0)
        let refused = try await workspace.talkie(["reset", "--out", workspace.outputs])
        #expect(refused.code == 2 && refused.error.contains("--yes"))
        let reset = try await workspace.talkie(["reset", "--out", workspace.outputs, "--yes"])
        #expect(reset.code == 0 && reset.output.contains("forgot 1 items"))
        #expect(try await workspace.status().items.isEmpty)
        let outputs = try FileManager.default.contentsOfDirectory(atPath: workspace.outputs).filter { $0.hasSuffix(".mp4") }
        #expect(outputs.count == 1)
        #expect(try await workspace.run().code == 0)
        #expect(workspace.renders().count == 2, "after a reset the batch renders again")
    }

    @Test func aSecondRunnerIsRefusedNamingTheHolder() async throws {
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "t1.mp4")
        let first = try await workspace.run(environment: ["TALKIE_TEST_ENGINE_DELAY": "0.3"]) { pid in
            try await workspace.waitForRenders(1)
            let second = try await workspace.run()
            #expect(second.code == 2)
            #expect(second.error.contains("pid \(pid)"), "\(second.all)")
        }
        #expect(first.code == 0)
        #expect(workspace.renders().count == 1, "the refused runner disturbed nothing of the running one")
    }

    @Test func damagedStateIsRecoveredWithoutRenderingAgain() async throws {
        let workspace = try await Workspace()
        for n in 1...2 { try await workspace.addTemplate(n, as: "t\(n).mp4") }
        #expect(try await workspace.run().code == 0)
        // Every state file damaged or gone: only the outputs' metadata is left.
        try Data("{\"schema\": 1, \"items\": [tru".utf8).write(to: URL(fileURLWithPath: workspace.outputs + "/task_status.json"))
        for name in ["task_status.json.bak", "task_status.journal", "task_status.journal.prev"] {
            try? FileManager.default.removeItem(atPath: workspace.outputs + "/" + name)
        }
        let recovered = try await workspace.run()
        #expect(recovered.code == 0, "\(recovered.all)")
        #expect(recovered.output.contains("recovered 2 finished items"))
        #expect(workspace.renders().count == 2, "successes recovered from the outputs, not rendered again")
        let names = try FileManager.default.contentsOfDirectory(atPath: workspace.outputs)
        #expect(names.contains { $0.hasPrefix("task_status.json.corrupt-") })

        try Data("{\"schema\": 7, \"items\": []}".utf8).write(to: URL(fileURLWithPath: workspace.outputs + "/task_status.json"))
        let future = try await workspace.run()
        #expect(future.code == 2)
        #expect(future.error.contains("newer Talkie"))
    }

    @Test func statusJSONSaysWhenTheStateIsDamaged() async throws {
        let workspace = try await Workspace()
        for n in 1...2 { try await workspace.addTemplate(n, as: "t\(n).mp4") }
        #expect(try await workspace.run().code == 0)
        try Data().write(to: URL(fileURLWithPath: workspace.outputs + "/task_status.json"))
        try? FileManager.default.removeItem(atPath: workspace.outputs + "/task_status.json.bak")
        let status = try await workspace.talkie(["status", "--out", workspace.outputs, "--json"])
        #expect(status.code == 0)
        #expect(status.error.contains("recovers them from the metadata"), "never a silently empty batch: \(status.error)")
        let recovered = try await workspace.run()
        #expect(recovered.code == 0 && workspace.renders().count == 2, "\(recovered.all)")
    }

    @Test func anEmptiedAudioCacheIsMadeAgain() async throws {
        // What a power cut can leave of the prepared narration: its name without its data.
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "t1.mp4")
        #expect(try await workspace.run().code == 0)
        let audio = workspace.outputs + "/.talkie/audio"
        for name in try FileManager.default.contentsOfDirectory(atPath: audio) {
            try Data().write(to: URL(fileURLWithPath: audio + "/" + name))
        }
        #expect(try await workspace.talkie(["reset", "--out", workspace.outputs, "--yes"]).code == 0)
        let again = try await workspace.run()
        #expect(again.code == 0, "\(again.all)")
    }

    @Test func aHalfWrittenOutputFailsWithOnePlainLine() async throws {
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "x-half-output.mp4")
        let result = try await workspace.run(["--max-attempts", "1"])
        #expect(result.code == 1)
        let message = try #require(try await workspace.item("x-half-output.mp4")?.state.lastError?.message)
        #expect(message.hasPrefix("the engine's output was rejected: the engine's output could not be read ("), "\(message)")
        #expect(!message.contains("\n") && !message.contains(".talkie/tmp") && !message.contains(" @ 0x"), "\(message)")
    }

    @Test func theSeedsStateFileIsImported() async throws {
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "a.mp4")
        try await workspace.addTemplate(2, as: "b.mp4")
        try FileManager.default.createDirectory(atPath: workspace.outputs, withIntermediateDirectories: true)
        try await Fixtures.shared.copyTemplate(1, to: workspace.outputs + "/a_result.mp4")
        let md5 = try await sh("md5sum '\(workspace.templates)/a.mp4' | cut -d' ' -f1").trimmingCharacters(in: .whitespacesAndNewlines)
        let legacy = "{\"\(md5)\": {\"status\": \"success\", \"output\": \"a_result.mp4\", \"filename\": \"a.mp4\"}}"
        try Data(legacy.utf8).write(to: URL(fileURLWithPath: workspace.outputs + "/task_status.json"))
        let result = try await workspace.run()
        #expect(result.code == 0, "\(result.all)")
        #expect(result.output.contains("imported 1 finished items"))
        #expect(workspace.renderCount("a.mp4") == 0 && workspace.renderCount("b.mp4") == 1)
        let imported = try #require(try await workspace.item("a.mp4"))
        #expect(imported.state.status == .success && imported.state.settingsFingerprint == "legacy")
        let names = try FileManager.default.contentsOfDirectory(atPath: workspace.outputs)
        #expect(names.contains { $0.hasPrefix("task_status.legacy-") })
    }

    @Test func badTemplatesFailTheirItemAndTheBatchGoesOn() async throws {
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "good.mp4")
        let t = workspace.templates
        try Data().write(to: URL(fileURLWithPath: t + "/empty.mp4"))
        try Data("this is not a video".utf8).write(to: URL(fileURLWithPath: t + "/text.mp4"))
        try await sh("ffmpeg -nostdin -v error -f lavfi -i testsrc=size=64x64 -frames:v 1 -f image2 -c:v png '\(t)/image.mp4'")
        try await sh("ffmpeg -nostdin -v error -i '\(workspace.narration)' -c:a aac '\(t)/audio-only.mp4'")
        try await sh("head -c 3000 '\(t)/good.mp4' > '\(t)/truncated.mp4'")
        // A download cut just after a front index: ffprobe believes it, no frame decodes.
        try await sh("ffmpeg -nostdin -v error -f lavfi -i testsrc2=size=96x96:rate=25:duration=1 -c:v libx264 -movflags +faststart '\(workspace.root)/faststart.mp4'")
        try await sh("python3 -c \"import sys; d = open(sys.argv[1], 'rb').read(); open(sys.argv[2], 'wb').write(d[:d.find(b'mdat') + 64])\" '\(workspace.root)/faststart.mp4' '\(t)/index-only.mp4'")
        // A link to a template elsewhere is a template.
        try await workspace.addTemplate(2, as: "../elsewhere.mp4")
        try await sh("ln -s '\(workspace.root)/elsewhere.mp4' '\(t)/linked.mp4'")
        let result = try await workspace.run()
        #expect(result.code == 1, "\(result.all)")
        #expect(try await workspace.item("good.mp4")?.state.status == .success)
        #expect(try await workspace.item("linked.mp4")?.state.status == .success, "\(result.all)")
        for name in ["empty.mp4", "text.mp4", "image.mp4", "audio-only.mp4", "truncated.mp4", "index-only.mp4"] {
            let item = try #require(try await workspace.item(name), "\(name)")
            #expect(item.state.status == .failed && item.state.lastError?.kind == .input, "\(name)")
            #expect(item.state.lastError?.message.contains(name) == true, "\(name): \(item.state.lastError?.message ?? "")")
        }
        #expect(try await workspace.item("empty.mp4")?.state.lastError?.message.contains("is empty (0 bytes)") == true)
        #expect(try await workspace.item("index-only.mp4")?.state.lastError?.message.contains("damaged or incomplete") == true)
        #expect(workspace.renders().count == 2, "no engine time is spent on unusable templates")
    }

    @Test func badArgumentsAndWorkspacesExitWith2() async throws {
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "t1.mp4")
        try FileManager.default.createDirectory(atPath: workspace.root + "/empty", withIntermediateDirectories: true)
        try Data("not audio".utf8).write(to: URL(fileURLWithPath: workspace.root + "/notes.wav"))
        try Data().write(to: URL(fileURLWithPath: workspace.root + "/zero.wav"))
        let cases: [([String], String)] = [
            (["run", "--audio", workspace.narration, "--videos", workspace.root + "/missing", "--out", workspace.outputs], "does not exist"),
            (["run", "--audio", workspace.narration, "--videos", workspace.root + "/empty", "--out", workspace.outputs], "no template videos"),
            (["run", "--audio", workspace.root + "/notes.wav", "--videos", workspace.templates, "--out", workspace.outputs, "--engine", "test"], "notes.wav"),
            (["run", "--audio", workspace.root + "/nope.wav", "--videos", workspace.templates, "--out", workspace.outputs, "--engine", "test"], "nope.wav"),
            (["run", "--audio", workspace.narration, "--videos", workspace.templates, "--out", workspace.narration + "/out"], "cannot create"),
            (["run", "--audio", workspace.narration, "--videos", workspace.templates, "--out", workspace.outputs, "--tempo", "5"], "tempo"),
            (["run", "--audio", workspace.narration, "--videos", workspace.templates, "--out", workspace.outputs, "--engine", "nonesuch"], "unknown engine"),
            (["retry", "--out", workspace.outputs], "--failed"),
            (["status", "--out", workspace.root + "/missing"], "does not exist"),
            (["run", "--audio", workspace.templates, "--videos", workspace.templates, "--out", workspace.outputs, "--engine", "test"], "is a folder"),
            (["run", "--audio", workspace.root + "/zero.wav", "--videos", workspace.templates, "--out", workspace.outputs, "--engine", "test"], "is empty (0 bytes)"),
        ]
        for (arguments, message) in cases {
            let result = try await workspace.talkie(arguments)
            #expect(result.code == 2, "\(arguments): \(result.all)")
            #expect(result.error.contains(message), "\(arguments): \(result.error)")
        }
        #expect(workspace.renders().isEmpty)
    }

    @Test func aMissingWav2LipModelIsReportedBeforeAnyItem() async throws {
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "t1.mp4")
        let missing = workspace.root + "/no-such-model.onnx"
        let result = try await workspace.talkie(["run", "--audio", workspace.narration, "--videos", workspace.templates,
                                                 "--out", workspace.outputs, "--engine", "wav2lip", "--param", "model=\(missing)"])
        #expect(result.code == 2, "\(result.all)")
        #expect(result.error.contains("could not start") && result.error.contains(missing), "\(result.error)")
        let state = try await workspace.status()
        #expect(state.items.allSatisfy { $0.state.status == .pending && $0.state.attempts == 0 }, "no item was started")
    }

    @Test func jsonEventsForScripts() async throws {
        let workspace = try await Workspace()
        try await workspace.addTemplate(1, as: "t1.mp4")
        let result = try await workspace.run(["--json"])
        #expect(result.code == 0)
        let events = result.output.split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }
        let names = events.compactMap { $0["event"] as? String }
        #expect(names.first == "batch_started" && names.last == "batch_finished")
        #expect(names.contains("item_started") && names.contains("item_progress") && names.contains("item_succeeded"))
    }
}
