import Foundation
import TalkieCore

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
    /// Engine workers at once (one per GPU).
    public var slots: Int
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

    /// The timeout of an item whose narration lasts `duration` seconds: two minutes to load,
    /// plus a minute per second of media (a CPU engine at a few frames per second fits).
    public func timeout(forDuration duration: Double) -> Double {
        itemTimeout ?? 120 + 60 * duration
    }
}
