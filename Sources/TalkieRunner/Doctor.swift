import Foundation
import TalkieCore
import TalkieEngine
import TalkieMedia

/// Checks that everything Talkie needs is installed, and says how to fix what is not.
public struct Doctor: Sendable {
    /// One check's outcome.
    public struct Check: Sendable, Equatable {
        /// What was checked.
        public var name: String
        /// Whether it is fine.
        public var ok: Bool
        /// What was found (a version, an error).
        public var detail: String
        /// The command that fixes it, when it is not fine.
        public var fix: String?
    }

    /// Where the engines live.
    public var engines: EngineCatalog
    /// The engine to check by starting it.
    public var engine: String
    /// The parameters to start it with (its model, service or command line).
    public var params: [String: JSONValue]

    /// Creates a doctor for an installation and the engine a run would use.
    public init(engines: EngineCatalog, engine: String = "classic", params: [String: JSONValue] = [:]) {
        self.engines = engines
        self.engine = engine
        self.params = params
    }

    /// Runs every check, in order.
    public func run() async -> [Check] {
        var checks: [Check] = []
        let apt = "apt-get install -y ffmpeg espeak-ng   (or: scripts/setup.sh)"
        checks.append(await firstLine("ffmpeg", ["-hide_banner", "-version"], fix: apt))
        checks.append(await firstLine("ffprobe", ["-hide_banner", "-version"], fix: apt))
        let encoders = try? await Tool.run("ffmpeg", ["-hide_banner", "-encoders"])
        checks.append(Check(name: "ffmpeg H.264 and AAC encoders", ok: encoders?.output.contains("libx264") == true && encoders?.output.contains(" aac ") == true,
                            detail: encoders == nil ? "ffmpeg missing" : "libx264, aac", fix: apt))
        checks.append(await firstLine("espeak-ng", ["--version"], fix: apt))
        let voices = try? await Tool.run("espeak-ng", ["--voices=cmn"])
        checks.append(Check(name: "espeak-ng Mandarin voice cmn-latn-pinyin", ok: voices?.output.contains("cmn-latn-pinyin") == true,
                            detail: voices?.output.contains("cmn-latn-pinyin") == true ? "present" : "missing", fix: apt))

        let python = (engines.root as NSString).appendingPathComponent(".venv/bin/python")
        let setup = "scripts/setup.sh   (creates .venv from engines/requirements*.txt)"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            checks.append(Check(name: "engine Python environment", ok: false, detail: "\(python) is missing", fix: setup))
            return checks
        }
        let probe = """
        import importlib, json
        found = {}
        for name in ["numpy", "cv2", "google.protobuf", "mediapipe", "skimage"]:
            try:
                found[name] = getattr(importlib.import_module(name), "__version__", "?")
            except Exception as error:
                found[name] = "missing: %s" % error
        print(json.dumps(found))
        """
        let result = try? await Tool.run(python, ["-c", probe])
        let versions = (result.flatMap { try? JSONSerialization.jsonObject(with: Data($0.output.utf8)) as? [String: String] }) ?? [:]
        func version(_ name: String) -> String { versions[name] ?? "not importable" }
        checks.append(Check(name: "mediapipe 0.10.21 (ships the face models)", ok: version("mediapipe") == "0.10.21", detail: version("mediapipe"), fix: setup))
        checks.append(Check(name: "numpy < 2", ok: version("numpy").hasPrefix("1."), detail: version("numpy"), fix: setup))
        checks.append(Check(name: "protobuf < 5", ok: version("google.protobuf").hasPrefix("4.") || version("google.protobuf").hasPrefix("3."),
                            detail: version("google.protobuf"), fix: setup))
        checks.append(Check(name: "opencv (headless)", ok: !version("cv2").hasPrefix("missing") && version("cv2") != "not importable", detail: version("cv2"), fix: setup))
        checks.append(Check(name: "scikit-image (sample media for the demo)", ok: !version("skimage").hasPrefix("missing") && version("skimage") != "not importable",
                            detail: version("skimage"), fix: setup))

        checks.append(await gpus())
        checks.append(await engineStarts(fix: setup))
        return checks
    }

    /// Starts the chosen engine's worker and waits for its handshake: the same start a run
    /// does, so a missing model, an unreachable service or a bad command line shows here.
    private func engineStarts(fix: String) async -> Check {
        let name = "\(engine) engine starts (handshake)"
        let command: EngineCommand
        do { command = try engines.command(for: engine, params: params) } catch {
            let needs = EngineCatalog.description(of: engine).map { "give \($0.needs)" } ?? "talkie engines lists the engines"
            return Check(name: name, ok: false, detail: error.message, fix: error.code == "engine.missing" ? fix : needs)
        }
        do {
            let hello = try await EngineWorker.withWorker(command, stderr: StderrSink(), handshakeTimeout: 120) { $0.hello }
            return Check(name: name, ok: true, detail: "\(hello.name) \(hello.version) on \(hello.device ?? "cpu")")
        } catch {
            return Check(name: name, ok: false, detail: (error as? any TalkieError)?.message ?? "\(error)",
                         fix: EngineCatalog.description(of: engine).map { "see \($0.documentation)" })
        }
    }

    /// The GPUs nvidia-smi lists; informational (every engine but wav2lip/command on CUDA runs without one).
    private func gpus() async -> Check {
        guard let result = try? await Tool.run("nvidia-smi", ["-L"]), result.exitCode == 0 else {
            return Check(name: "GPUs", ok: true, detail: "none found (no nvidia-smi): engines run on the CPU")
        }
        let lines = result.output.split(separator: "\n").map(String.init)
        return Check(name: "GPUs", ok: true, detail: lines.isEmpty ? "none listed" : lines.joined(separator: "; "))
    }

    private func firstLine(_ tool: String, _ arguments: [String], fix: String) async -> Check {
        guard let result = try? await Tool.run(tool, arguments), result.exitCode == 0 else {
            return Check(name: tool, ok: false, detail: "not found", fix: fix)
        }
        let line = (result.output + result.error).split(separator: "\n").first.map(String.init) ?? ""
        return Check(name: tool, ok: true, detail: String(line.prefix(70)))
    }
}

/// Sample inputs for the demo: templates from the public-domain astronaut photo in
/// scikit-image, narration by espeak-ng (English and Mandarin), made by engines/media_samples.py.
public enum SampleMedia {
    /// Makes the samples in `folder` unless they are there; returns the templates folder.
    public static func make(in folder: String, engines: EngineCatalog) async throws -> String {
        let templates = (folder as NSString).appendingPathComponent("templates")
        if FileManager.default.fileExists(atPath: (folder as NSString).appendingPathComponent("narration-zh.wav")) { return templates }
        let python = (engines.root as NSString).appendingPathComponent(".venv/bin/python")
        let script = (engines.root as NSString).appendingPathComponent("engines/media_samples.py")
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw RunSetupError(code: "demo.no_python", message: "the engine's Python environment is missing (\(python)); run scripts/setup.sh")
        }
        let result = try await Tool.run(python, [script, "--out", folder])
        guard result.exitCode == 0 else {
            throw RunSetupError(code: "demo.samples_failed", message: "making the sample media failed: \(result.error.suffix(500))")
        }
        return templates
    }
}
