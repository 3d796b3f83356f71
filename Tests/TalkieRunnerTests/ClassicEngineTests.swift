import Foundation
import Testing
import TalkieCore

/// The built-in engine through the real binary, on the demo's sample media (astronaut
/// templates, espeak-ng narration): scores, the no-face failure, looping and cutting, and
/// the face-track cache.
@Suite(.serialized) struct ClassicEngineTests {
    func duration(_ path: String) async throws -> Double {
        Double(try await sh("ffprobe -v error -show_entries format=duration -of default=nw=1:nk=1 'file:\(path)'")
            .trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

    @Test func demoBatchLipSyncsCloseUpsAndFailsOnlyTheFacelessTemplate() async throws {
        let workspace = try await Workspace()
        let inputs = workspace.root + "/inputs"
        // 3 s templates: the 5 s narration loops them, the 2 s one cuts them.
        try await sh("'\(repositoryRoot)/.venv/bin/python' '\(repositoryRoot)/engines/media_samples.py' --out '\(inputs)' --seconds 3 --narration-seconds 5")
        try await sh("ffmpeg -nostdin -v error -i '\(inputs)/narration-zh.wav' -t 2 '\(inputs)/short-zh.wav'")
        func run(_ audio: String) async throws -> CLIResult {
            try await workspace.talkie(["run", "--audio", audio, "--videos", inputs + "/templates", "--out", workspace.outputs, "--engine", "classic"])
        }

        let first = try await run(inputs + "/narration-en.wav")
        #expect(first.code == 1, "only the faceless template fails: \(first.all)")
        let items = try await workspace.status().items
        func item(_ name: String) throws -> Item { try #require(items.first { $0.names.contains { $0.hasSuffix("/" + name) } }, "\(name)") }
        for name in ["closeup-512.mp4", "closeup-720.mp4"] {
            let closeUp = try item(name)
            #expect(closeUp.state.status == .success, "\(name)")
            #expect((closeUp.score ?? 0) >= 0.8, "\(name) lip-sync score \(closeUp.score ?? -1)")
            #expect(abs(try await duration(workspace.outputs + "/" + (closeUp.state.output ?? "")) - 5) < 0.3, "\(name) looped to the narration")
        }
        let wide = try item("wide-512.mp4")
        #expect(wide.state.status == .success && wide.score != nil)
        let faceless = try item("noface-512.mp4")
        #expect(faceless.state.status == .failed && faceless.state.lastError?.kind == .input)
        #expect(faceless.state.lastError?.message.contains("no face found at") == true, "\(faceless.state.lastError?.message ?? "")")
        let status = try await workspace.talkie(["status", "--out", workspace.outputs])
        #expect(status.output.contains(String(format: "%.2f", items.first { $0.names.first?.hasSuffix("closeup-512.mp4") == true }?.score ?? 0)))

        // The same templates with new audio: new items, no new face analysis, cut to 2 s.
        let second = try await run(inputs + "/short-zh.wav")
        #expect(second.code == 1)
        let shortItems = try await workspace.status().items.filter { $0.audioPath.hasSuffix("short-zh.wav") && $0.state.status == .success }
        #expect(shortItems.count == 3)
        for shortItem in shortItems {
            let log = try String(contentsOfFile: workspace.outputs + "/.talkie/logs/\(shortItem.key.id).log", encoding: .utf8)
            #expect(log.contains("face track cache hit"), "\(shortItem.displayName)")
            #expect(abs(try await duration(workspace.outputs + "/" + (shortItem.state.output ?? "")) - 2) < 0.3, "\(shortItem.displayName) cut to the narration")
        }
    }
}
