import Foundation
import TalkieCore
import TalkieEngine

/// What a person needs to know about one engine before choosing it.
public struct EngineDescription: Sendable, Equatable {
    /// The name given to `--engine`.
    public var name: String
    /// One line: what it is.
    public var summary: String
    /// The worker program, relative to the installation's root.
    public var worker: String
    /// Whether the worker needs the engine Python environment (`.venv`) or only the
    /// standard library of the system's `python3`.
    public var needsEnvironment: Bool
    /// Engine parameters without which it cannot start.
    public var requiredParams: [String]
    /// What else it needs, in words (a model file, a running service, a GPU).
    public var needs: String
    /// Where its parameters are documented.
    public var documentation: String
}

/// Turns an engine name into the command that starts its worker.
public struct EngineCatalog: Sendable {
    /// The folder holding `engines/` (and the project's `.venv/`).
    public var root: String

    /// Creates a catalog rooted at `root`.
    public init(root: String) {
        self.root = root
    }

    /// The catalog of this installation: `$TALKIE_HOME`, else the nearest folder above the
    /// running executable that has `engines/`, else the current folder.
    public static func installed() -> EngineCatalog {
        if let home = ProcessInfo.processInfo.environment["TALKIE_HOME"], !home.isEmpty { return EngineCatalog(root: home) }
        var folder = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        while folder.path != "/" {
            if FileManager.default.fileExists(atPath: folder.appendingPathComponent("engines/test_engine.py").path) {
                return EngineCatalog(root: folder.path)
            }
            folder.deleteLastPathComponent()
        }
        return EngineCatalog(root: FileManager.default.currentDirectoryPath)
    }

    /// Every engine this catalog knows, the default first.
    public static let engines: [EngineDescription] = [
        EngineDescription(
            name: "classic", summary: "built-in CPU lip-sync: mediapipe face mesh, mouth warped to the narration",
            worker: "engines/classic/worker.py", needsEnvironment: true, requiredParams: [],
            needs: "nothing else (runs everywhere, no weights)", documentation: "docs/engine-protocol.md"),
        EngineDescription(
            name: "wav2lip", summary: "a Wav2Lip-family ONNX model through onnxruntime (CUDA when onnxruntime-gpu and a GPU are there)",
            worker: "engines/wav2lip/worker.py", needsEnvironment: true, requiredParams: ["model"],
            needs: "--param model=PATH of a wav2lip_96 / wav2lip_gan_96 ONNX file (weights licensed for non-commercial use only)",
            documentation: "docs/engine-protocol.md"),
        EngineDescription(
            name: "face2face", summary: "sends each item to a running HeyGem face2face service (/easy/submit, /easy/query)",
            worker: "engines/face2face/worker.py", needsEnvironment: false, requiredParams: ["url", "share"],
            needs: "--param url=http://HOST:8383 of a running service and --param share=FOLDER it reads and writes (see its docs for Docker)",
            documentation: "docs/engine-face2face.md"),
        EngineDescription(
            name: "command", summary: "runs any command line per item (Wav2Lip's inference.py, MuseTalk, your own script)",
            worker: "engines/command/worker.py", needsEnvironment: false, requiredParams: ["command"],
            needs: "--param command='prog {video} {audio} {output}' (and optionally progress=REGEX)",
            documentation: "docs/engine-command.md"),
        EngineDescription(
            name: "test", summary: "copies the template and muxes the narration; switches to misbehave (for tests)",
            worker: "engines/test_engine.py", needsEnvironment: false, requiredParams: [],
            needs: "nothing", documentation: "docs/engine-protocol.md"),
    ]

    /// The engines' names.
    public static var names: [String] { engines.map(\.name) }

    /// The description of `engine`, if it is known.
    public static func description(of engine: String) -> EngineDescription? {
        engines.first { $0.name == engine }
    }

    /// The command for `engine` with its parameters, or a setup error naming what is missing.
    /// Every worker gets the run's engine parameters at start as JSON in
    /// `TALKIE_ENGINE_PARAMS`, so a bad model, service or command line is reported at the
    /// handshake, before any item; the Wav2Lip worker also gets its model as
    /// `TALKIE_WAV2LIP_MODEL`.
    public func command(for engine: String, params: [String: JSONValue] = [:]) throws(RunSetupError) -> EngineCommand {
        guard let description = Self.description(of: engine) else {
            throw RunSetupError(code: "engine.unknown", message: "unknown engine '\(engine)'; known engines: \(Self.names.joined(separator: ", ")) (see talkie engines)")
        }
        if let problem = problem(with: description) { throw problem }
        let missing = description.requiredParams.filter { params[$0] == nil || params[$0] == .string("") }
        guard missing.isEmpty else {
            throw RunSetupError(code: "engine.param_missing",
                                message: "the \(engine) engine needs \(missing.map { "--param \($0)=..." }.joined(separator: " ")): \(description.needs); see \(description.documentation)")
        }
        var environment = ["TALKIE_ENGINE_PARAMS": Self.json(params)]
        if engine == "wav2lip", case .string(let model)? = params["model"] { environment["TALKIE_WAV2LIP_MODEL"] = model }
        return EngineCommand(executable: python(for: description), arguments: ["-u", path(description.worker)], environment: environment)
    }

    /// Why `description`'s worker cannot start on this installation, or nil when its files are there.
    public func problem(with description: EngineDescription) -> RunSetupError? {
        let worker = path(description.worker)
        guard FileManager.default.fileExists(atPath: worker) else {
            return RunSetupError(code: "engine.missing", message: "the \(description.name) engine is not installed (\(worker) is missing)")
        }
        if description.needsEnvironment && !FileManager.default.isExecutableFile(atPath: python(for: description)) {
            return RunSetupError(code: "engine.missing", message: "the engine's Python environment is missing (\(python(for: description))); run: scripts/setup.sh")
        }
        return nil
    }

    private func python(for description: EngineDescription) -> String {
        description.needsEnvironment ? path(".venv/bin/python") : "python3"
    }

    private static func json(_ params: [String: JSONValue]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(params)) ?? Data("{}".utf8), as: UTF8.self)
    }

    private func path(_ relative: String) -> String { (root as NSString).appendingPathComponent(relative) }
}
