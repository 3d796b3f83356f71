import ArgumentParser
import Foundation
import Hummingbird
import NIOCore
import TalkieRunner
import TalkieServer

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the studio: the web page and HTTP API for the whole batch workflow, with live progress.",
        discussion: """
        Open the printed address in a browser. The workspace keeps the uploads
        (inputs/) and the batch (outputs/); stop the server (Ctrl-C or SIGTERM: the
        current item returns to pending) and start it again: the page shows the same
        batch and resumes. Binding an address other than loopback requires a token:
        one is generated and printed unless --token is given. API:
        docs/studio-api.md.
        """)

    @Option(name: .long, help: ArgumentHelp("The studio's folder (inputs/, outputs/).", valueName: "folder"))
    var workspace = "studio"

    @Option(name: .long, help: ArgumentHelp("Address to listen on.", valueName: "address"))
    var host = "127.0.0.1"

    @Option(name: .long, help: ArgumentHelp("Port to listen on.", valueName: "port"))
    var port = 7860

    @Option(name: .long, help: ArgumentHelp("Access token (required off loopback; generated when not given).", valueName: "token"))
    var token: String?

    @Option(name: .long, help: ArgumentHelp("Largest upload accepted, in MiB.", valueName: "MiB"))
    var maxUploadMb: Int64 = 4096

    @Option(name: .customLong("allow-dir"), help: ArgumentHelp("A folder whose files face2face submissions may name (repeatable).", valueName: "folder"))
    var allowDirs: [String] = []

    @Option(name: .long, help: ArgumentHelp("A fixed per-item timeout in seconds.", valueName: "seconds"))
    var itemTimeout: Double?

    @Option(name: .long, help: ArgumentHelp("Render on these GPUs, one engine worker each (CUDA_VISIBLE_DEVICES), e.g. 0,1.", valueName: "list"))
    var gpus: String?

    @Flag(name: .long, help: "Load the demo's sample inputs into an empty workspace (see `talkie demo`).")
    var demo = false

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be between 1 and 65535") }
        guard maxUploadMb > 0 else { throw ValidationError("--max-upload-mb must be positive") }
        if let token, token.count < 8 { throw ValidationError("--token must have at least 8 characters") }
        if let gpus, let problem = RunConfiguration.gpuListProblem(gpuList(gpus)) { throw ValidationError(problem) }
    }

    func run() async throws {
        var config = StudioConfiguration(workspace: workspace, host: host, port: port, token: token,
                                         maxUploadBytes: maxUploadMb << 20, allowedFolders: allowDirs, itemTimeout: itemTimeout)
        config.gpus = gpus.map(gpuList) ?? []
        if !config.isLoopback && config.token == nil {
            config.token = (0..<4).map { _ in String(UInt64.random(in: 0...UInt64.max), radix: 16) }.joined()
        }
        let studio: Studio
        do {
            studio = try Studio(config)
            if demo, await studio.isEmpty {
                print("loading the demo's sample inputs...")
                let inputs = config.workspace + "/demo-inputs"
                let templates = try await SampleMedia.make(in: inputs, engines: config.engines)
                let videos = try FileManager.default.contentsOfDirectory(atPath: templates).sorted().map { templates + "/" + $0 }
                try await studio.importFiles(audio: inputs + "/narration-en.wav", videos: videos)
            }
        } catch {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode(ExitStatus.badInput)
        }
        let shownHost = config.host == "0.0.0.0" ? "127.0.0.1" : config.host
        let address = "http://\(shownHost.contains(":") ? "[\(shownHost)]" : shownHost):\(config.port)/" + (config.token.map { "?token=\($0)" } ?? "")
        let banner = "Talkie studio: \(address)   (workspace \(config.workspace); Ctrl-C stops)\n"
        let app = buildApplication(config, studio: studio) { _ in
            FileHandle.standardOutput.write(Data(banner.utf8))
        }
        do {
            try await app.runService()
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            FileHandle.standardError.write(Data("error: port \(config.port) on \(config.host) is in use (another studio?); choose another with --port\n".utf8))
            throw ExitCode(ExitStatus.badInput)
        }
    }
}
