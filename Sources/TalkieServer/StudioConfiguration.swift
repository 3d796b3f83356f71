import Foundation
import TalkieCluster
import TalkieCore
import TalkieRunner

/// How the studio server runs.
public struct StudioConfiguration: Sendable {
    /// The workspace: `inputs/` (uploads) and `outputs/` (the batch store).
    public var workspace: String
    /// The address to bind; loopback by default.
    public var host: String
    /// The port (7860, as HeyGem's web UI).
    public var port: Int
    /// The access token; required (and generated when nil) on a non-loopback address.
    public var token: String?
    /// The largest upload accepted, in bytes.
    public var maxUploadBytes: Int64
    /// Folders (besides the workspace) whose files face2face submissions may name.
    public var allowedFolders: [String]
    /// Whether face2face submissions may name http(s) URLs (not supported: always refused).
    public var allowRemoteURLs: Bool
    /// The page's files.
    public var webRoot: String
    /// Where engines are found.
    public var engines: EngineCatalog
    /// Retry policy for the batches it runs.
    public var retryPolicy: RetryPolicy
    /// A fixed per-item timeout, if any.
    public var itemTimeout: Double?
    /// GPUs to render on, one engine worker each; empty for one worker.
    public var gpus: [String] = []
    /// Cluster mode: the batch lives in this PostgreSQL database and `talkie worker`s on any
    /// machine render it; the studio renders nothing itself. The workspace must then be on
    /// storage every machine sees at the same path.
    public var cluster: ClusterStore?
    /// Cluster mode: how long a worker's claim lives without a heartbeat.
    public var leaseSeconds = 30.0

    /// Creates a configuration.
    public init(workspace: String, host: String = "127.0.0.1", port: Int = 7860, token: String? = nil,
                maxUploadBytes: Int64 = 4 << 30, allowedFolders: [String] = [], allowRemoteURLs: Bool = false,
                webRoot: String? = nil, engines: EngineCatalog = .installed(), retryPolicy: RetryPolicy = RetryPolicy(),
                itemTimeout: Double? = nil) {
        self.workspace = URL(fileURLWithPath: workspace).standardizedFileURL.path
        self.host = host
        self.port = port
        self.token = token
        self.maxUploadBytes = maxUploadBytes
        self.allowedFolders = allowedFolders.map { URL(fileURLWithPath: $0).standardizedFileURL.resolvingSymlinksInPath().path }
        self.allowRemoteURLs = allowRemoteURLs
        self.webRoot = webRoot ?? (engines.root as NSString).appendingPathComponent("web")
        self.engines = engines
        self.retryPolicy = retryPolicy
        self.itemTimeout = itemTimeout
    }

    /// Whether `host` is a loopback address (no token needed).
    public var isLoopback: Bool { ["127.0.0.1", "localhost", "::1"].contains(host) || host.hasPrefix("127.") }

    var inputs: String { workspace + "/inputs" }
    var outputs: String { workspace + "/outputs" }
}

/// An error the API reports with an HTTP status and a code a client can act on.
public struct StudioError: TalkieError, Equatable {
    /// The HTTP status code.
    public let httpStatus: Int
    /// A stable identifier, such as `batch.running`.
    public let code: String
    /// What went wrong and what to do.
    public let message: String

    /// Creates a studio error.
    public init(_ status: Int, _ code: String, _ message: String) {
        self.httpStatus = status
        self.code = code
        self.message = message
    }
}
