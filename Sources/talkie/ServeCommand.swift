import ArgumentParser
import Foundation
import Hummingbird
import NIOCore
import TalkieCluster
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

        Cluster mode (--store postgres://…): the studio queues the batch in PostgreSQL
        and renders nothing itself; `talkie worker --store …` on any machine renders it,
        and every worker's events reach the page. The workspace must be on storage every
        machine sees at the same path (README "Cluster").
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

    @Option(name: .long, help: ArgumentHelp("Cluster mode: queue batches in this PostgreSQL database for `talkie worker`s on any machine, postgres://USER@HOST[:PORT]/DATABASE; the workspace must be on storage every machine sees at the same path.", valueName: "url"))
    var store: String?

    @Option(name: .long, help: ArgumentHelp("Cluster mode: seconds a worker's claim lives without a heartbeat.", valueName: "seconds"))
    var leaseSeconds: Double = 30

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be between 1 and 65535") }
        guard maxUploadMb > 0 else { throw ValidationError("--max-upload-mb must be positive") }
        if let token, token.count < 8 { throw ValidationError("--token must have at least 8 characters") }
        if let gpus, let problem = RunConfiguration.gpuListProblem(gpuList(gpus)) { throw ValidationError(problem) }
        if store != nil && gpus != nil { throw ValidationError("with --store the workers render: give --gpus to `talkie worker` on each machine") }
        guard leaseSeconds >= 1 else { throw ValidationError("--lease-seconds must be at least 1") }
    }

    func run() async throws {
        var config = StudioConfiguration(workspace: workspace, host: host, port: port, token: token,
                                         maxUploadBytes: maxUploadMb << 20, allowedFolders: allowDirs, itemTimeout: itemTimeout)
        config.gpus = gpus.map(gpuList) ?? []
        config.leaseSeconds = leaseSeconds
        if let store {
            config.cluster = try StoreOption(store: store).open()
            do { _ = try await ClusterSchema.migrate(config.cluster!.database) } catch {
                await config.cluster?.database.close()
                FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
                throw ExitCode(ExitStatus.badInput)
            }
        }
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
