import Foundation
import TalkieCore
import TalkieEngine

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

    /// The engines this catalog knows.
    public static let names = ["classic", "test", "wav2lip"]

    /// The command for `engine` with its parameters, or a setup error naming what is missing.
    /// The Wav2Lip worker gets its model (`model=PATH`) at start, so a bad model is reported
    /// at the handshake, before any item.
    public func command(for engine: String, params: [String: JSONValue] = [:]) throws(RunSetupError) -> EngineCommand {
        switch engine {
        case "test":
            return EngineCommand(executable: "python3", arguments: ["-u", path("engines/test_engine.py")])
        case "classic", "wav2lip":
            let python = path(".venv/bin/python")
            let worker = path("engines/\(engine)/worker.py")
            guard FileManager.default.fileExists(atPath: worker) else {
                throw RunSetupError(code: "engine.missing", message: "the \(engine) engine is not installed (\(worker) is missing)")
            }
            guard FileManager.default.isExecutableFile(atPath: python) else {
                throw RunSetupError(code: "engine.missing", message: "the engine's Python environment is missing (\(python)); run: scripts/setup.sh")
            }
            var environment: [String: String] = [:]
            if engine == "wav2lip", case .string(let model)? = params["model"] { environment["TALKIE_WAV2LIP_MODEL"] = model }
            return EngineCommand(executable: python, arguments: ["-u", worker], environment: environment)
        default:
            throw RunSetupError(code: "engine.unknown", message: "unknown engine '\(engine)'; known engines: \(Self.names.joined(separator: ", "))")
        }
    }

    private func path(_ relative: String) -> String { (root as NSString).appendingPathComponent(relative) }
}
