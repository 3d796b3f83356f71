import Foundation
import TalkieCore
import TalkieStore

/// Everything a run needs to know.
public struct RunConfiguration: Sendable {
    /// The output folder (state, outputs, logs).
    public var outputs: String
    /// The narration; nil to take it from the stored batch.
    public var audio: String?
    /// Template files and folders; empty to take them from the stored batch.
    public var videos: [String]
    /// Settings to change; what is not set keeps the stored batch's value (or the default).
    public var settings: SettingsOverrides
    /// Engine workers at once, when no GPUs are listed.
    public var slots: Int
    /// GPUs to render on, one worker each with `CUDA_VISIBLE_DEVICES` set to its entry
    /// (indexes or `GPU-…` UUIDs as nvidia-smi shows them); empty to use `slots` workers
    /// that see whatever the machine offers.
    public var gpus: [String] = []
    /// When failed attempts are retried.
    public var retryPolicy: RetryPolicy
    /// A fixed per-item timeout in seconds; nil to scale with the media's duration.
    public var itemTimeout: Double?
    /// An explicit retry request.
    public var retry: RetryRequest?
    /// Where engines are found.
    public var engines: EngineCatalog
    /// Ask the engine for a contact sheet beside each output (not a setting: it does not
    /// change the video, so it is not part of the fingerprint).
    public var contactSheets: Bool
    /// Names to show (and to name outputs after) for template paths, when the files on
    /// disk are named by content (the studio's uploads).
    public var displayNames: [String: String] = [:]
    /// The caller holds the output folder's `StoreLock` for the run's whole length (the
    /// studio holds its workspace's for its lifetime), so the run does not take it again.
    public var outputsLockHeld = false

    /// Creates a configuration.
    public init(outputs: String, audio: String? = nil, videos: [String] = [], settings: SettingsOverrides = SettingsOverrides(),
                slots: Int = 1, retryPolicy: RetryPolicy = RetryPolicy(), itemTimeout: Double? = nil,
                retry: RetryRequest? = nil, engines: EngineCatalog = .installed(), contactSheets: Bool = false) {
        self.outputs = outputs
        self.audio = audio
        self.videos = videos
        self.settings = settings
        self.slots = slots
        self.retryPolicy = retryPolicy
        self.itemTimeout = itemTimeout
        self.retry = retry
        self.engines = engines
        self.contactSheets = contactSheets
    }

    /// One entry per engine worker: its GPU, or nil when no GPUs are listed.
    public var workerDevices: [String?] { Self.workerDevices(gpus: gpus, slots: slots) }

    /// One entry per engine worker (of a run, or of a cluster worker): its GPU, or `slots`
    /// times nil when no GPUs are listed.
    public static func workerDevices(gpus: [String], slots: Int) -> [String?] {
        gpus.isEmpty ? Array(repeating: nil, count: max(1, slots)) : gpus.map { $0 }
    }

    /// The problem with a `--gpus` list, if any: entries must be GPU indexes or UUIDs, each once.
    public static func gpuListProblem(_ gpus: [String]) -> String? {
        if gpus.isEmpty { return "--gpus needs at least one GPU, for example --gpus 0,1" }
        for gpu in gpus {
            let isIndex = !gpu.isEmpty && gpu.allSatisfy(\.isASCII) && gpu.allSatisfy(\.isNumber)
            let isUUID = gpu.hasPrefix("GPU-") || gpu.hasPrefix("MIG-")
            guard isIndex || isUUID, gpu.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) else {
                return "--gpus entry '\(gpu)' is neither a GPU index (0, 1, ...) nor a GPU-/MIG- UUID"
            }
        }
        if Set(gpus).count != gpus.count { return "--gpus lists a GPU twice: \(gpus.joined(separator: ","))" }
        return nil
    }

    /// The narration, the template sources and the settings of this run: those given now,
    /// else those of the stored batch (`where` names the store in messages).
    public func resolvedInputs(stored: BatchInputs?, where place: String) throws(RunSetupError)
        -> (audio: String, sources: [String], settings: RenderSettings) {
        guard let audio = audio ?? stored?.audio else {
            throw RunSetupError(code: "input.no_audio", message: "no narration given and none recorded in \(place); pass --audio FILE")
        }
        let sources = videos.isEmpty ? stored?.videos ?? [] : videos.map { URL(fileURLWithPath: $0).standardizedFileURL.path }
        guard !sources.isEmpty else {
            throw RunSetupError(code: "input.no_videos", message: "no templates given and none recorded in \(place); pass --videos FOLDER")
        }
        let settings = settings.applied(to: stored?.settings ?? RenderSettings())
        let problems = settings.problems()
        guard problems.isEmpty else { throw RunSetupError(code: "settings.invalid", message: problems.joined(separator: "; ")) }
        return (audio, sources, settings)
    }

    /// The timeout of an item whose narration lasts `duration` seconds: two minutes to load,
    /// plus a minute per second of media (a CPU engine at a few frames per second fits).
    public func timeout(forDuration duration: Double) -> Double {
        ItemRenderer.timeout(forDuration: duration, itemTimeout: itemTimeout)
    }
}
